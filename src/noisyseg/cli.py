"""The one entry point, ``noisyseg <command>`` (also ``python -m noisyseg``), and the one run path.

* ``fit`` / ``validate`` / ``test`` / ``predict`` — LightningCLI over a YAML ``--config``
  (``model:`` a task, ``data:`` a :class:`~noisyseg.data.DataModule` with datasets, by
  ``class_path``; see ``configs/``). ``--resume`` continues ``fit`` from the last checkpoint of the
  same run directory (a short form of ``--ckpt_path last``).
* ``demo`` — the end-to-end demonstration (:mod:`noisyseg.demo`).
* ``data preview`` — what a loader makes of a data config (:mod:`noisyseg.data.preview`).
* ``data pack`` — a dataset config into LitData shards for streaming (:mod:`noisyseg.data.shards`).
* ``data noise-report`` — noisy vs clean labels of a config (:func:`noisyseg.data.preview.noise_report_main`).
* ``sweep`` / ``report`` / ``analyze`` — studies (:mod:`noisyseg.experiments`, :mod:`noisyseg.report`,
  :mod:`noisyseg.analysis`).
* ``export`` — encoder files to smp / timm / torchvision state dicts (:mod:`noisyseg.interop`).

Every run goes through :class:`NoisysegCLI`: ``noisyseg fit --config FILE`` on the command line
(which saves the parsed config as ``<default_root_dir>/config.yaml``), and :func:`run_config` for
the sweeps, the demo and ``noisyseg analyze``, which writes the config there first and parses it
from that file; either way ``noisyseg fit --config <run>/config.yaml`` repeats the run.
``test_after_fit: true`` tests the fitted weights on ``data.test`` after ``fit``. Each ``fit`` /
``validate`` / ``test`` writes the run's one results record, ``<default_root_dir>/results.json``
(the files: :mod:`noisyseg.runfiles`).

Defaults added to LightningCLI's: precision chosen for the machine
(:func:`noisyseg.runtime.auto_precision`); ``--threads N`` (config: ``threads: N``; default
:func:`noisyseg.runtime.default_threads`); the data's normalisation, batch and size linked to the
task's arguments (:func:`noisyseg.tasks.base.link_data_arguments`); checkpoints in
``<default_root_dir>/checkpoints`` with ``last.ckpt`` (:class:`~noisyseg.runfiles.RunCheckpoint`),
written atomically and read weights-only (:class:`~noisyseg.runfiles.SafeCheckpointIO`). A
``--ckpt_path`` file's ``hyper_parameters`` are merged over the model config as Lightning does,
except output paths (``encoder_out``, any ``*_out`` / ``*_dir``): those keep the user's values, so
a checkpoint cannot make the run write elsewhere (the merge touches only ``model``; the trainer's
``default_root_dir`` and callbacks are never read from it).

Errors: user errors (``ValueError`` — ``EncoderFileError`` / ``CheckpointFileError`` included —
``OSError``, ``FloatingPointError``) are one line ``noisyseg <command>: error: ...`` and exit 2,
each naming its file or value. A config that does not parse (unknown key, wrong type, a YAML
syntax error: file and line) is one error line and exit 2, not a page of usage; an error raised
while a dataset or task is built is that error's own message, not jsonargparse's page of Union
subtypes; a checkpoint of another model is one line naming it and the first differing keys.
"""

from __future__ import annotations

import contextvars
import copy
import gc
import importlib
import pickle
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
import yaml
from jsonargparse import ArgumentError
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from noisyseg.config import check_classes, yaml_error_message
from noisyseg.data.loading import DataModule
from noisyseg.runfiles import (
    CONFIG_FILE,
    RESULTS_FILE,
    RunCheckpoint,
    RunConfigFile,
    SafeCheckpointIO,
    atomic_write,
    load_checkpoint_safely,
    mismatch_error,
    write_results,
)
from noisyseg.runtime import auto_precision, set_threads
from noisyseg.tasks.base import BaseTask, link_data_arguments

SUBCOMMANDS = ("fit", "validate", "test", "predict")

# command -> "module:function" taking argv (list[str]) and returning an exit code
COMMANDS = {
    "demo": "noisyseg.demo:main",
    "sweep": "noisyseg.experiments.sweep:main",
    "report": "noisyseg.report:main",
    "analyze": "noisyseg.analysis:main",
    "export": "noisyseg.interop:main",
}
DATA_COMMANDS = {"preview": "noisyseg.data.preview:main", "pack": "noisyseg.data.shards:main",
                 "noise-report": "noisyseg.data.preview:noise_report_main"}

USAGE = f"""usage: noisyseg <command> [options]

commands:
  fit | validate | test | predict   train or evaluate from a YAML config (--config FILE); see --help
  demo                              noisy-label and contrastive pretraining vs random init, end to end
  data preview                      summarise and preview a data config
  data noise-report                 noisy vs clean labels of a config: agreement, per-class scores, confusion
  data pack CONFIG --out DIR        write a dataset config into LitData shards (StreamingShards reads them)
  sweep                             run a grid of configs x seeds, resumable
  report                            tables and figures from a sweep directory
  analyze                           encoder-vs-decoder noise analysis (Liu et al.)
  export                            encoder file -> smp / timm / torchvision state dict
"""

OUTPUT_SUFFIXES = ("_out", "_dir")  # model arguments naming files the run writes: the user's values only
SPLIT_OF = {"fit": "val", "validate": "val", "test": "test"}  # the split a subcommand scores
UNION_WRAPPER = "Does not validate against any of the Union subtypes"


def main(argv: list[str] | None = None) -> int:
    """``noisyseg <command> ...``: the exit code (2 with one line for a user error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "data" and (not rest or rest[0] not in DATA_COMMANDS):
        print(f"noisyseg data: expected one of {sorted(DATA_COMMANDS)}", file=sys.stderr)
        return 2
    target = DATA_COMMANDS[rest.pop(0)] if cmd == "data" else COMMANDS.get(cmd)
    try:
        if cmd in SUBCOMMANDS:
            return run_lightning_cli(argv)
        if target:
            module, func = target.split(":")
            return int(getattr(importlib.import_module(module), func)(rest) or 0)
    except KeyboardInterrupt:
        print("noisyseg: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, FloatingPointError) as e:  # one line naming the file or value
        print(f"noisyseg {cmd}: error: {e}", file=sys.stderr)
        return 2
    print(f"noisyseg: unknown command {cmd!r}\n\n{USAGE}", file=sys.stderr)
    return 2


class NoisysegCLI(LightningCLI):
    """LightningCLI with noisyseg's defaults and the results record.

    Args:
        in_process: started by :func:`run_config` (sweeps, demo, analyze): torch threads stay as
            the caller set them unless the config names ``threads``, and the test after ``fit``
            prints no table.
    """

    def __init__(self, *args: Any, in_process: bool = False, **kwargs: Any) -> None:
        self.in_process = in_process
        self.results: dict[str, Any] = {}
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        parser.set_defaults({"trainer.precision": auto_precision()})
        parser.add_argument("--threads", type=Optional[int], default=None,
                            help="torch compute threads per process (default: OMP_NUM_THREADS, else the "
                                 "physical cores available divided by the training processes on this machine)")
        parser.add_argument("--test_after_fit", type=bool, default=False,
                            help="after fit, test the fitted weights on data.test; the scores go to results.json")
        link_data_arguments(parser)

    def before_instantiate_classes(self) -> None:
        sub = self.config.get("subcommand")
        cfg = self.config[sub] if sub else self.config
        if cfg.get("threads") is None and self.in_process:  # a sweep's --threads stays in force
            return
        devices, accelerator = cfg.get("trainer.devices"), cfg.get("trainer.accelerator")
        # CPU processes of this run on this machine: one per device when DDP runs on the CPU
        on_cpu = accelerator == "cpu" or (accelerator in (None, "auto") and not torch.cuda.is_available())
        set_threads(cfg.get("threads"), devices if on_cpu and isinstance(devices, int) and devices > 1 else 1)

    def _parse_ckpt_path(self) -> None:
        sub = self.config.get("subcommand")
        init = self.config.get(f"{sub}.model.init_args") if sub else None
        keep = {k: v for k, v in vars(init).items() if k.endswith(OUTPUT_SUFFIXES)} if init is not None else {}
        try:
            super()._parse_ckpt_path()  # torch.load(weights_only=True) of an existing ckpt_path file
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError):
            load_checkpoint_safely(self.config[sub].get("ckpt_path"))  # raises one line naming the file
            raise
        init = self.config.get(f"{sub}.model.init_args") if sub else None
        for key in [k for k in vars(init) if k.endswith(OUTPUT_SUFFIXES)] if init is not None else []:
            init[key] = keep.get(key)  # None (write nothing) where the user's config did not set it

    def _run_subcommand(self, subcommand: str) -> None:
        t0 = time.perf_counter()
        try:
            super()._run_subcommand(subcommand)
        except RuntimeError as e:  # torch lists every missing and unexpected key of another model's checkpoint
            if "Error(s) in loading state_dict" not in str(e) or not self.trainer.ckpt_path:
                raise
            raise mismatch_error(self.trainer.ckpt_path, self.model) from None
        if subcommand not in SPLIT_OF:
            return
        seconds = {subcommand: time.perf_counter() - t0}
        scores = {"val": {}, "test": {}, SPLIT_OF[subcommand]: self._scores(SPLIT_OF[subcommand])}
        cfg = self.config[subcommand]
        if subcommand == "fit" and cfg.get("test_after_fit"):
            t0 = time.perf_counter()
            self.trainer.test(self.model, datamodule=self.datamodule, verbose=not self.in_process)
            seconds["test"] = time.perf_counter() - t0
            scores["test"] = self._scores("test")
        encoder = cfg.get("model.init_args.encoder_out")
        self.results = {**scores, "seconds": seconds, "encoder": str(encoder) if encoder and Path(encoder).is_file() else None}
        if self.trainer.is_global_zero:
            write_results(Path(self.trainer.default_root_dir) / RESULTS_FILE, self.results)

    def _scores(self, split: str) -> dict[str, float]:
        """The scores the task logged for ``split`` (``val/miou`` -> ``miou``); the loss is not a score."""
        logged = self.trainer.callback_metrics
        return {k[len(split) + 1:]: float(v) for k, v in logged.items() if k.startswith(f"{split}/") and k != f"{split}/loss"}

    def instantiate_trainer(self, **kwargs):
        trainer = super().instantiate_trainer(**kwargs)
        # Lightning's default checkpoint (a new version_N folder each run) -> one per run directory
        for i, cb in enumerate(trainer.callbacks):
            if type(cb) is ModelCheckpoint and cb.dirpath is None:
                trainer.callbacks[i] = RunCheckpoint()
        trainer.strategy.checkpoint_io = SafeCheckpointIO()
        return trainer


def _start(argv: list[str], **kwargs: Any) -> NoisysegCLI:
    """Parse ``argv`` (``[subcommand, --config, FILE, ...]``), build the run and execute it."""
    no_exit = {"exit_on_error": False}  # raise instead of printing 60 lines of usage: the callers print one line
    try:
        with warnings.catch_warnings():
            # `python -m noisyseg fit ...` hands sys.argv[1:] over as args: not the mistake it warns of
            warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
            # in a copy of the context: jsonargparse leaves its last parser in a ContextVar, and
            # through Lightning's instantiator that parser holds the CLI, its model, trainer and data
            # after the run (every in-process run of a demo or sweep stayed in memory)
            return contextvars.copy_context().run(
                NoisysegCLI,
                BaseTask, DataModule, subclass_mode_model=True, subclass_mode_data=True, args=argv,
                trainer_defaults={"enable_model_summary": False, "callbacks": list(kwargs.pop("callbacks", ()))},
                save_config_callback=kwargs.pop("save_config_callback", RunConfigFile),
                save_config_kwargs={"overwrite": True, "save_to_log_dir": False}, seed_everything_default=0,
                auto_configure_optimizers=False, parser_kwargs={**no_exit, **{c: dict(no_exit) for c in SUBCOMMANDS}},
                **kwargs,
            )
    except ValueError as e:  # jsonargparse's ArgumentError is no ValueError: it passes to the caller
        raise _innermost(e) from None


def run_lightning_cli(argv: list[str]) -> int:
    """``noisyseg fit|validate|test|predict ...``: exit code 0, or 2 with one line for a bad config."""
    argv = [a for a in argv if a != "--resume"] + (["--ckpt_path", "last"] if "--resume" in argv else [])
    try:
        _start(argv)
    except ArgumentError as e:
        located = _yaml_error(argv) if "Problems parsing config" in str(e) else None
        hint = "" if located else f"\n  (valid options: noisyseg {argv[0] if argv else 'fit'} --help)"
        print(f"noisyseg {argv[0] if argv else ''}: config error: {located or _short(str(e))}{hint}", file=sys.stderr)
        return 2
    return 0


def run_config(
    cfg: dict[str, Any],
    subcommand: str = "fit",
    quiet: bool = False,
    ckpt_path: str | None = None,
    callbacks: tuple[L.Callback, ...] = (),
) -> dict[str, Any]:
    """Run a config in this process exactly as ``noisyseg <subcommand> --config <root>/config.yaml``.

    The config is written to ``<trainer.default_root_dir>/config.yaml`` first and parsed from
    there, so the run can be repeated from that file alone.

    Args:
        cfg: a config as in ``configs/``: ``trainer`` (with ``default_root_dir``), ``model``,
            ``data``, optional ``seed_everything``, ``threads``, ``test_after_fit``.
        subcommand: ``fit``, ``validate`` or ``test``.
        quiet: no progress bars and no printed test table (sweeps running in parallel); not
            part of the written config.
        ckpt_path: passed as ``--ckpt_path`` (``"last"`` resumes); not part of the written config.
        callbacks: Lightning callbacks added to the config's (analyze reads the initial weights).

    Returns:
        The results record (see :func:`noisyseg.runfiles.write_results`; NaN for undefined scores)
        with ``root``, ``model`` (the task) and ``datamodule`` added.

    Raises:
        ValueError: a missing section or ``default_root_dir``, a class path that is not a task /
            data module / allowed part (:func:`noisyseg.config.check_classes`, before anything is
            built or written), or a config the parser refuses (naming the written file).
    """
    if subcommand not in SPLIT_OF:
        raise ValueError(f"subcommand {subcommand!r} is not one of {sorted(SPLIT_OF)}")
    # an earlier in-process run (demo, sweep, analyze) leaves garbage in reference cycles that only
    # the cycle collector frees; collect it before this run allocates its own (the demo's peak RSS:
    # benchmarks/bench_memory.py)
    gc.collect()
    for key in ("model", "data"):
        if key not in cfg:
            raise ValueError(f"config has no {key!r} section")
    root = (cfg.get("trainer") or {}).get("default_root_dir")
    if not root:
        raise ValueError("config has no trainer.default_root_dir: the run folder for its config.yaml and results.json")
    # every class path is checked before anything is built (a config naming os.system runs nothing)
    check_classes(cfg.get("trainer") or {})
    check_classes(cfg["model"], (L.LightningModule,))
    check_classes(cfg["data"], (L.LightningDataModule,))
    path = Path(root) / CONFIG_FILE
    text = yaml.safe_dump(copy.deepcopy(cfg), sort_keys=False)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    argv = [subcommand, "--config", str(path)]
    if quiet:
        argv.append("--trainer.enable_progress_bar=false")
    if ckpt_path is not None:
        argv += ["--ckpt_path", str(ckpt_path)]
    try:
        cli = _start(argv, in_process=True, save_config_callback=None, callbacks=callbacks)
    except ArgumentError as e:
        raise ValueError(f"config {path}: {_short(str(e))}") from None
    return {**cli.results, "root": str(root), "model": cli.model, "datamodule": cli.datamodule}


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


if __name__ == "__main__":
    sys.exit(main())
