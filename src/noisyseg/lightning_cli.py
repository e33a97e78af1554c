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

Every run goes through :class:`NoisysegCLI`: ``noisyseg fit --config FILE`` on the command line
(which saves the parsed config as ``<default_root_dir>/config.yaml``, :class:`RunConfigFile`), and
:func:`run_config` for the sweeps, the demo and ``noisyseg analyze``, which writes the config there
first and parses it from that file; either way ``noisyseg fit --config <run>/config.yaml`` repeats
the run. ``test_after_fit: true`` in a config tests the fitted weights on ``data.test`` after ``fit``.
Each ``fit`` / ``validate`` / ``test`` writes the run's one results record,
``<default_root_dir>/results.json`` (:func:`write_results`).
"""

from __future__ import annotations

import copy
import json
import math
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
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from noisyseg.callbacks import RunCheckpoint, SafeCheckpointIO, load_checkpoint_safely, mismatch_error
from noisyseg.config import check_classes, yaml_error_message
from noisyseg.data.datamodule import DataModule
from noisyseg.runfiles import atomic_write
from noisyseg.runtime import auto_precision, set_threads
from noisyseg.tasks.base import BaseTask
from noisyseg.tasks.links import link_data_arguments

SUBCOMMANDS = ("fit", "validate", "test", "predict")


# model arguments that name files the run writes: from the user's config or command only
OUTPUT_SUFFIXES = ("_out", "_dir")

CONFIG_FILE = "config.yaml"  # the config of a run, in its default_root_dir (run_config / RunConfigFile)
RESULTS_FILE = "results.json"  # the run's scores, seconds and encoder file (written by write_results)
SPLIT_OF = {"fit": "val", "validate": "val", "test": "test"}  # the split a subcommand scores


class RunConfigFile(SaveConfigCallback):
    """The parsed config of ``noisyseg fit`` (defaults filled in, ``ckpt_path`` left out), saved as
    ``<default_root_dir>/config.yaml`` at the start of fitting: ``noisyseg fit --config
    <run>/config.yaml`` repeats the run. (Lightning's own callback writes it to the logger's
    folder, a new ``version_N`` each run.)"""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, save_to_log_dir=False, **kwargs)

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":  # validate / test / predict read a run; they do not make one
            return
        cfg = self.config.clone()
        cfg["ckpt_path"] = None  # a repeat trains from the start, not from this run's checkpoint
        text = self.parser.dump(cfg, skip_none=False)
        atomic_write(Path(trainer.default_root_dir) / CONFIG_FILE, lambda tmp: Path(tmp).write_text(text))


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
        link_data_arguments(parser)  # the data's normalisation, batch and size -> the task's arguments

    def before_instantiate_classes(self) -> None:
        sub = self.config.get("subcommand")
        cfg = self.config[sub] if sub else self.config
        devices, accelerator = cfg.get("trainer.devices"), cfg.get("trainer.accelerator")
        # CPU processes of this run on this machine: one per device when DDP runs on the CPU
        on_cpu = accelerator == "cpu" or (accelerator in (None, "auto") and not torch.cuda.is_available())
        processes = devices if on_cpu and isinstance(devices, int) and devices > 1 else 1
        if cfg.get("threads") is not None or not self.in_process:  # a sweep's --threads stays in force
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
        scores: dict[str, dict[str, float]] = {"val": {}, "test": {}}
        seconds: dict[str, float] = {}
        t0 = time.perf_counter()
        try:
            super()._run_subcommand(subcommand)
        except RuntimeError as e:
            # torch lists every missing and unexpected key of another model's checkpoint
            if "Error(s) in loading state_dict" not in str(e) or not self.trainer.ckpt_path:
                raise
            raise mismatch_error(self.trainer.ckpt_path, self.model) from None
        seconds[subcommand] = time.perf_counter() - t0
        if subcommand not in SPLIT_OF:
            return
        scores[SPLIT_OF[subcommand]] = split_scores(self.trainer.callback_metrics, SPLIT_OF[subcommand])
        cfg = self.config[subcommand]
        if subcommand == "fit" and cfg.get("test_after_fit"):
            t0 = time.perf_counter()
            self.trainer.test(self.model, datamodule=self.datamodule, verbose=not self.in_process)
            seconds["test"] = time.perf_counter() - t0
            scores["test"] = split_scores(self.trainer.callback_metrics, "test")
        encoder = cfg.get("model.init_args.encoder_out")
        self.results = {**scores, "seconds": seconds,
                        "encoder": str(encoder) if encoder and Path(encoder).is_file() else None}
        if self.trainer.is_global_zero:
            write_results(Path(self.trainer.default_root_dir) / RESULTS_FILE, self.results)

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


def split_scores(metrics: dict[str, Any], split: str) -> dict[str, float]:
    """The scores a task logged for ``split`` (``val/miou`` -> ``miou``); the loss is not a score."""
    prefix = f"{split}/"
    return {k[len(prefix):]: float(v) for k, v in metrics.items() if k.startswith(prefix) and k != f"{split}/loss"}


def write_results(path: Path, record: dict[str, Any]) -> None:
    """Write the results record atomically as strict JSON: an undefined score (NaN) is ``null``.

    Args:
        path: ``<default_root_dir>/results.json``.
        record: ``{"val": {metric: value}, "test": {metric: value}, "seconds": {subcommand: s},
            "encoder": path of the encoder file written, or None}``.
    """
    def finite(v: Any) -> Any:
        return None if isinstance(v, float) and not math.isfinite(v) else v

    clean = {**record, **{split: {k: finite(v) for k, v in record[split].items()} for split in ("val", "test")}}
    text = json.dumps(clean, indent=2, allow_nan=False)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def read_results(root: str | Path) -> dict[str, Any] | None:
    """The results record of the run in ``root`` (``null`` scores read as NaN), or None when absent
    or torn (a run killed while writing it is run again)."""
    path = Path(root) / RESULTS_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    for split in ("val", "test"):
        record[split] = {k: math.nan if v is None else v for k, v in (record.get(split) or {}).items()}
    return record


def _start(argv: list[str], **kwargs: Any) -> NoisysegCLI:
    """Parse ``argv`` (``[subcommand, --config, FILE, ...]``), build the run and execute it."""
    # raise instead of printing 60 lines of usage and exiting: the callers print one line
    no_exit = {"exit_on_error": False}
    try:
        with warnings.catch_warnings():
            # `python -m noisyseg fit ...` hands sys.argv[1:] over as args: not the mistake it warns of
            warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
            return NoisysegCLI(
                BaseTask,
                DataModule,
                subclass_mode_model=True,
                subclass_mode_data=True,
                trainer_defaults={"enable_model_summary": False, "callbacks": list(kwargs.pop("callbacks", ()))},
                save_config_callback=kwargs.pop("save_config_callback", RunConfigFile),
                save_config_kwargs={"overwrite": True},
                seed_everything_default=0,
                args=argv,
                auto_configure_optimizers=False,
                parser_kwargs={**no_exit, **{c: dict(no_exit) for c in SUBCOMMANDS}},
                **kwargs,
            )
    except ValueError as e:  # jsonargparse's ArgumentError is no ValueError: it passes to the caller
        raise _innermost(e) from None


def run_lightning_cli(argv: list[str]) -> int:
    """``noisyseg fit|validate|test|predict ...``: exit code 0, or 2 with one line for a bad config."""
    argv = list(argv)
    if "--resume" in argv:
        argv.remove("--resume")
        argv += ["--ckpt_path", "last"]
    try:
        _start(argv)
    except ArgumentError as e:
        located = _yaml_error(argv) if "Problems parsing config" in str(e) else None
        if located:
            print(f"noisyseg {argv[0] if argv else ''}: config error: {located}", file=sys.stderr)
            return 2
        print(f"noisyseg {argv[0] if argv else ''}: config error: {_short(str(e))}\n"
              f"  (valid options: noisyseg {argv[0] if argv else 'fit'} --help)", file=sys.stderr)
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
        The results record (see :func:`write_results`; NaN for undefined scores) with ``root``,
        ``model`` (the task) and ``datamodule`` added.

    Raises:
        ValueError: a missing section or ``default_root_dir``, a class path that is not a task /
            data module / allowed part (:func:`noisyseg.config.check_classes`, before anything is
            built or written), or a config the parser refuses (naming the written file).
    """
    if subcommand not in SPLIT_OF:
        raise ValueError(f"subcommand {subcommand!r} is not one of {sorted(SPLIT_OF)}")
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
    path.parent.mkdir(parents=True, exist_ok=True)
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
