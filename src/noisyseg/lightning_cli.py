"""LightningCLI wiring: ``noisyseg fit|validate|test|predict --config FILE``.

Configs name a task (``model:``) and a :class:`~noisyseg.data.DataModule` (``data:``) by
``class_path``; see ``configs/``. Defaults added here: precision chosen for the machine
(:func:`noisyseg.runtime.auto_precision`), checkpoints in ``<default_root_dir>/checkpoints`` with
``last.ckpt``, ``--resume`` as a short form of ``--ckpt_path last``, and ``--threads N`` (config:
``threads: N``; default :func:`noisyseg.runtime.default_threads`). Checkpoints are written
atomically and read weights-only (:class:`~noisyseg.callbacks.SafeCheckpointIO`). A config that
does not parse (unknown key, wrong type, a YAML syntax error: file and line) is one error line and
exit 2, not a page of usage; an error raised while a dataset or task is built is that error's own
message, not jsonargparse's page of Union subtypes; a checkpoint of another model is one line
naming it and the first differing keys.
"""

from __future__ import annotations

import pickle
import sys
import warnings
from typing import Optional

import torch
import yaml
from jsonargparse import ArgumentError
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from noisyseg.callbacks import RunCheckpoint, SafeCheckpointIO, load_checkpoint_safely, mismatch_error
from noisyseg.config import yaml_error_message
from noisyseg.data.datamodule import DataModule
from noisyseg.runtime import auto_precision, set_threads
from noisyseg.tasks.base import BaseTask

SUBCOMMANDS = ("fit", "validate", "test", "predict")


# model arguments that name files the run writes: from the user's config or command only
OUTPUT_SUFFIXES = ("_out", "_dir")


class NoisysegCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.set_defaults({"trainer.precision": auto_precision()})
        parser.add_argument("--threads", type=Optional[int], default=None,
                            help="torch compute threads per process (default: OMP_NUM_THREADS, else the "
                                 "physical cores available divided by the training processes on this machine)")

    def before_instantiate_classes(self) -> None:
        sub = self.config.get("subcommand")
        cfg = self.config[sub] if sub else self.config
        devices, accelerator = cfg.get("trainer.devices"), cfg.get("trainer.accelerator")
        # CPU processes of this run on this machine: one per device when DDP runs on the CPU
        on_cpu = accelerator == "cpu" or (accelerator in (None, "auto") and not torch.cuda.is_available())
        processes = devices if on_cpu and isinstance(devices, int) and devices > 1 else 1
        set_threads(cfg.get("threads"), processes)

    def _parse_ckpt_path(self) -> None:
        """Lightning's merge of a ``--ckpt_path`` file's ``hyper_parameters`` over the model config,
        except output paths (``encoder_out``, any ``*_out`` / ``*_dir``): those keep the user's
        values, so a checkpoint cannot make the run write elsewhere (the merge touches only
        ``model``; the trainer's ``default_root_dir`` and callbacks are never read from it). A file
        that the weights-only load refuses is reported in one line naming it (CheckpointFileError)."""
        sub = self.config.get("subcommand")
        init = self.config.get(f"{sub}.model.init_args") if sub else None
        keep = {k: v for k, v in vars(init).items() if k.endswith(OUTPUT_SUFFIXES)} if init is not None else {}
        try:
            super()._parse_ckpt_path()  # torch.load(weights_only=True) of an existing ckpt_path file
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
            load_checkpoint_safely(self.config[sub].get("ckpt_path"))  # the one-line error naming the file
            raise e
        init = self.config.get(f"{sub}.model.init_args") if sub else None
        if init is None:
            return
        for key in [k for k in vars(init) if k.endswith(OUTPUT_SUFFIXES)]:
            init[key] = keep.get(key)  # None (write nothing) where the user's config did not set it

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except RuntimeError as e:
            # torch lists every missing and unexpected key of another model's checkpoint
            if "Error(s) in loading state_dict" not in str(e) or not self.trainer.ckpt_path:
                raise
            raise mismatch_error(self.trainer.ckpt_path, self.model) from None

    def instantiate_trainer(self, **kwargs):
        trainer = super().instantiate_trainer(**kwargs)
        # swap Lightning's default checkpoint (a new version_N folder each run) for one whose
        # folder is fixed per run directory, so --resume finds last.ckpt
        for i, cb in enumerate(trainer.callbacks):
            if type(cb) is ModelCheckpoint and cb.dirpath is None:
                trainer.callbacks[i] = RunCheckpoint()
        # atomic checkpoint writes; weights-only reads for --resume / --ckpt_path (untrusted files)
        trainer.strategy.checkpoint_io = SafeCheckpointIO()
        return trainer


def run_lightning_cli(argv: list[str]) -> int:
    argv = list(argv)
    if "--resume" in argv:
        argv.remove("--resume")
        argv += ["--ckpt_path", "last"]
    # raise instead of printing 60 lines of usage and exiting: cli.py prints one line and exits 2
    no_exit = {"exit_on_error": False}
    try:
        with warnings.catch_warnings():
            # `python -m noisyseg fit ...` hands sys.argv[1:] over as args: not the mistake it warns of
            warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
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
                parser_kwargs={**no_exit, **{c: dict(no_exit) for c in SUBCOMMANDS}},
            )
    except ArgumentError as e:
        located = _yaml_error(argv) if "Problems parsing config" in str(e) else None
        if located:
            print(f"noisyseg {argv[0] if argv else ''}: config error: {located}", file=sys.stderr)
            return 2
        print(f"noisyseg {argv[0] if argv else ''}: config error: {_short(str(e))}\n"
              f"  (valid options: noisyseg {argv[0] if argv else 'fit'} --help)", file=sys.stderr)
        return 2
    except ValueError as e:
        raise _innermost(e) from None
    return 0


UNION_WRAPPER = "Does not validate against any of the Union subtypes"


def _innermost(err: ValueError) -> BaseException:
    """The error a dataset or task raised while jsonargparse built it: jsonargparse wraps it once
    per Union it tried (``DataModule | None``, ``Dataset | None``) with the whole Namespace."""
    inner: BaseException = err
    while UNION_WRAPPER in str(inner) and inner.__cause__ is not None:
        inner = inner.__cause__
    if inner is err:
        return err
    return inner if isinstance(inner, (ValueError, OSError)) else ValueError(f"{type(inner).__name__}: {inner}")


def _yaml_error(argv: list[str]) -> str | None:
    """File and line of a YAML syntax error in the ``--config`` files (jsonargparse drops both)."""
    paths = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"]
    paths += [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    for path in paths:
        try:
            with open(path) as f:
                yaml.safe_load(f)
        except yaml.YAMLError as e:
            return yaml_error_message(path, e)
        except OSError:
            continue
    return None


def _short(message: str, max_lines: int = 12) -> str:
    """jsonargparse explains a union mismatch twice over; keep the lines that say what was wrong."""
    lines = [ln for ln in message.splitlines() if ln.strip()]
    key = [ln.strip() for ln in lines if any(w in ln for w in ("class_path", "not accepted", "does not exist",
           "Unrecognized", "Expected a", "invalid", "Invalid", "Parser key"))
           and "NoneType" not in ln and "Given value" not in ln]
    head = lines[0].strip() if lines else message
    out = [head] + [k for k in key if k != head]
    return "\n  ".join(out[:max_lines])
