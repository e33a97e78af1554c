"""Task arguments derived from the data, linked once when a run is built.

A task does not read its trainer's data module: what it needs to know about the data (the inputs'
normalisation, each split's for a segmentation task, MoCo's per-process batch and training-set
size) are constructor arguments.
``noisyseg fit`` fills them from the ``data:`` section (:func:`link_data_arguments`, LightningCLI's
``link_arguments`` applied on instantiation); code that builds a task and a data module itself
passes :func:`data_links` to the task. A link whose target the chosen task does not take is
skipped, so one table serves every task.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable


def _normalization(data: Any) -> dict[str, Any] | None:
    return getattr(data, "normalization", None)  # DataModule: its training set's per-band mean/std


def _batch_size(data: Any) -> int | None:
    return getattr(data, "batch_size", None)  # per process


def _train_size(data: Any) -> int | None:
    ds = getattr(data, "train_set", None)
    try:
        return len(ds) if ds is not None else None
    except TypeError:  # an iterable dataset without a length
        return None


def _split_normalization(data: Any) -> dict[str, dict[str, Any] | None]:
    """``{split: normalisation or None}`` of every split the data module holds a dataset for."""
    sets = {split: getattr(data, f"{split}_set", None) for split in ("train", "val", "test")}
    return {split: getattr(ds, "normalization", None) for split, ds in sets.items() if ds is not None}


DATA_LINKS: dict[str, Callable[[Any], Any]] = {
    "input_normalization": _normalization,
    "split_normalization": _split_normalization,
    "batch_size": _batch_size,
    "train_size": _train_size,
}
"""Task argument -> function of the data module that gives its value."""


def data_links(task_class: type, data: Any) -> dict[str, Any]:
    """The :data:`DATA_LINKS` arguments that ``task_class`` takes, computed from ``data``.

    Args:
        task_class: a task class (its arguments, with those its ``**kwargs`` pass to its bases,
            decide which links apply).
        data: the data module the task will train on.

    Returns:
        ``{argument: value}``, e.g. ``{"input_normalization": {...}}`` for a segmentation task.
    """
    return {name: link(data) for name, link in DATA_LINKS.items() if name in _arguments(task_class)}


def _arguments(cls: type) -> set[str]:
    """Names ``cls(...)`` takes: its ``__init__``'s, and its bases' while ``**kwargs`` passes them on."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names |= {p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return names


def link_data_arguments(parser: Any, data_key: str = "data", model_key: str = "model") -> None:
    """Add :data:`DATA_LINKS` to a LightningCLI parser: ``data`` -> ``model.init_args.<argument>``.

    Applied once both are instantiated; jsonargparse skips a link whose target the chosen task
    does not take.
    """
    for name, link in DATA_LINKS.items():
        parser.link_arguments(data_key, f"{model_key}.init_args.{name}", compute_fn=link, apply_on="instantiate")
