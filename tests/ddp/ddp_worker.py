"""Two-process DDP runs of every noisyseg task, recording what each rank saw (run by test_ddp_tasks).

``python tests/ddp/ddp_worker.py OUT_DIR [SCENARIO ...]`` starts as one process; the first
``Trainer(strategy="ddp", devices=2)`` relaunches this script as rank 1 (Lightning's
``_SubprocessScriptLauncher`` re-runs ``sys.argv`` with ``LOCAL_RANK=1``), and later Trainers in
the same processes reuse that process group, so all scenarios share one launch and one import of
torch. A scenario writes ``OUT_DIR/<scenario>.rank<r>.pt`` (tensors, compared exactly by the
test); the test does the one-process reference computations itself.

Scenarios (per-rank batch 2, 32 px VTS images, resnet18, 2 optimiser steps):

* ``segmentation`` — SegmentationTask fit with validation on 9 images through
  :class:`~noisyseg.data.loading.UnpaddedDistributedSampler`; then ``test`` of rank 0's weights on
  8 images (Lightning's sampler, no padding needed), 9 images (Lightning's sampler pads) and 9
  images (unpadded sampler). Records confusion matrices (local and reduced) and sample indices.
* ``moco``, ``false_per_anchor``, ``false_closest`` — MoCoTask; records every local key batch
  given to the queue, the queue before and after, and the loss inputs/outputs of each step.
* ``dino`` — DINOTask; records the teacher outputs and the center before/after each step.
* ``dense_within``, ``dense_cross`` — DenseContrastTask; records the loss inputs/outputs.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from torch import nn

from noisyseg.data import DataModule, VTSPairs, VTSSegmentation
from noisyseg.data.loading import UnpaddedDistributedSampler
from noisyseg.tasks import DenseContrastTask, DINOTask, MoCoTask, SegmentationTask

BATCH = 2  # per process
STEPS = 2
SIZE = 32  # resnet18's last map is 1x1 here: the smallest input that still runs every task


def trainer(root: Path, **kw: Any) -> L.Trainer:
    """A quiet two-process CPU trainer; gloo is Lightning's default backend on the CPU."""
    args = dict(
        accelerator="cpu", devices=2, strategy="ddp", max_steps=STEPS, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        precision="32-true", num_sanity_val_steps=0, default_root_dir=str(root),
    )
    args.update(kw)
    return L.Trainer(**args)


def save(out: Path, name: str, rank: int, record: dict[str, Any]) -> None:
    """``torch.save`` through a temp file, so the test never reads a half-written result."""
    tmp = out / f".{name}.rank{rank}.tmp"
    torch.save(record, tmp)
    os.replace(tmp, out / f"{name}.rank{rank}.pt")


def param_sums(module: nn.Module) -> torch.Tensor:
    """``[P]`` float64 sum of each trainable parameter: equal on all ranks iff DDP synced them."""
    return torch.stack([p.detach().double().sum() for p in module.parameters() if p.requires_grad])


def buffer_sums(module: nn.Module) -> torch.Tensor:
    """``[B]`` float64 sum of each floating-point buffer (BatchNorm running statistics)."""
    return torch.stack([b.double().sum() for b in module.buffers() if b.is_floating_point()])


def record_calls(module: nn.Module, calls: list[dict[str, Any]]) -> None:
    """Append ``{"args": detached inputs, "out": detached output}`` for every forward of a loss."""

    def hook(_mod: nn.Module, args: tuple, out: torch.Tensor) -> None:
        calls.append({
            "args": [a.detach().clone() if torch.is_tensor(a) else a for a in args],
            "out": out.detach().clone(),
        })

    module.register_forward_hook(hook)


class SeenIndices(L.Callback):
    """Dataset indices of every val/test batch this rank evaluated (from ``meta``)."""

    def __init__(self) -> None:
        self.val: list[int] = []
        self.test: list[int] = []

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.val.extend(int(m["index"]) for m in batch["meta"])

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.test.extend(int(m["index"]) for m in batch["meta"])


class LightningSamplerDataModule(DataModule):
    """Eval loaders without noisyseg's sampler, so Lightning adds its padding DistributedSampler:
    the behaviour noisyseg's DataModule (which uses UnpaddedDistributedSampler) avoids."""

    def _loader(self, ds, name: str, train: bool):
        loader = super()._loader(ds, name, train)
        if train:
            return loader
        assert isinstance(loader.sampler, UnpaddedDistributedSampler)  # what DataModule wires in
        return torch.utils.data.DataLoader(
            ds, batch_size=loader.batch_size, num_workers=loader.num_workers, collate_fn=loader.collate_fn,
        )


def record_confusion(metric: Any, calls: list[dict[str, torch.Tensor]]) -> None:
    """Wrap ``metric.compute`` to keep this rank's local matrix and the matrix reduced over ranks."""
    compute = metric.compute

    def wrapped() -> torch.Tensor:
        local = metric.confmat.detach().clone()  # before compute() sums it across processes
        reduced = compute()
        calls.append({"local": local, "reduced": reduced.detach().clone()})
        return reduced

    metric.compute = wrapped


def vts_seg(split: str, length: int) -> VTSSegmentation:
    return VTSSegmentation(split, length=length, size=SIZE, num_cells=6, label_noise={"flip_rate": 0.3}, cache=True)


def vts_pairs() -> VTSPairs:
    return VTSPairs("train", length=2 * BATCH * STEPS, r=0.5, size=SIZE, num_cells=6, cache=True)


# ------------------------------------------------------------------------------------ scenarios
def segmentation(out: Path) -> None:
    L.seed_everything(0)
    # eval batch 1 and channels_last off: each test image is computed alone in the same layout on
    # every rank and in the test's one-process reference, so logits are bit-identical and the
    # confusion matrices can be compared exactly (a near-tied argmax cannot flip)
    task = SegmentationTask(decoder="unet", num_classes=2, channels_last=False, lr=1e-2)
    val_cm: list[dict[str, torch.Tensor]] = []
    record_confusion(task.val_cm, val_cm)
    seen = SeenIndices()
    dm = DataModule(
        train=vts_seg("train", 2 * BATCH * STEPS), val=vts_seg("test", 9),
        batch_size=BATCH, eval_batch_size=1, drop_last=True,
    )
    t = trainer(out, callbacks=[seen], limit_val_batches=1.0)
    t.fit(task, datamodule=dm)
    rank = t.global_rank
    rec: dict[str, Any] = {
        "global_step": t.global_step, "params": param_sums(task), "buffers_after_fit": buffer_sums(task),
        "val_cm": val_cm, "val_seen": list(seen.val), "val_miou": task.val_scores["miou"],
    }
    if rank == 0:
        torch.save(task.state_dict(), out / "segmentation_model.pt")
    dist.barrier()  # rank 1 loads the file rank 0 wrote
    # every rank evaluates rank 0's weights: after fit the BN running statistics differ by rank
    task.load_state_dict(torch.load(out / "segmentation_model.pt"))
    calls: list[dict[str, torch.Tensor]] = []
    record_confusion(task.test_cm, calls)
    for name, data_cls, length in (
        ("test8_lightning", LightningSamplerDataModule, 8),  # 8 / 2 ranks: Lightning's sampler adds nothing
        ("test9_lightning", LightningSamplerDataModule, 9),  # Lightning's sampler pads rank 1 with image 0
        ("test9_unpadded", DataModule, 9),  # noisyseg's DataModule: every image exactly once
    ):
        seen = SeenIndices()
        dm = data_cls(test=vts_seg("test", length), batch_size=BATCH, eval_batch_size=1)
        trainer(out, callbacks=[seen]).test(task, datamodule=dm, verbose=False)
        rec[name] = {"cm": calls[-1], "seen": list(seen.test), "miou": task.test_scores["miou"]}
    save(out, "segmentation", rank, rec)


def moco(out: Path, name: str, false_negative: str) -> None:
    L.seed_everything(0)
    task = MoCoTask(
        queue_size=16, hidden_dim=64, out_dim=32, false_negative=false_negative,
        fn_threshold=-0.99,  # per-anchor: every anchor's closest negative is a false negative
        positive_min=-1.0,  # reference: the selected pair is always accepted
        key_bn_chunks=1, lr=0.01,
    )
    keys: list[torch.Tensor] = []
    enqueue = task.queue.enqueue

    def record_enqueue(k: torch.Tensor) -> None:
        keys.append(k.detach().clone())  # [B, D] this rank's keys, before the gather
        enqueue(k)

    task.queue.enqueue = record_enqueue
    calls: list[dict[str, Any]] = []
    record_calls(task.loss_fn, calls)
    initial = task.queue.queue.detach().clone()  # seeded: the same on both ranks
    t = trainer(out)
    t.fit(task, datamodule=DataModule(train=vts_pairs(), batch_size=BATCH, drop_last=True))
    save(out, name, t.global_rank, {
        "global_step": t.global_step, "params": param_sums(task), "buffers": buffer_sums(task),
        "keys": keys, "loss_calls": calls,
        "queue_initial": initial, "queue": task.queue.queue.detach().clone(), "ptr": int(task.queue.ptr),
    })


def dino(out: Path) -> None:
    L.seed_everything(0)
    task = DINOTask(out_dim=256, hidden_dim=64, bottleneck_dim=32, n_local_crops=2, lr=1e-3)
    centers: list[torch.Tensor] = []
    task.loss_fn.register_forward_pre_hook(lambda mod, args: centers.append(mod.center.detach().clone()))
    calls: list[dict[str, Any]] = []
    record_calls(task.loss_fn, calls)
    t = trainer(out)
    t.fit(task, datamodule=DataModule(train=vts_pairs(), batch_size=BATCH, drop_last=True))
    save(out, "dino", t.global_rank, {
        "global_step": t.global_step, "params": param_sums(task), "buffers": buffer_sums(task),
        "centers_before": centers,
        "loss_calls": calls, "center": task.loss_fn.center.detach().clone(),
    })


def dense(out: Path, mode: str) -> None:
    L.seed_everything(0)
    task = DenseContrastTask(mode=mode, feature_size=4, proj_dim=32, lr=1e-3)
    calls: list[dict[str, Any]] = []
    record_calls(task.loss_fn, calls)
    t = trainer(out)
    t.fit(task, datamodule=DataModule(train=vts_pairs(), batch_size=BATCH, drop_last=True))
    save(out, f"dense_{mode}", t.global_rank, {
        "global_step": t.global_step, "params": param_sums(task), "buffers": buffer_sums(task),
        "loss_calls": calls,
    })


SCENARIOS = {
    "segmentation": segmentation,
    "moco": lambda out: moco(out, "moco", "none"),
    "false_per_anchor": lambda out: moco(out, "false_per_anchor", "per_anchor"),
    "false_closest": lambda out: moco(out, "false_closest", "closest"),
    "dino": dino,
    "dense_within": lambda out: dense(out, "within"),
    "dense_cross": lambda out: dense(out, "cross"),
}


def main(argv: list[str]) -> int:
    if not argv:
        print(f"usage: ddp_worker.py OUT_DIR [SCENARIO ...]; scenarios: {sorted(SCENARIOS)}", file=sys.stderr)
        return 2
    out, names = Path(argv[0]), argv[1:] or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        print(f"unknown scenario(s) {unknown}; valid: {sorted(SCENARIOS)}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # two processes on a shared CPU; also fixes the conv summation order
    for name in names:
        start = time.perf_counter()
        SCENARIOS[name](out)
        print(f"[ddp_worker] {name}: {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    if dist.is_initialized():
        dist.barrier()  # neither rank tears gloo down while the other still talks to it
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
