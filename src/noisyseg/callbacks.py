"""Lightning callbacks with noisyseg's defaults."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint


class RunCheckpoint(ModelCheckpoint):
    """Checkpoints in ``<default_root_dir>/checkpoints`` with ``last.ckpt`` always kept.

    Lightning's default puts them under a fresh ``lightning_logs/version_N`` each run, so the same
    command could never find its own last checkpoint again; a fixed folder per run directory is
    what makes ``noisyseg fit --config X --resume`` continue a killed run. Checkpoints are written
    by Lightning through a temp file and rename, so a kill mid-write leaves the previous one intact.

    Args:
        every_n_train_steps: also checkpoint every N optimiser steps (long epochs on real data).
    """

    def __init__(self, every_n_train_steps: int | None = None, **kwargs) -> None:
        kwargs.setdefault("save_last", True)
        kwargs.setdefault("save_top_k", 0 if "monitor" not in kwargs else 1)
        super().__init__(every_n_train_steps=every_n_train_steps, **kwargs)

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.dirpath is None:
            self.dirpath = str(Path(trainer.default_root_dir) / "checkpoints")
        super().setup(trainer, pl_module, stage)
