"""Cross-process helpers that do nothing without an initialised process group.

Every loss and the key queue go through these, so the same code runs in one CPU process (tests,
the demo) and under DDP. Without a process group :func:`gather` is the identity, :func:`rank` is 0
and :func:`world_size` is 1.

Under DDP all ranks must call these collectively with tensors of the same shape (all_gather does
not pad); the Lightning tasks use ``drop_last=True`` for the contrastive data for that reason.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["all_reduce_sum", "gather", "gather_no_grad", "is_dist", "rank", "world_size"]


def is_dist() -> bool:
    """Whether a ``torch.distributed`` process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """Rank of this process, 0 without a process group."""
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    """Number of processes, 1 without a process group."""
    return dist.get_world_size() if is_dist() else 1


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums each shard's gradient over ranks (vissl ``GatherLayer``).

    Written here rather than using ``torch.distributed.nn.functional.all_gather``, which torch
    2.14 deprecates in favour of a private module.
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.n = x.shape[0]
        return torch.cat(parts, dim=0)  # [W*N, ...]

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()  # [W*N, ...]
        dist.all_reduce(grad)  # every rank's loss used every shard
        start = dist.get_rank() * ctx.n
        return grad[start : start + ctx.n]  # [N, ...] this rank's shard


def gather(x: Tensor) -> Tensor:
    """Concatenate ``x`` from all ranks along dim 0, keeping gradients.

    In backward the gradients of each shard are summed across ranks and every rank gets the sum
    for its own shard, so a loss that uses negatives from other ranks trains the local encoder as
    if the whole global batch were here (vissl ``gather_from_all``; lightly ``utils/dist.py``).
    With DDP averaging parameter gradients, this is the gradient of the mean of the ranks' losses.

    Args:
        x: ``[N, ...]``, the same shape on every rank.

    Returns:
        ``[world_size * N, ...]`` ordered by rank; ``x`` itself without a process group.
    """
    if not is_dist() or world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)  # [W*N, ...]


@torch.no_grad()
def gather_no_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` from all ranks along dim 0 without gradients (MoCo ``concat_all_gather``).

    Args:
        x: ``[N, ...]``, the same shape on every rank.

    Returns:
        ``[world_size * N, ...]`` detached, ordered by rank; ``x.detach()`` without a process group.
    """
    if not is_dist() or world_size() == 1:
        return x.detach()
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    return torch.cat(parts, dim=0)  # [W*N, ...]


@torch.no_grad()
def all_reduce_sum(x: Tensor) -> Tensor:
    """Sum ``x`` over ranks without gradients (DINO's center); a detached copy without a group.

    Args:
        x: any shape, the same on every rank.

    Returns:
        A new tensor of the same shape holding the sum over ranks.
    """
    out = x.detach().clone()
    if is_dist() and world_size() > 1:
        dist.all_reduce(out)
    return out
