"""An evaluation sampler for DDP that splits a dataset across ranks without padding it.

Lightning gives every val/test loader a ``torch.utils.data.DistributedSampler(shuffle=False)``.
That sampler pads the index list to a multiple of the world size by repeating its first indices,
so with 9 test images on 2 processes image 0 is scored twice and a confusion matrix summed over
ranks counts it twice: the two-process mIoU is not the one-process mIoU. (Lightning's own
``UnrepeatedDistributedSamplerWrapper`` avoids this, but only for ``predict``.)

:class:`UnpaddedDistributedSampler` hands rank ``r`` the indices ``r, r + W, r + 2W, ...``, so
every sample is scored exactly once and ranks may get one sample fewer. Because it subclasses
``DistributedSampler``, Lightning keeps it as it is (``_requires_distributed_sampler`` is false
for a loader whose sampler already is one) and ``use_distributed_sampler`` can stay on.

Uneven per-rank lengths are safe for noisyseg's evaluation: ``test`` runs the bare module (no
collective per batch), and during ``fit`` validation DDP broadcasts buffers only in the first
no-grad forward, which every rank makes as long as each rank gets at least one batch — i.e. the
split holds at least ``world_size`` samples (rejected otherwise). Metrics must be reduced as
sums (torchmetrics' confusion matrix is); a per-rank *mean* such as ``val/loss`` logged with
``sync_dist=True`` is averaged over ranks unweighted, so a rank with one sample fewer weighs
slightly more.

Training loaders keep Lightning's padding sampler: padding there only repeats a few samples.

Wiring: ``DataModule._loader`` (``data/datamodule.py``) passes ``sampler=UnpaddedDistributedSampler(ds)``
to every eval loader under a process group. Loaders are built after Lightning has initialised the
process group, so ``is_dist()`` is true there under DDP. ``tests/ddp`` checks that the two-process
result equals the one-process one, and that Lightning's own sampler would not.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized

from torch.utils.data import DistributedSampler

from noisyseg.distributed import rank as current_rank
from noisyseg.distributed import world_size as current_world_size

__all__ = ["UnpaddedDistributedSampler"]


class UnpaddedDistributedSampler(DistributedSampler):
    """Rank ``r`` of ``W`` gets indices ``range(r, len(dataset), W)``: no padding, no shuffle.

    Without a process group it yields every index in order (``W = 1``), so a loader built with it
    works unchanged in one process.

    Args:
        dataset: a sized dataset.
        num_replicas: W, default the process group's world size (1 without a group).
        rank: this process's rank, default the process group's rank (0 without a group).

    Raises:
        ValueError: ``rank`` outside ``[0, num_replicas)``, or fewer samples than processes (a rank
            without a batch would leave the others waiting in DDP's first buffer broadcast).
    """

    def __init__(self, dataset: Sized, num_replicas: int | None = None, rank: int | None = None) -> None:
        w = current_world_size() if num_replicas is None else int(num_replicas)
        r = current_rank() if rank is None else int(rank)
        if w < 1 or not 0 <= r < w:
            raise ValueError(f"rank={r} must lie in [0, num_replicas={w}) and num_replicas >= 1")
        n = len(dataset)
        if n < w:
            raise ValueError(
                f"the evaluation split has {n} sample(s) but there are {w} processes; every process "
                f"needs at least one sample (use fewer devices or a larger split)"
            )
        # the parent only stores its arguments when num_replicas and rank are given (no group needed)
        super().__init__(dataset, num_replicas=w, rank=r, shuffle=False, drop_last=False)
        self.num_samples = len(range(r, n, w))  # ceil((n - r) / w): ranks differ by at most one
        self.total_size = n  # the whole split, not padded to a multiple of W

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.total_size, self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples
