"""Does data ever starve training? Images/s per core of VTS generation and of the whole pipeline.

Measured on one thread (= one core), after the texture banks are built (a one-time cost, reported
separately), on indices never generated before (no sample cache):

* ``VTSSegmentation`` (30 % label noise, as the demo's supervised arm) and ``VTSPairs``
  (r = 0.5, p = 0.5, as the demo's noisy MoCo arm) — ``dataset[i]``;
* the full pipeline as the tasks consume it: ``DataLoader`` (main process) + ``collate`` + the
  batched augmentations the task runs in its step — two :class:`ContrastiveView` s for MoCo
  (batch 32), :class:`SegmentationAugment` for segmentation (batch 16) — + channels-last.

Data keeps up with training when its per-core rate exceeds the training rate measured in the
same run (``run_all.py`` prints the ratio); with ``num_workers=k`` loader workers it scales ~k x.

Run: ``python benchmarks/bench_data.py [--quick]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

SIZE = 128


def _rate(n_images: int, fn) -> float:
    t0 = time.perf_counter()
    fn()
    return n_images / (time.perf_counter() - t0)


def generation_rate(kind: str, n: int, offset: int) -> float:
    """Images/s of ``dataset[i]`` for ``n`` fresh indices starting at ``offset``."""
    ds = _dataset(kind, offset + n)
    return _rate(n, lambda: [ds[i] for i in range(offset, offset + n)])


def _dataset(kind: str, length: int):
    from noisyseg.data import VTSPairs, VTSSegmentation

    if kind == "pairs":
        return VTSPairs("train", length=length, size=SIZE, r=0.5, p=0.5, seed=0)
    return VTSSegmentation("train", length=length, size=SIZE, label_noise={"flip_rate": 0.3}, seed=0)


def pipeline_rate(kind: str, batches: int, offset: int) -> float:
    """Images/s of loader + collate + the task's batched augmentations, on fresh samples."""
    import torch
    from torch.utils.data import DataLoader, Subset

    from noisyseg.data.loading import collate
    from noisyseg.transforms.batch import ContrastiveView, SegmentationAugment

    batch = 32 if kind == "pairs" else 16
    ds = Subset(_dataset(kind, offset + batches * batch), range(offset, offset + batches * batch))
    dl = DataLoader(ds, batch_size=batch, shuffle=False, num_workers=0, collate_fn=collate)
    view, seg_aug = ContrastiveView(), SegmentationAugment()

    def consume() -> None:
        for b in dl:
            if kind == "pairs":
                outs = [view(b["image"])[0], view(b["image2"])[0]]  # MoCoTask.views
            else:
                outs = list(seg_aug(b["image"], b["mask"]))
            for o in outs[:1]:
                o.contiguous(memory_format=torch.channels_last)

    return _rate(batches * batch, consume)


def texture_warmup_seconds() -> float:
    """One-time cost of building the procedural texture banks (cached for the process)."""
    t0 = time.perf_counter()
    for kind in ("segmentation", "pairs"):
        ds = _dataset(kind, 64)
        for i in range(64):  # touches every texture variant of the split
            ds[i]
    return time.perf_counter() - t0


def run(quick: bool = False, repeats: int | None = None, train_rates: dict[str, float] | None = None) -> list[dict]:
    """Per-core data rates (median of repeats), with the ratio to a training rate when given."""
    import torch

    common.quiet()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # per core
    try:
        warm = texture_warmup_seconds()
        repeats = repeats or (1 if quick else 3)
        n, nb = (16, 1) if quick else (96, 3)
        sides, k = {}, [0]

        def fresh() -> int:  # new indices every call: no cached sample is ever timed
            k[0] += 1
            return 1000 + k[0] * 1000

        sides["VTSSegmentation gen"] = lambda: generation_rate("segmentation", n, fresh())
        sides["VTSPairs gen"] = lambda: generation_rate("pairs", n, fresh())
        sides["seg pipeline (b16)"] = lambda: pipeline_rate("segmentation", nb * 2, fresh())
        sides["MoCo pipeline (b32)"] = lambda: pipeline_rate("pairs", nb, fresh())
        print(f"data, 1 thread: texture banks built in {warm:.1f} s (once per process)")
        runs = common.interleave(sides, repeats)
    finally:
        torch.set_num_threads(threads)
    med = {k: common.median(v) for k, v in runs.items()}
    train_rates = train_rates or {}
    vs = {"VTSSegmentation gen": "unet", "seg pipeline (b16)": "unet", "VTSPairs gen": "moco", "MoCo pipeline (b32)": "moco"}
    rows = []
    for name, rate in med.items():
        t = train_rates.get(vs[name])
        rows.append(common.row("data", f"{name} per core", rate, t, f"{vs[name]} training" if t else "",
                               "img/s", "> 1× training", {name: runs[name]}))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=None)
    args = ap.parse_args(argv)
    print(common.table(run(args.quick, args.repeats)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
