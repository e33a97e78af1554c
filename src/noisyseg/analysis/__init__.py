"""``noisyseg analyze``: train a UNet on clean and on noisy VTS labels, then compare them per layer.

Stages:

1. **data** — VTS (2 classes) with clean labels, and the same scenes with ``flip_rate`` of the
   Voronoi cells given the wrong class; a separate clean validation split for the analysis.
2. **trainings** — two UNet-ResNet18 from the same seed, hence the same initialisation (checked),
   the same batches and augmentations; only the labels differ. Each is an ordinary config run
   through :func:`noisyseg.cli.run_config` (``<out>/train-clean/config.yaml``,
   ``<out>/train-noisy/config.yaml``: ``noisyseg fit --config`` repeats either).
3. **analysis** — :func:`noisyseg.analysis.encoder_decoder.analyze_models`: per layer Fisher ratio,
   linear probe, weight change and clean-vs-noisy distance.
4. **outputs** — ``analysis.yaml`` (the :class:`AnalysisConfig` used), ``analysis.csv``,
   ``analysis.md`` (the finding as measured), ``analysis.png``.
"""

from __future__ import annotations

import argparse
import copy
import csv
import io
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from noisyseg.analysis.encoder_decoder import COLUMNS, analysis_figure, analyze_models, summary_markdown
from noisyseg.runfiles import atomic_write


@dataclass
class AnalysisConfig:
    """Sizes of the two trainings and of the analysis (defaults: ~10 minutes on a 2-core CPU)."""

    image_size: int = 64  # VTS image side; Liu et al. use real 512 px tiles
    train_images: int = 300  # training scenes (the same scenes for both models)
    eval_images: int = 16  # clean validation scenes read by the analysis (half train, half test the probes)
    epochs: int = 6  # epochs of each training
    max_steps: int = -1  # cap on optimiser steps (-1: none); tests use 2
    flip_rate: float = 0.4  # fraction of cells with a wrong class in the noisy training
    batch_size: int = 16
    lr: float = 1e-3
    arch: str = "resnet18"
    num_cells: int = 20  # Voronoi cells per scene (paper: 20)
    pixels_per_image: int = 64  # pixels per image and layer for Fisher ratio and probe
    probe_steps: int = 300  # Adam steps of each linear probe
    seed: int = 0  # seed of init, batches and scenes (shared by both trainings)
    precision: str = "32-true"  # fp32: the weight statistics should not carry bf16 rounding


QUICK = AnalysisConfig(image_size=32, train_images=8, eval_images=4, epochs=1, max_steps=2, batch_size=4,
                       num_cells=6, pixels_per_image=16, probe_steps=20)
"""Seconds on a CPU: for tests and smoke checks, not for conclusions."""


def load_analysis_config(path: str | Path | None, quick: bool = False, **overrides: Any) -> AnalysisConfig:
    """Defaults (or QUICK), then the YAML file's keys, then non-None ``overrides``.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: unknown keys (naming them and the valid ones) or a bad value.
    """
    cfg = copy.deepcopy(QUICK if quick else AnalysisConfig())
    valid = {f.name for f in fields(AnalysisConfig)}
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"analysis config {path} does not exist")
        values = yaml.safe_load(path.read_text()) or {}
        if not isinstance(values, dict):
            raise ValueError(f"analysis config {path} must hold a mapping")
        unknown = set(values) - valid
        if unknown:
            raise ValueError(f"analysis config {path}: unknown keys {sorted(unknown)}; valid: {sorted(valid)}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    cfg = AnalysisConfig(**{**asdict(cfg), **values})
    if not 0.0 < cfg.flip_rate <= 1.0:
        raise ValueError(f"flip_rate={cfg.flip_rate} must lie in (0, 1]: the noisy training needs noise")
    if cfg.eval_images < 2:
        raise ValueError(f"eval_images={cfg.eval_images} must be >= 2 (probe train and test images)")
    return cfg


def training_config(cfg: AnalysisConfig, root: Path, flip_rate: float) -> dict[str, Any]:
    """The config of one training: UNet on VTS with ``flip_rate`` of the cells mislabelled, run in ``root``."""
    scenes = {"split": "train", "length": cfg.train_images, "size": cfg.image_size, "num_cells": cfg.num_cells,
              "label_noise": {"flip_rate": flip_rate}, "seed": cfg.seed, "cache": True}
    return {
        "seed_everything": cfg.seed,  # the same seed: the same initial weights and batches for both
        "trainer": {"max_epochs": cfg.epochs, "max_steps": cfg.max_steps, "precision": cfg.precision,
                    "default_root_dir": str(root), "logger": False, "enable_checkpointing": False,
                    "limit_val_batches": 0, "num_sanity_val_steps": 0},
        "model": {"class_path": "noisyseg.tasks.SegmentationTask",
                  "init_args": {"decoder": "unet", "arch": cfg.arch, "num_classes": 2, "lr": cfg.lr,
                                "channels_last": False}},
        "data": {"class_path": "noisyseg.data.DataModule",
                 "init_args": {"batch_size": cfg.batch_size,
                               "train": {"class_path": "noisyseg.data.VTSSegmentation", "init_args": scenes}}},
    }


def train_pair(cfg: AnalysisConfig, out: Path):
    """Train the clean and the noisy UNet from the same initialisation.

    Returns:
        ``(clean_task, noisy_task, init_state)`` with ``init_state`` the UNet's initial state dict.

    Raises:
        RuntimeError: when the two initialisations differ (seeding broken).
    """
    import lightning as L
    import torch

    from noisyseg.cli import run_config

    class InitialWeights(L.Callback):
        """The network's state dict when fitting starts."""

        def __init__(self) -> None:
            self.state: dict[str, torch.Tensor] = {}

        def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            self.state = {k: v.detach().cpu().clone() for k, v in pl_module.model.state_dict().items()}

    tasks, init = {}, None
    for name, flip in (("clean", 0.0), ("noisy", cfg.flip_rate)):
        start = InitialWeights()
        res = run_config(training_config(cfg, out / f"train-{name}", flip), quiet=True, callbacks=(start,))
        if init is None:
            init = start.state
        elif init.keys() != start.state.keys() or any(not torch.equal(init[k], start.state[k]) for k in init):
            raise RuntimeError("the clean and noisy models did not start from the same weights")
        tasks[name] = res["model"].cpu().eval()
    return tasks["clean"], tasks["noisy"], init


def run_analysis(cfg: AnalysisConfig, out: Path) -> dict[str, Any]:
    """All stages; returns ``{"rows": [...], "paths": {...}}``."""
    from noisyseg.data import VTSSegmentation

    out.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(asdict(cfg), sort_keys=False)
    atomic_write(out / "analysis.yaml", lambda tmp: Path(tmp).write_text(text))
    clean, noisy, init = train_pair(cfg, out)
    evalset = VTSSegmentation("val", cfg.eval_images, cfg.image_size, cfg.num_cells, seed=cfg.seed + 1)
    rows = analyze_models(clean, noisy, init, evalset, cfg.eval_images, cfg.pixels_per_image, cfg.probe_steps, cfg.seed)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    csv_text = buf.getvalue()
    atomic_write(out / "analysis.csv", lambda tmp: Path(tmp).write_text(csv_text))
    setting = (f"VTS {cfg.image_size} px, {cfg.train_images} training scenes, {cfg.epochs} epochs, UNet-{cfg.arch}; "
               f"noisy model: {int(100 * cfg.flip_rate)} % of cells mislabelled; seed {cfg.seed} for both; "
               f"features read on {cfg.eval_images} clean validation scenes.")
    md = summary_markdown(rows, setting)
    atomic_write(out / "analysis.md", lambda tmp: Path(tmp).write_text(md))
    fig = analysis_figure(rows, out / "analysis.png")
    return {"rows": rows, "markdown": md,
            "paths": {"csv": str(out / "analysis.csv"), "markdown": str(out / "analysis.md"), "figure": str(fig)}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="noisyseg analyze", description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--config", help="YAML with AnalysisConfig fields (image_size, epochs, flip_rate, ...)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (seconds): a smoke check, not a result")
    ap.add_argument("--flip-rate", type=float, help="label noise of the noisy training (overrides the config)")
    ap.add_argument("--epochs", type=int, help="epochs of each training (overrides the config)")
    args = ap.parse_args(argv)
    try:
        cfg = load_analysis_config(args.config, args.quick, flip_rate=args.flip_rate, epochs=args.epochs)
        res = run_analysis(cfg, Path(args.out))
    except (ValueError, FileNotFoundError, PermissionError) as e:
        print(f"noisyseg analyze: error: {e}", file=sys.stderr)
        return 2
    print(res["markdown"])
    print(f"[analyze] {res['paths']}")
    return 0
