"""Supervised UNet-ResNet-18, 128 px, batch 16: noisyseg ``SegmentationTask`` vs torchgeo.

noisyseg ``SegmentationTask(decoder="unet")`` (CE + Dice, D4 + band jitter inside the step) vs
torchgeo ``SemanticSegmentationTask(model="unet", backbone="resnet18", weights=None)`` (CE, its
training metrics; torchgeo augments in its DataModule, which is not used here, so the peer does
*less* work per step). Same image pool, batch, steps and Trainer flags; each side at its default
precision (noisyseg ``auto``, torchgeo Lightning's fp32).

Run: ``python benchmarks/bench_unet.py [--quick] [--threads N]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

SIZE, BATCH, CLASSES = 128, 16, 2


def noisyseg_side(ds, steps: int, warmup: int, precision: str = "auto") -> float:
    import torch

    from noisyseg.runtime import resolve_precision
    from noisyseg.tasks import SegmentationTask

    torch.manual_seed(0)
    task = SegmentationTask(decoder="unet", arch="resnet18", num_classes=CLASSES)
    return common.fit_rate(task, ds, BATCH, steps, warmup, resolve_precision(precision))


def torchgeo_side(ds, steps: int, warmup: int, precision: str = "32-true") -> float:
    import torch
    from torchgeo.trainers import SemanticSegmentationTask

    torch.manual_seed(0)
    task = SemanticSegmentationTask(
        model="unet", backbone="resnet18", weights=None, in_channels=3, task="multiclass", num_classes=CLASSES
    )
    # torchgeo's ReduceLROnPlateau watches val_loss at the epoch end; without a validation set
    # (none is timed here) Lightning raises there, so let it watch train_loss instead
    task.monitor = "train_loss"
    return common.fit_rate(task, ds, BATCH, steps, warmup, precision)


def run(quick: bool = False, repeats: int | None = None, peer_bf16: bool = False) -> list[dict]:
    """Interleaved measurement; returns result rows (img/s, ratio vs torchgeo)."""
    common.quiet()
    steps, warmup = (3, 2) if quick else (12, 3)
    repeats = repeats or (1 if quick else 3)
    ds = common.ImagePool((steps + warmup) * BATCH, SIZE, num_classes=CLASSES)
    sides = {
        "torchgeo SemSegTask (fp32)": lambda: torchgeo_side(ds, steps, warmup),
        "noisyseg SegTask (auto)": lambda: noisyseg_side(ds, steps, warmup),
    }
    if peer_bf16:
        sides["torchgeo SemSegTask (bf16-mixed)"] = lambda: torchgeo_side(ds, steps, warmup, "bf16-mixed")
    print(f"UNet-ResNet-18 {SIZE}px batch {BATCH}: {warmup} warm-up + {steps} timed steps, {repeats} repeats")
    runs = common.interleave(sides, repeats)
    med = {k: common.median(v) for k, v in runs.items()}
    rows = [
        common.row("unet", "train img/s", med["noisyseg SegTask (auto)"], med["torchgeo SemSegTask (fp32)"],
                   "torchgeo fp32", "img/s", "≥ 2.5×", runs, f"median of {repeats}; {steps} steps after {warmup} warm-up")
    ]
    if peer_bf16:
        rows.append(common.row("unet", "train img/s vs peer bf16", med["noisyseg SegTask (auto)"],
                               med["torchgeo SemSegTask (bf16-mixed)"], "torchgeo bf16-mixed", "img/s", "", runs))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--peer-bf16", action="store_true", help="also time torchgeo with bf16-mixed")
    common.add_process_args(ap)
    args = ap.parse_args(argv)
    common.setup_process(args)
    print(common.table(run(args.quick, args.repeats, args.peer_bf16)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
