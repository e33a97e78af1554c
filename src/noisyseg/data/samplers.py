"""Samplers: per-epoch randomness that reaches loader workers, and unpadded evaluation under DDP.

**Training: :class:`EpochSampler`.** Random pairings and per-load noise (the noisy positive pairs of
Gerard & Sullivan are "redrawn each time an image is loaded") must differ between epochs and be
reproducible. Telling the *dataset* the epoch does not work with loader workers: each worker holds
its own copy of the dataset, made once when persistent workers start, so an epoch set later in the
main process never reaches them (with 2 workers the draws of epochs 0, 1 and 2 would be identical).
What does reach every worker is the *index*: Lightning calls the sampler's ``set_epoch`` before
each training epoch (``_set_sampler_epoch``, in the main process), and the sampler yields
:class:`EpochIndex` values -- ints that carry the epoch -- which the loader pickles to whichever
worker loads the sample. A dataset reads it with :func:`epoch_of`, so a draw is a pure function of
(seed, epoch, index) with 0 or N workers, persistent or not. The sampler also shuffles with its own
seeded generator (the order is a function of (seed, epoch)), can draw with replacement or a fixed
number of samples per epoch (tiny datasets: fixed steps per epoch), and splits every epoch across
DDP ranks itself, so each rank gets a disjoint share of equal length.

**Evaluation: :class:`UnpaddedDistributedSampler`.**

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

import math
import os
from collections.abc import Iterator, Sized
from typing import Any

import numpy as np
import torch
from torch.utils.data import DistributedSampler

from noisyseg.distributed import rank as current_rank
from noisyseg.distributed import world_size as current_world_size

__all__ = ["EpochIndex", "EpochSampler", "UnpaddedDistributedSampler", "epoch_of"]


class EpochIndex(int):
    """A dataset index that also carries the training epoch it was drawn for.

    Behaves as the plain ``int`` everywhere (comparison, hashing, numpy and list indexing), so a
    dataset that does not care never notices; one that draws per epoch reads :func:`epoch_of`.
    A wrapper dataset that maps indices (a subset, a concatenation) keeps the epoch with
    :meth:`carry`.
    """

    epoch: int

    def __new__(cls, value: int, epoch: int) -> EpochIndex:
        obj = super().__new__(cls, value)
        obj.epoch = int(epoch)
        return obj

    def __reduce__(self) -> tuple[Any, tuple[int, int]]:  # pickled to loader workers
        return (EpochIndex, (int(self), self.epoch))

    def __repr__(self) -> str:
        return f"EpochIndex({int(self)}, epoch={self.epoch})"

    @staticmethod
    def carry(index: int, inner: int) -> int:
        """``inner`` with ``index``'s epoch attached when ``index`` has one (for wrapper datasets)."""
        epoch = getattr(index, "epoch", None)
        return int(inner) if epoch is None else EpochIndex(int(inner), epoch)


def epoch_of(index: int, default: int = 0) -> int:
    """The epoch an index was drawn for (:class:`EpochIndex`), else ``default`` (direct indexing)."""
    return int(getattr(index, "epoch", default))


def default_seed() -> int:
    """The run's seed: what ``seed_everything`` exported (``PL_GLOBAL_SEED``), else 0."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


class EpochSampler(DistributedSampler):
    """Training sampler whose order and yielded indices are pure functions of (seed, epoch).

    Each epoch draws a permutation (or, with ``replacement``, uniform draws) of the dataset from a
    generator seeded by ``(seed, epoch)``, ``num_samples`` long in total (default: the dataset
    size), padded by wrapping around to a multiple of the world size; rank ``r`` of ``W`` takes
    positions ``r, r + W, ...``. Every rank therefore gets the same number of samples and the
    ranks' shares are disjoint (up to the padding), and the union over ranks is the one-process
    epoch. It yields :class:`EpochIndex` values tagged with the epoch.

    It subclasses :class:`~torch.utils.data.DistributedSampler` so that Lightning keeps it under
    DDP instead of wrapping it (it splits across ranks itself) and calls :meth:`set_epoch` on it
    before every training epoch.

    Args:
        dataset: a sized dataset.
        shuffle: random order; ``False`` yields ``0..n-1`` (still tagged with the epoch).
        seed: base seed; ``None`` takes the run's seed (``seed_everything``), read now.
        replacement: draw with replacement (each draw uniform over the dataset).
        num_samples: samples per epoch over all ranks (``None``: the dataset size). With
            ``replacement=False`` and more samples than the dataset, whole permutations are
            concatenated.
        num_replicas, rank: W and r, default the process group's (1 and 0 without one).

    Raises:
        ValueError: an empty dataset, ``num_samples < 1``, or a rank outside ``[0, W)``.
    """

    def __init__(
        self,
        dataset: Sized,
        shuffle: bool = True,
        seed: int | None = None,
        replacement: bool = False,
        num_samples: int | None = None,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        w = current_world_size() if num_replicas is None else int(num_replicas)
        r = current_rank() if rank is None else int(rank)
        if w < 1 or not 0 <= r < w:
            raise ValueError(f"rank={r} must lie in [0, num_replicas={w}) and num_replicas >= 1")
        n = len(dataset)
        if n < 1:
            raise ValueError("EpochSampler got an empty dataset")
        if num_samples is not None and num_samples < 1:
            raise ValueError(f"num_samples={num_samples} must be >= 1 (or null for the dataset size)")
        seed = default_seed() if seed is None else int(seed)
        super().__init__(dataset, num_replicas=w, rank=r, shuffle=shuffle, seed=seed, drop_last=False)
        self.replacement = bool(replacement)
        self.epoch_size = int(num_samples) if num_samples is not None else n  # over all ranks
        self.num_samples = math.ceil(self.epoch_size / w)  # per rank
        self.total_size = self.num_samples * w

    def epoch_indices(self, epoch: int) -> torch.Tensor:
        """All ranks' indices of ``epoch`` in draw order, ``[total_size]`` (before the rank split)."""
        n = len(self.dataset)  # type: ignore[arg-type]
        state = np.random.SeedSequence([self.seed, int(epoch)]).generate_state(1, np.uint64)[0]
        g = torch.Generator().manual_seed(int(state) >> 1)  # a 63-bit seed per (seed, epoch)
        if not self.shuffle:
            idx = torch.arange(n)
        elif self.replacement:
            idx = torch.randint(0, n, (self.epoch_size,), generator=g)
        else:
            rounds = math.ceil(self.epoch_size / n)  # whole permutations, so no index repeats within one
            idx = torch.cat([torch.randperm(n, generator=g) for _ in range(rounds)])
        idx = idx[: self.epoch_size]
        if len(idx) < self.total_size:  # pad by wrapping so every rank gets num_samples
            idx = torch.cat([idx, idx.repeat(math.ceil(self.total_size / len(idx)))])[: self.total_size]
        return idx

    def __iter__(self) -> Iterator[int]:
        mine = self.epoch_indices(self.epoch)[self.rank : self.total_size : self.num_replicas]  # [num_samples]
        return iter([EpochIndex(i, self.epoch) for i in mine.tolist()])

    def __len__(self) -> int:
        return self.num_samples


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
