"""Achieved GFLOP/s of the noisyseg MoCo v2 step as a fraction of this CPU's bf16 matmul rate.

FLOPs of one training step are counted with ``torch.utils.flop_counter.FlopCounterMode``:
forward + backward of the query path (encoder + MLP head, loss against the queue) and forward of
the key path (momentum encoder, BatchNorm split in ``key_bn_chunks`` sub-batches) — what
``noisyseg.tasks.MoCoTask.training_step`` computes. The step rate is the full Lightning training
step (augmentations, optimiser, logging included), so the fraction is a lower bound of how well
the convolutions themselves use the machine. The matmul rates (fp32, bf16 ``2048 x 2048``) and
the step rate are measured interleaved in the same run.

Run: ``python benchmarks/bench_flops.py [--quick] [--threads N]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_moco  # noqa: E402
import common  # noqa: E402


def count_flops(fn) -> int:
    """Total FLOPs (multiply and add counted separately) of everything ``fn()`` runs."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def moco_step_flops(batch: int = bench_moco.BATCH, size: int = bench_moco.SIZE) -> int:
    """FLOPs of one noisyseg MoCo v2 training step (query forward+backward, key forward)."""
    import torch

    from noisyseg.tasks import MoCoTask

    task = MoCoTask(arch="resnet18", queue_size=bench_moco.QUEUE)
    x = torch.randn(batch, 3, size, size)
    x1, x2 = task.views({"image": x})  # augmentations are not counted (no matmul/conv FLOPs)
    queue = task.queue.snapshot()

    def step() -> None:
        q = task.query(x1)  # B x D
        k = task.keys(x2)  # B x D (momentum update, shuffle, key encoder with split BN)
        task.loss_fn(q, k, queue).backward()

    return count_flops(step)


def run(quick: bool = False, repeats: int | None = None) -> list[dict]:
    """Matmul rates and the MoCo step rate, interleaved; rows with the achieved fraction."""
    import torch

    common.quiet()
    steps, warmup = (3, 2) if quick else (10, 3)
    repeats = repeats or (1 if quick else 3)
    flops = moco_step_flops()
    per_image = flops / bench_moco.BATCH
    ds = common.ImagePool((steps + warmup) * bench_moco.BATCH, bench_moco.SIZE)
    secs = 0.5 if quick else 1.5
    print(f"MoCo step: {flops / 1e9:.1f} GFLOP per step of {bench_moco.BATCH} ({per_image / 1e9:.2f} GFLOP/img)")
    runs = common.interleave(
        {
            "fp32 matmul GFLOP/s": lambda: common.matmul_rate(torch.float32, seconds=secs),
            "bf16 matmul GFLOP/s": lambda: common.matmul_rate(torch.bfloat16, seconds=secs),
            "noisyseg MoCo img/s": lambda: bench_moco.noisyseg_side(ds, steps, warmup),
        },
        repeats,
    )
    med = {k: common.median(v) for k, v in runs.items()}
    achieved = med["noisyseg MoCo img/s"] * per_image / 1e9
    bf16 = med["bf16 matmul GFLOP/s"]
    note = f"{per_image / 1e9:.2f} GFLOP/img x {med['noisyseg MoCo img/s']:.1f} img/s"
    return [
        common.row("flops", "fp32 matmul 2048²", med["fp32 matmul GFLOP/s"], None, "", "GFLOP/s", runs=runs),
        common.row("flops", "bf16 matmul 2048²", bf16, None, "", "GFLOP/s"),
        common.row("flops", "MoCo step achieved", achieved, bf16, "bf16 matmul", "GFLOP/s", "≥ 0.40", note=note),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=None)
    common.add_process_args(ap)
    args = ap.parse_args(argv)
    common.setup_process(args)
    print(common.table(run(args.quick, args.repeats)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
