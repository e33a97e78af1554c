"""LightningCLI wiring: ``noisyseg fit|validate|test|predict --config FILE``.

Configs name a task (``model:``) and a :class:`~noisyseg.data.DataModule` (``data:``) by
``class_path``; see ``configs/``. Defaults added here: precision chosen for the machine
(:func:`noisyseg.runtime.auto_precision`), checkpoints in ``<default_root_dir>/checkpoints`` with
``last.ckpt``, and ``--resume`` as a short form of ``--ckpt_path last``.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from noisyseg.callbacks import RunCheckpoint

from noisyseg.data.datamodule import DataModule
from noisyseg.runtime import auto_precision
from noisyseg.tasks.base import BaseTask


class NoisysegCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.set_defaults({"trainer.precision": auto_precision()})

    def instantiate_trainer(self, **kwargs):
        trainer = super().instantiate_trainer(**kwargs)
        # swap Lightning's default checkpoint (a new version_N folder each run) for one whose
        # folder is fixed per run directory, so --resume finds last.ckpt
        for i, cb in enumerate(trainer.callbacks):
            if type(cb) is ModelCheckpoint and cb.dirpath is None:
                trainer.callbacks[i] = RunCheckpoint()
        return trainer


def run_lightning_cli(argv: list[str]) -> int:
    argv = list(argv)
    if "--resume" in argv:
        argv.remove("--resume")
        argv += ["--ckpt_path", "last"]
    NoisysegCLI(
        BaseTask,
        DataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        trainer_defaults={"enable_model_summary": False},
        save_config_kwargs={"overwrite": True},
        seed_everything_default=0,
        args=argv,
        auto_configure_optimizers=False,
    )
    return 0
