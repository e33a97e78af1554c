"""Configs as plain data: YAML files of ``class_path`` / ``init_args`` nodes, dotted keys.

Runs are parsed and built by LightningCLI only (:mod:`noisyseg.cli`: ``noisyseg fit``
and its in-process form ``run_config``). This module reads and edits configs as dicts (sweeps, the
demo), checks their class paths before anything runs (:func:`check_classes`), and builds a single
dataset or data module for the data commands (``noisyseg data preview`` / ``pack``: :func:`instantiate`).
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Any

import yaml


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML config.

    Raises:
        FileNotFoundError: naming the missing file.
        ValueError: when the file is not a YAML mapping, or not YAML (naming the line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        cfg = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(yaml_error_message(path, e)) from e
    if not isinstance(cfg, dict):
        raise ValueError(f"config file {path} must hold a mapping, got {type(cfg).__name__}")
    return cfg


def yaml_error_message(path: str | Path, err: yaml.YAMLError) -> str:
    """One line naming the file, line and column of a YAML syntax error, and what was wrong.

    PyYAML's own message spans four lines and names ``<unicode string>`` when given text.
    """
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    context = getattr(err, "context", None)
    text = f"{problem} ({context})" if context else str(problem)
    tab = "\\t" in text or "\t" in text
    hint = "; YAML indents with spaces, never tabs" if tab else ""
    return f"config file {path} is not valid YAML{where}: {text}{hint}"


def get_by_path(cfg: dict, dotted: str) -> Any:
    """``cfg["a"]["b"]`` for ``"a.b"``; raises KeyError naming the first missing key."""
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(f"config has no key {dotted!r} (missing {part!r})")
        node = node[part]
    return node


def set_by_path(cfg: dict, dotted: str, value: Any, create: bool = False) -> None:
    """Set ``cfg["a"]["b"] = value`` for ``"a.b"``.

    Raises:
        KeyError: naming the key when it does not exist and ``create`` is False (a typo in a sweep
            spec must not silently add an unused key).
    """
    parts = dotted.split(".")
    node = cfg
    for i, part in enumerate(parts[:-1]):
        if part not in node or not isinstance(node[part], dict):
            if not create:
                raise KeyError(f"config has no key {'.'.join(parts[: i + 1])!r} (while setting {dotted!r})")
            node[part] = {}
        node = node[part]
    if parts[-1] not in node and not create:
        raise KeyError(f"config has no key {dotted!r}")
    node[parts[-1]] = value


def import_class(class_path: str):
    """Import ``package.module.Class``; a package that does not re-export the name is searched.

    Raises:
        ValueError: naming the class path when it cannot be imported.
    """
    if not isinstance(class_path, str) or "." not in class_path:
        raise ValueError(f"class_path {class_path!r} is not a dotted 'module.Class' path")
    module, _, name = class_path.rpartition(".")
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise ValueError(f"cannot import module {module!r} of class_path {class_path!r}: {e}") from e
    if hasattr(mod, name):
        return getattr(mod, name)
    for info in pkgutil.iter_modules(getattr(mod, "__path__", [])):  # package without the re-export
        sub = importlib.import_module(f"{module}.{info.name}")
        if hasattr(sub, name):
            return getattr(sub, name)
    raise ValueError(f"class_path {class_path!r}: module {module!r} has no {name!r}")


def allowed_kinds() -> tuple[type, ...]:
    """Base classes a config's ``class_path`` may name (besides noisyseg's own classes).

    Datasets, data modules, tasks, networks / losses / transforms (``torch.nn.Module``) and the
    Lightning parts a ``trainer:`` section names (callbacks, loggers, strategies, accelerators,
    profilers, plugins). A function or builtin (``os.system``, ``builtins.eval``) or any other
    class (``subprocess.Popen``) is refused, as LightningCLI refuses it for ``noisyseg fit``.
    """
    import lightning.pytorch as pl
    import torch
    from lightning.fabric.plugins import CheckpointIO, ClusterEnvironment

    return (torch.utils.data.Dataset, torch.utils.data.Sampler, torch.nn.Module, pl.LightningDataModule,
            pl.LightningModule, pl.Callback, pl.loggers.Logger, pl.strategies.Strategy, pl.accelerators.Accelerator,
            pl.profilers.Profiler, pl.plugins.Precision, CheckpointIO, ClusterEnvironment)


def check_class(class_path: str, expected: tuple[type, ...] | None = None) -> type:
    """Import ``class_path`` and check it names a class of an allowed kind; nothing is called.

    Args:
        class_path: dotted ``module.Class``.
        expected: base classes it must subclass; default :func:`allowed_kinds`. Classes defined in
            noisyseg's own modules are accepted too.

    Raises:
        ValueError: naming the class path and what it is, when it is not such a class.
    """
    obj = import_class(class_path)
    kinds = allowed_kinds() if expected is None else expected
    if isinstance(obj, type):
        # the defining module, not the path: `noisyseg.data.raster.Path` is pathlib's Path
        own = expected is None and (obj.__module__ == "noisyseg" or obj.__module__.startswith("noisyseg."))
        if own or issubclass(obj, kinds):
            return obj
    what = f"class {obj.__module__}.{obj.__qualname__}" if isinstance(obj, type) else \
        f"{'function' if callable(obj) else type(obj).__name__} " \
        f"{getattr(obj, '__module__', None) or '?'}.{getattr(obj, '__qualname__', class_path)}"
    names = ", ".join(k.__name__ for k in kinds) + ("" if expected else " or a noisyseg class")
    raise ValueError(f"class_path {class_path!r} is refused: it names a {what}, not a subclass of {names}")


def check_classes(node: Any, expected: tuple[type, ...] | None = None) -> None:
    """:func:`check_class` on every ``class_path`` in ``node``, nested ones included.

    ``expected`` applies to ``node`` itself when it is a ``{class_path, init_args}`` node; nested
    nodes must be of :func:`allowed_kinds` or noisyseg classes.

    Raises:
        ValueError: naming the first refused class path.
    """
    if isinstance(node, dict) and "class_path" in node:
        check_class(node["class_path"], expected)
        check_classes(node.get("init_args") or {})
    elif isinstance(node, dict):
        for v in node.values():
            check_classes(v)
    elif isinstance(node, list):
        for v in node:
            check_classes(v)


def instantiate(node: Any, expected: tuple[type, ...] | None = None) -> Any:
    """Build objects from ``{class_path, init_args}`` nodes, recursively (as LightningCLI does).

    Every class path in ``node`` is checked (:func:`check_classes`) before anything is built, so a
    config naming ``os.system`` fails without running it.

    Args:
        node: a config node: a ``{class_path, init_args}`` mapping, a mapping, a list or a value.
        expected: base classes the root node's class must subclass (see :func:`check_class`).

    Raises:
        ValueError: a refused or unimportable class path, or init_args its class does not take.
    """
    check_classes(node, expected)
    return _build(node)


def _build(node: Any) -> Any:
    if isinstance(node, dict) and "class_path" in node:
        cls = import_class(node["class_path"])
        kwargs = {k: _build(v) for k, v in (node.get("init_args") or {}).items()}
        try:
            return cls(**kwargs)
        except TypeError as e:
            raise ValueError(f"{node['class_path']}: {e}") from e
    if isinstance(node, dict):
        return {k: _build(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_build(v) for v in node]
    return node
