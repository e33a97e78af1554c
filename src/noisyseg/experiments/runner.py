"""Run one experiment config in-process: the same YAML the CLI takes, as a Python dict.

``noisyseg fit --config X`` (LightningCLI) and :func:`run_config` read the same files: a
``trainer:`` section of Trainer arguments, ``model:`` and ``data:`` given by ``class_path`` /
``init_args``, and ``seed_everything``. The demo and the sweeps call :func:`run_config` so that
several runs share one Python process (no import cost per run) and return their scores directly.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import lightning as L

from noisyseg.callbacks import RunCheckpoint, SafeCheckpointIO
from noisyseg.config import check_classes, get_by_path, import_class, instantiate, load_config, set_by_path
from noisyseg.checkpoints import atomic_write
from noisyseg.runtime import resolve_precision, set_threads

__all__ = ["build_trainer", "check_classes", "get_by_path", "import_class", "instantiate", "load_config", "run_config", "set_by_path"]


def build_trainer(trainer_cfg: dict[str, Any], quiet: bool = False) -> L.Trainer:
    """A Trainer from a ``trainer:`` section with noisyseg's defaults (precision, checkpoints)."""
    kwargs = instantiate(copy.deepcopy(trainer_cfg))
    kwargs["precision"] = resolve_precision(kwargs.get("precision"))
    kwargs.setdefault("enable_model_summary", False)
    if quiet:
        kwargs.setdefault("enable_progress_bar", False)
    callbacks = list(kwargs.pop("callbacks", None) or [])
    if kwargs.get("enable_checkpointing", True) and not any(isinstance(c, L.pytorch.callbacks.ModelCheckpoint) for c in callbacks):
        callbacks.append(RunCheckpoint())
    trainer = L.Trainer(callbacks=callbacks, **kwargs)
    # atomic checkpoint writes; weights-only reads of ckpt_path (a crafted pickle is refused unrun)
    trainer.strategy.checkpoint_io = SafeCheckpointIO()
    return trainer


def run_config(
    cfg: dict[str, Any],
    stages: tuple[str, ...] = ("fit", "test"),
    quiet: bool = False,
    ckpt_path: str | None = None,
) -> dict[str, Any]:
    """Fit and/or test one config; return its scores and write them to ``metrics.json``.

    Args:
        cfg: a config as in ``configs/`` (``trainer``, ``model``, ``data``, ``seed_everything``,
            optional ``threads``: torch compute threads, left unchanged when absent).
        stages: any of ``fit``, ``validate``, ``test`` in order.
        quiet: no progress bars (sweeps running in parallel).
        ckpt_path: passed to ``fit`` (``"last"`` resumes).

    Returns:
        ``{"val": {...}, "test": {...}, "seconds": {...}, "model": task, "root": dir}``.

    Raises:
        ValueError: a missing section, or a class path that is not a task / data module / allowed
            part (:func:`noisyseg.config.check_classes`), before anything is built.
    """
    cfg = copy.deepcopy(cfg)
    for key in ("model", "data"):
        if key not in cfg:
            raise ValueError(f"config has no {key!r} section")
    # every class path is checked before anything is built (a config naming os.system runs nothing)
    check_classes(cfg.get("trainer", {}))
    check_classes(cfg["model"], (L.LightningModule,))
    check_classes(cfg["data"], (L.LightningDataModule,))
    if cfg.get("threads") is not None:  # the config's `threads:` as for `noisyseg fit`; else left as set
        set_threads(cfg["threads"])
    L.seed_everything(int(cfg.get("seed_everything", 0)), workers=True, verbose=False)
    trainer = build_trainer(cfg.get("trainer", {}), quiet)
    model = instantiate(cfg["model"], (L.LightningModule,))
    data = instantiate(cfg["data"], (L.LightningDataModule,))
    seconds: dict[str, float] = {}
    for stage in stages:
        t0 = time.perf_counter()
        if stage == "fit":
            trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
        elif stage == "validate":
            trainer.validate(model, datamodule=data, verbose=not quiet)
        elif stage == "test":
            trainer.test(model, datamodule=data, verbose=not quiet)
        else:
            raise ValueError(f"unknown stage {stage!r}; valid: fit, validate, test")
        seconds[stage] = time.perf_counter() - t0
    result = {
        "val": dict(getattr(model, "val_scores", {}) or {}),
        "test": dict(getattr(model, "test_scores", {}) or {}),
        "seconds": seconds,
        "root": trainer.default_root_dir,
    }
    if trainer.is_global_zero:
        text = json.dumps(result, indent=2, default=float)
        atomic_write(Path(trainer.default_root_dir) / "metrics.json", lambda tmp: Path(tmp).write_text(text))
    result["model"] = model
    result["datamodule"] = data
    return result
