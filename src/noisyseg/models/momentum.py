"""Momentum (EMA) encoders, their schedule, MoCo's key queue and its BatchNorm treatment.

* :func:`momentum_update` — EMA of an online network into its target (MoCo key encoder, DINO
  teacher); :func:`cosine_schedule` — the momentum as a pure function of the step.
* :class:`KeyQueue` — MoCo's FIFO dictionary of negative keys.
* :func:`batch_shuffle` / :func:`batch_unshuffle` / :class:`SplitBatchNorm2d` — keep the key
  encoder's BatchNorm from leaking which samples are positives ("shuffling BN", MoCo Sec. 3.3).

He et al., CVPR 2020, "Momentum Contrast for Unsupervised Visual Representation Learning";
facebookresearch/moco ``moco/builder.py``.

**Momentum update.** ``m=0`` copies, ``m=1`` keeps the target (both exactly: ``lerp`` hits its end
points). Buffers (BatchNorm running statistics, counters) are copied from the online network rather
than averaged. Deviation: MoCo lets the key encoder keep its own BN statistics; copying them makes
the target's eval-mode statistics those of the network it tracks (BYOL/DINO practice). The cosine
schedule ``base + (final - base) * (1 - cos(pi * step / total_steps)) / 2`` is the momentum schedule
of BYOL (Grill et al. 2020) and DINO (facebookresearch/dino ``utils.cosine_scheduler``, whose array
stops one step short of ``final``; here ``step == total_steps`` returns ``final``).

**Queue.** :class:`KeyQueue` holds a ``[K, D]`` buffer ``queue``, initialised with normalised
Gaussian vectors, and ``ptr``, the row the next key goes to. :meth:`KeyQueue.enqueue` gathers the
keys of all ranks first, so every rank holds the same queue. A global batch that does not divide
``K`` wraps around the end (choice: wrap rather than require ``K % global_batch == 0`` as the
reference asserts), so the queue always holds the ``K`` most recent keys, oldest at ``ptr``. A
global batch larger than ``K`` is rejected. lightly's ``MemoryBankModule`` is not used: it truncates
a batch at the end of the bank instead of wrapping around.

**Shuffling BN.** Under DDP :func:`batch_shuffle` is the reference's cross-process shuffle: gather
the global batch, permute it with an index drawn on rank 0 and broadcast, and keep this rank's
slice, so each rank's BN sees a different mix of samples than the query encoder (no gradient
through the gather; use it on the key encoder's input only). In one process it is a random
permutation; that alone does not change BN statistics, so the key encoder normalises sub-batches
separately (:class:`SplitBatchNorm2d`, the MoCo CIFAR demo's ``SplitBatchNorm``): after the
shuffle, a key is normalised with the statistics of a different sample mix than its query. Only
the normalisation is split; convolutions and everything else see the whole batch, so the network
runs once per step instead of once per sub-batch, which measured slower
(``benchmarks/bench_moco.py`` times the MoCo step, split BatchNorm included; figures in
``benchmarks/HISTORY.md``). Results equal running the module on each sub-batch
(:func:`torch.tensor_split`, sizes may differ by one); running statistics get one momentum update
per sub-batch, in order. A sub-batch needs two samples, so fewer groups are used for a small batch.
Eval mode is plain BatchNorm. State-dict names are those of :class:`torch.nn.BatchNorm2d`, so
:func:`momentum_update` and checkpoints pair a split network with a plain one.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from noisyseg.runtime import gather_no_grad, is_dist, rank, world_size

__all__ = [
    "KeyQueue",
    "SplitBatchNorm2d",
    "batch_shuffle",
    "batch_unshuffle",
    "cosine_schedule",
    "momentum_update",
    "split_batchnorm",
]


@torch.no_grad()
def momentum_update(online: nn.Module, target: nn.Module, m: float) -> None:
    """``target <- m * target + (1 - m) * online`` for parameters (``m`` in ``[0, 1]``); buffers are copied.

    Raises:
        ValueError: ``m`` outside ``[0, 1]`` or networks with different parameter/buffer names.
    """
    if not 0.0 <= m <= 1.0:
        raise ValueError(f"momentum m={m} is outside [0, 1]")
    online_p, target_p = dict(online.named_parameters()), dict(target.named_parameters())
    online_b, target_b = dict(online.named_buffers()), dict(target.named_buffers())
    if online_p.keys() != target_p.keys() or online_b.keys() != target_b.keys():
        raise ValueError("online and target networks differ in parameter or buffer names")
    for name, p_t in target_p.items():
        p_t.lerp_(online_p[name], 1.0 - m)  # p_t + (1 - m) * (p_o - p_t)
    for name, b_t in target_b.items():
        b_t.copy_(online_b[name])


def cosine_schedule(step: int, total_steps: int, base: float, final: float) -> float:
    """Cosine ramp from ``base`` at step 0 to ``final`` at ``total_steps``, held afterwards (module docstring).

    Raises:
        ValueError: ``total_steps < 1`` or ``step < 0``.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps={total_steps} must be >= 1")
    if step < 0:
        raise ValueError(f"step={step} must be >= 0")
    w = (1.0 - math.cos(math.pi * min(step, total_steps) / total_steps)) / 2.0  # 0 -> 1
    return base * (1.0 - w) + final * w  # exact end points: w is exactly 0 and 1 there


class KeyQueue(nn.Module):
    """FIFO queue of L2-normalised keys used as negatives (MoCo's dictionary; see the module docstring).

    Args:
        dim: D, key dimension.
        size: K, number of keys (MoCo: 65536).

    Raises:
        ValueError: ``dim`` or ``size`` below 1.
    """

    queue: Tensor
    ptr: Tensor

    def __init__(self, dim: int, size: int) -> None:
        super().__init__()
        if dim < 1 or size < 1:
            raise ValueError(f"KeyQueue needs dim >= 1 and size >= 1 (MoCo's out_dim, queue_size), got {dim=}, {size=}")
        self.dim, self.size = int(dim), int(size)
        self.register_buffer("queue", F.normalize(torch.randn(size, dim), dim=1))  # [K, D]
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))  # next row to write

    def check_batch(self, batch_size: int, world_size: int = 1) -> None:
        """Raise ``ValueError`` unless ``batch_size, world_size >= 1`` and the queue holds their product."""
        if batch_size < 1 or world_size < 1:
            raise ValueError(f"batch_size={batch_size} and world_size={world_size} must both be >= 1")
        if self.size < (n := batch_size * world_size):
            raise ValueError(f"queue size {self.size} is smaller than the global batch: batch_size={batch_size} "
                             f"x world_size={world_size} = {n}; valid: queue size >= {n}")

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Gather ``keys [N, D]`` across ranks, normalise them and write them at the pointer, wrapping at the end.

        Raises:
            ValueError: wrong shape, or a global batch larger than the queue.
        """
        if keys.ndim != 2 or keys.shape[1] != self.dim:
            raise ValueError(f"expected keys [N, {self.dim}], got {tuple(keys.shape)}")
        self.check_batch(keys.shape[0], world_size())
        keys = F.normalize(gather_no_grad(keys).to(self.queue.dtype), dim=1)  # [W*N, D]
        rows = (self.ptr + torch.arange(keys.shape[0], device=self.ptr.device)) % self.size  # [W*N]
        self.queue.index_copy_(0, rows.to(self.queue.device), keys)  # replace the oldest keys
        self.ptr.fill_((int(self.ptr) + keys.shape[0]) % self.size)  # move pointer

    def snapshot(self) -> Tensor:
        """``[K, D]`` detached copy of the queue, safe to use in a loss before :meth:`enqueue`."""
        return self.queue.detach().clone()

    def ordered(self) -> Tensor:
        """``[K, D]`` copy of the queue from the oldest key to the newest."""
        return torch.roll(self.queue.detach(), shifts=-int(self.ptr), dims=0)


def batch_shuffle(x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Permute the global batch of ``x [N, ...]`` (this rank's) before the key encoder, without gradient.

    MoCo ``_batch_shuffle_ddp``; ``generator``: an optional CPU generator for the permutation (rank 0's under DDP).

    Returns:
        ``x_shuffled [N, ...]`` and ``idx_unshuffle [W*N]`` (``W`` processes) for :func:`batch_unshuffle`.
    """
    x_all = gather_no_grad(x)  # [W*N, ...]
    idx_shuffle = torch.randperm(x_all.shape[0], generator=generator).to(x.device)  # [W*N]
    if is_dist():
        dist.broadcast(idx_shuffle, src=0)  # every rank uses rank 0's permutation
    idx_this = idx_shuffle.view(world_size(), -1)[rank()]  # [N] shuffled indices for this rank
    return x_all[idx_this], torch.argsort(idx_shuffle)


def batch_unshuffle(x: Tensor, idx_unshuffle: Tensor) -> Tensor:
    """Undo :func:`batch_shuffle` on ``x [N, ...]``, the key encoder's output: ``[N, ...]`` in this rank's order.

    Raises:
        ValueError: an ``idx_unshuffle`` other than :func:`batch_shuffle`'s (wrong length).
    """
    w = world_size()
    if idx_unshuffle.shape != (x.shape[0] * w,):
        raise ValueError(f"idx_unshuffle of shape {tuple(idx_unshuffle.shape)} does not match a batch of "
                         f"{x.shape[0]} on {w} process(es); pass the index batch_shuffle returned")
    return gather_no_grad(x)[idx_unshuffle.view(w, -1)[rank()]]  # [W*N, ...] -> [N, ...]


class SplitBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that, in train mode, normalises ``groups`` consecutive sub-batches separately.

    The single-device stand-in for MoCo's multi-GPU shuffling BN (see the module docstring).
    """

    def __init__(self, num_features: int, groups: int = 1, **kwargs: Any) -> None:
        super().__init__(num_features, **kwargs)
        if groups < 1:
            raise ValueError(f"groups={groups} must be >= 1")
        self.groups = int(groups)

    def forward(self, x: Tensor) -> Tensor:
        groups = max(1, min(self.groups, x.shape[0] // 2))
        if not self.training or groups == 1:
            return super().forward(x)
        # cat keeps the parts' memory format (channels-last in, channels-last out)
        return torch.cat([super(SplitBatchNorm2d, self).forward(p) for p in torch.tensor_split(x, groups)])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, groups={self.groups}"


def split_batchnorm(module: nn.Module, groups: int) -> nn.Module:
    """Make each ``BatchNorm2d`` in ``module`` a :class:`SplitBatchNorm2d` of ``groups`` in place (only the class
    changes: tensors, frozen flags, names, device and dtype stay); return ``module``.

    Raises:
        ValueError: ``groups < 1``.
    """
    if groups < 1:
        raise ValueError(f"groups={groups} must be >= 1")
    for bn in module.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.__class__, bn.groups = SplitBatchNorm2d, int(groups)
    return module
