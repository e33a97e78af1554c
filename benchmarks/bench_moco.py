"""MoCo v2, ResNet-18, 128 px, batch 32: noisyseg ``MoCoTask`` vs torchgeo ``MoCoTask(version=2)``.

Both train through a Lightning Trainer on the same image pool, same batch, same steps, with their
own augmentations inside the training step (noisyseg: batched :class:`ContrastiveView`; torchgeo:
kornia ``AugmentationSequential``) and the same MoCo v2 hyper-parameters (2048-2048-128 head,
queue 2048, momentum 0.999, SGD). Each side runs at its default precision, as users get it:
noisyseg ``auto`` (bf16-mixed + channels-last on AMX/AVX-512-BF16 CPUs), torchgeo Lightning's
default fp32. ``--peer-bf16`` adds a torchgeo arm with ``precision="bf16-mixed"`` for reference.

Run: ``python benchmarks/bench_moco.py [--quick]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

SIZE, BATCH, QUEUE = 128, 32, 2048


def noisyseg_side(ds, steps: int, warmup: int, precision: str = "auto", compile: bool = False) -> float:
    import torch

    from noisyseg.runtime import resolve_precision
    from noisyseg.tasks import MoCoTask

    torch.manual_seed(0)
    task = MoCoTask(arch="resnet18", queue_size=QUEUE, temperature=0.2, momentum=0.999, lr=0.03)
    if compile:
        # in place (nn.Module.compile), so parameter names stay those momentum_update pairs up;
        # compilation happens in the warm-up steps, outside the timed window
        task.query.compile()
        task.key.compile()
    return common.fit_rate(task, ds, BATCH, steps, warmup, resolve_precision(precision))


def torchgeo_side(ds, steps: int, warmup: int, precision: str = "32-true") -> float:
    import torch
    from torchgeo.trainers import MoCoTask

    torch.manual_seed(0)
    task = MoCoTask(
        model="resnet18",
        weights=None,  # random init: nothing is downloaded
        version=2,
        layers=2,
        hidden_dim=2048,
        output_dim=128,
        lr=0.03,
        weight_decay=1e-4,
        temperature=0.2,
        memory_bank_size=QUEUE,
        moco_momentum=0.999,
        size=SIZE,
    )
    return common.fit_rate(task, ds, BATCH, steps, warmup, precision)


def run(quick: bool = False, repeats: int | None = None, peer_bf16: bool = False, compile: bool = False) -> list[dict]:
    """Interleaved measurement; returns result rows (img/s, ratio vs torchgeo)."""
    common.quiet()
    steps, warmup = (3, 2) if quick else (10, 3)
    repeats = repeats or (1 if quick else 3)
    ds = common.ImagePool((steps + warmup) * BATCH, SIZE)
    sides = {
        "torchgeo MoCoTask (fp32)": lambda: torchgeo_side(ds, steps, warmup),
        "noisyseg MoCoTask (auto)": lambda: noisyseg_side(ds, steps, warmup),
    }
    if peer_bf16:
        sides["torchgeo MoCoTask (bf16-mixed)"] = lambda: torchgeo_side(ds, steps, warmup, "bf16-mixed")
    if compile:
        sides["noisyseg MoCoTask (compiled)"] = lambda: noisyseg_side(ds, steps, warmup, compile=True)
    print(f"MoCo v2 ResNet-18 {SIZE}px batch {BATCH}: {warmup} warm-up + {steps} timed steps, {repeats} repeats")
    runs = common.interleave(sides, repeats)
    med = {k: common.median(v) for k, v in runs.items()}
    peer = med["torchgeo MoCoTask (fp32)"]
    rows = [
        common.row("moco", "train img/s", med["noisyseg MoCoTask (auto)"], peer, "torchgeo fp32", "img/s", "≥ 3.0×", runs,
                   f"median of {repeats}; {steps} steps after {warmup} warm-up")
    ]
    if peer_bf16:
        rows.append(common.row("moco", "train img/s vs peer bf16", med["noisyseg MoCoTask (auto)"],
                               med["torchgeo MoCoTask (bf16-mixed)"], "torchgeo bf16-mixed", "img/s", "", runs))
    if compile:
        rows.append(common.row("moco", "train img/s, torch.compile (opt-in)", med["noisyseg MoCoTask (compiled)"],
                               med["noisyseg MoCoTask (auto)"], "noisyseg not compiled", "img/s", "", runs,
                               "compile time inside the warm-up, not timed"))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--peer-bf16", action="store_true", help="also time torchgeo with bf16-mixed")
    common.add_process_args(ap)
    ap.add_argument("--compile", action="store_true", help="also time noisyseg with torch.compile'd networks")
    args = ap.parse_args(argv)
    common.setup_process(args)
    print(common.table(run(args.quick, args.repeats, args.peer_bf16, args.compile)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
