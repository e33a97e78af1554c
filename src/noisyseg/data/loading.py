"""From datasets to batches: the sample contract, the samplers and the one DataModule.

**The sample contract.** One dict that every dataset returns and every transform takes. Keys
(constants below, never string literals elsewhere):

* ``image``        float32 ``[C, H, W]`` — the (first) view, any band count.
* ``mask``         int64 ``[H, W]`` — the training label, possibly noisy.
* ``clean_mask``   int64 ``[H, W]`` — optional noise-free label (for evaluation / analysis).
* ``image2``       float32 ``[C, H, W]`` — optional second view / temporal partner.
* ``mask2``        int64 ``[H, W]`` — optional label of ``image2`` (noise-free, for dense losses).
* ``noisy_pair``   bool scalar tensor — optional: the pair ``(image, image2)`` is a noisy positive.
* ``change_mask``  int64 ``[H, W]`` — optional change label of a temporal pair (1 changed, 0 not).
* ``meta``         dict of plain Python values (ids, paths, noise rates...). Collated as lists.

Pixels whose label is unknown (no-data, unlabelled, ``un-classified``) carry :data:`IGNORE_INDEX`.
:func:`make_sample` builds a sample and converts dtypes once; :func:`collate` stacks samples into a
batch (``meta`` stays a list of dicts). The array steps every dataset takes to meet the contract
live here too: :func:`normalize` (per-band mean / std, the ``normalization`` a dataset records),
:func:`remap_mask` (raw mask values to class ids), :func:`pad_to` (a raster smaller than the patch:
images 0, masks IGNORE_INDEX), and :func:`groups_of` (per sample, the tile it was cut from).

**Training order: :class:`EpochSampler`.** Random pairings and per-load noise (the noisy positive
pairs of Gerard & Sullivan are "redrawn each time an image is loaded") must differ between epochs
and be reproducible. Telling the *dataset* the epoch does not work with loader workers: each worker
holds its own copy of the dataset, made once when persistent workers start, so an epoch set later
in the main process never reaches them (with 2 workers the draws of epochs 0, 1 and 2 would be
identical). What does reach every worker is the *index*: Lightning calls the sampler's
``set_epoch`` before each training epoch (``_set_sampler_epoch``, in the main process), and the
sampler yields :class:`EpochIndex` values -- ints that carry the epoch -- which the loader pickles
to whichever worker loads the sample. A dataset reads it with :func:`epoch_of`, so a draw is a pure
function of (seed, epoch, index) with 0 or N workers, persistent or not. A wrapper dataset that
maps indices (a subset, a concatenation) keeps the epoch with :meth:`EpochIndex.carry`.

Each epoch the sampler draws a permutation (or, with ``replacement``, uniform draws) of the dataset
from a generator seeded by ``(seed, epoch)``, ``num_samples`` long in total (default: the dataset
size; without replacement and more samples than the dataset, whole permutations are concatenated),
padded by wrapping around to a multiple of the world size; rank ``r`` of ``W`` takes positions
``r, r + W, ...``. Every rank therefore gets the same number of samples, the ranks' shares are
disjoint (up to the padding), and their union is the one-process epoch. It subclasses
:class:`~torch.utils.data.DistributedSampler` so that Lightning keeps it under DDP instead of
wrapping it, and calls :meth:`~EpochSampler.set_epoch` on it before every training epoch.

**Evaluation: :class:`UnpaddedDistributedSampler`.** Lightning gives every val/test loader a
``torch.utils.data.DistributedSampler(shuffle=False)``. That sampler pads the index list to a
multiple of the world size by repeating its first indices, so with 9 test images on 2 processes
image 0 is scored twice and a confusion matrix summed over ranks counts it twice: the two-process
mIoU is not the one-process mIoU. (Lightning's own ``UnrepeatedDistributedSamplerWrapper`` avoids
this, but only for ``predict``.) :class:`UnpaddedDistributedSampler` hands rank ``r`` the indices
``r, r + W, r + 2W, ...``, so every sample is scored exactly once and ranks may get one sample
fewer. Because it subclasses ``DistributedSampler``, Lightning keeps it as it is
(``_requires_distributed_sampler`` is false for a loader whose sampler already is one) and
``use_distributed_sampler`` can stay on.

Uneven per-rank lengths are safe for noisyseg's evaluation: ``test`` runs the bare module (no
collective per batch), and during ``fit`` validation DDP broadcasts buffers only in the first
no-grad forward, which every rank makes as long as each rank gets at least one batch — i.e. the
split holds at least ``world_size`` samples (rejected otherwise). Metrics must be reduced as sums
(torchmetrics' confusion matrix is); a per-rank *mean* such as ``val/loss`` logged with
``sync_dist=True`` is averaged over ranks unweighted, so a rank with one sample fewer weighs
slightly more. Loaders are built after Lightning has initialised the process group, so
``is_dist()`` is true there under DDP; ``tests/ddp`` checks that the two-process result equals the
one-process one, and that Lightning's own sampler would not.

**The DataModule.** Configs name the datasets with ``class_path``/``init_args``, so any dataset
that returns the sample contract trains through the same CLI::

    data:
      class_path: noisyseg.data.DataModule
      init_args:
        train: {class_path: noisyseg.data.VTSSegmentation, init_args: {split: train, size: 64}}
        val:   {class_path: noisyseg.data.VTSSegmentation, init_args: {split: val, size: 32}}
        batch_size: 16

Augmentation is not done here but batched on the device by the task (:mod:`noisyseg.transforms`),
which is faster on the CPU than per-sample transforms in workers. The training loader draws with
:class:`EpochSampler`; ``replacement`` and ``samples_per_epoch`` make an epoch a fixed number of
draws, for datasets of a few images. A streaming source (one with a ``dataloader`` method,
:class:`~noisyseg.data.shards.StreamingShards`) shuffles and splits itself. When a fit starts and
the training samples carry both a (noisy) ``mask`` and the ``clean_mask``, the DataModule measures
their agreement (:func:`~noisyseg.data.label_noise.dataset_agreement`) and logs it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sized
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from noisyseg.data.cache import InMemory
from noisyseg.runtime import is_dist
from noisyseg.runtime import rank as current_rank
from noisyseg.runtime import world_size as current_world_size

IGNORE_INDEX: int = 255
"""Label of pixels that no loss or metric counts (uint8-friendly, as in xBD/LoveDA tooling)."""

IMAGE = "image"
MASK = "mask"
CLEAN_MASK = "clean_mask"
IMAGE2 = "image2"
MASK2 = "mask2"
NOISY_PAIR = "noisy_pair"
CHANGE_MASK = "change_mask"
META = "meta"

Sample = dict[str, Any]
Array = np.ndarray | torch.Tensor


# ----------------------------------------------------------------------------- the sample contract
def make_sample(image: Array, mask: Array | None = None, *, clean_mask: Array | None = None,
                image2: Array | None = None, mask2: Array | None = None, noisy_pair: bool | None = None,
                change_mask: Array | None = None, meta: dict[str, Any] | None = None) -> Sample:
    """A contract sample (keys and shapes: the module docstring): images float32, masks int64.

    Raises:
        ValueError: when shapes or dtypes break the contract.
    """
    img = _as_image(image, IMAGE)
    out: Sample = {IMAGE: img, META: dict(meta or {})}
    if image2 is not None:
        out[IMAGE2] = _as_image(image2, IMAGE2)
        if out[IMAGE2].shape != img.shape:
            raise ValueError(f"image2 has shape {tuple(out[IMAGE2].shape)} but image has {tuple(img.shape)}")
    for key, m in ((MASK, mask), (CLEAN_MASK, clean_mask), (MASK2, mask2), (CHANGE_MASK, change_mask)):
        if m is not None:
            out[key] = _as_mask(m, img, key)
    if noisy_pair is not None:
        out[NOISY_PAIR] = torch.tensor(bool(noisy_pair))
    return out


def _as_image(x: Array, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.ascontiguousarray(x) if isinstance(x, np.ndarray) else x)
    if t.ndim != 3:
        raise ValueError(f"{name} must be [C, H, W], got shape {tuple(t.shape)}")
    if t.is_complex() or t.dtype == torch.bool:  # a cast would drop the imaginary part silently
        raise ValueError(f"{name} has dtype {t.dtype}; images must be real numbers (int or float bands)")
    return t.to(torch.float32)


def _as_mask(x: Array, image: torch.Tensor, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.ascontiguousarray(x) if isinstance(x, np.ndarray) else x)
    if t.ndim != 2:
        raise ValueError(f"{name} must be [H, W], got shape {tuple(t.shape)}")
    if tuple(t.shape) != tuple(image.shape[-2:]):
        raise ValueError(f"{name} is {tuple(t.shape)} but image is {tuple(image.shape[-2:])}")
    if t.is_complex():
        raise ValueError(f"{name} has dtype {t.dtype}; masks must hold integer class ids")
    if t.is_floating_point() and not bool((t == t.round()).all()):  # NaN fails this too
        bad = t[t != t.round()][:3].tolist()
        raise ValueError(f"{name} is {t.dtype} with non-integer values such as {bad}; masks must hold "
                         f"integer class ids (a resampled or probability mask?)")
    return t.to(torch.int64)


def collate(samples: list[Sample]) -> Sample:
    """Stack tensors, keep ``meta`` as a list of dicts (DataLoader ``collate_fn``).

    Raises:
        ValueError: samples of one batch differ in size (names two by ``meta["source"]``).
    """
    out: Sample = {}
    for key in samples[0]:
        try:
            out[key] = [s.get(META, {}) for s in samples] if key == META else torch.stack([s[key] for s in samples])
        except RuntimeError as err:  # sizes differ (whole tiles of 406x438 and 406x439 px)?
            raise _size_mismatch(samples, key) or err
    return out


def _size_mismatch(samples: list[Sample], key: str) -> ValueError | None:
    """The error naming the first sample and one whose ``key`` differs in size from it; ``None``: none does."""
    odd = next((i for i, s in enumerate(samples) if s[key].shape != samples[0][key].shape), None)

    def size_of(i: int) -> str:  # '<source> is 406x438 (image [3, 406, 438])'
        meta = samples[i].get(META)
        source = meta.get("source", meta.get("id")) if isinstance(meta, dict) else None
        shape = list(samples[i][key].shape)
        return f"{source if source is not None else f'sample {i}'} is {'x'.join(map(str, shape[-2:]))} ({key} {shape})"

    return None if odd is None else ValueError(
        f"samples of one batch differ in size: {size_of(0)} but {size_of(odd)}; set the dataset's patch_size "
        "(equal patches, smaller tiles padded) or tile_size, or batch_size: 1")


def normalize(image: np.ndarray, normalization: dict[str, Any] | None, what: str = "image") -> np.ndarray:
    """float32 ``[C, H, W]``: each band minus ``normalization["mean"]``, divided by its ``"std"`` (a new array).

    Raises:
        ValueError: another band count than ``image`` (names ``what``, its file).
    """
    if normalization is None:  # the image unscaled, as a float32 copy: callers write no-data into it
        return np.array(image, np.float32)
    x = np.asarray(image, np.float32)
    mean = np.asarray(normalization["mean"], np.float32)[:, None, None]  # [C, 1, 1]
    if mean.shape[0] != x.shape[0]:
        raise ValueError(f"normalization has {mean.shape[0]} bands but {what} has {x.shape[0]}")
    return (x - mean) / np.asarray(normalization["std"], np.float32)[:, None, None]


def pad_to(size: int | tuple[int, int] | None, *arrays: np.ndarray | None) -> tuple[np.ndarray | None, ...]:
    """Pad images ``[C, h, w]`` with 0 and masks ``[h, w]`` with IGNORE_INDEX, at the bottom and right.

    Args:
        size: the side to pad to, or ``(height, width)``; ``None``: nothing is padded.
        arrays: images and masks (``None`` entries stay ``None``); an array at least ``size`` on
            both axes is returned as it is.

    Returns:
        The arrays in order, padded.
    """
    if size is None:
        return arrays
    height, width = (size, size) if isinstance(size, int) else size
    out: list[np.ndarray | None] = []
    for x in arrays:
        ph, pw = (0, 0) if x is None else (max(height - x.shape[-2], 0), max(width - x.shape[-1], 0))
        if ph == 0 and pw == 0:
            out.append(x)
        elif x.ndim == 3:  # image: zeros, the mean after normalisation
            out.append(np.pad(x, ((0, 0), (0, ph), (0, pw))))
        else:  # mask: unknown labels
            out.append(np.pad(x, ((0, ph), (0, pw)), constant_values=IGNORE_INDEX))
    return tuple(out)


def remap_mask(
    mask: np.ndarray, remap: dict[Any, Any] | None, unlabelled: int | None = None
) -> np.ndarray:
    """Map raw mask values to class ids; ``'ignore'`` or 255 targets become IGNORE_INDEX.

    Mapping is simultaneous (``{1: 2, 2: 1}`` swaps), read from the raw values; values not in
    ``remap`` keep their id. ``unlabelled`` raw pixels become IGNORE_INDEX whatever ``remap`` says.

    Args:
        mask: ``[H, W]`` raw integer labels.
        remap: ``{src: dst}`` (YAML keys may be strings).
        unlabelled: raw value of "not labelled" pixels (partial labels).

    Raises:
        ValueError: a key or target is not an integer (or ``'ignore'``), or ``mask`` holds
            non-integer values.
    """
    if mask.dtype.kind == "c" or (mask.dtype.kind == "f" and not np.all(mask == np.round(mask))):
        # an int cast would truncate 0.7 to 0 silently (a resampled or probability mask); NaN fails too
        bad = mask[mask != np.round(mask)][:3].tolist() if mask.dtype.kind == "f" else []
        raise ValueError(f"mask of dtype {mask.dtype} has non-integer values such as {bad}; masks must hold "
                         "integer class ids")
    out = mask.astype(np.int64, copy=True)
    for src, dst in (remap or {}).items():
        try:
            s = int(src)
            d = IGNORE_INDEX if str(dst).lower() == "ignore" else int(dst)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"remap entry {src!r}: {dst!r} is invalid; keys and targets must be integers "
                f"(targets may also be 'ignore')"
            ) from err
        out[mask == s] = d
    if unlabelled is not None:
        out[mask == unlabelled] = IGNORE_INDEX
    return out


def groups_of(dataset: Dataset, key: str = "source") -> list[str]:
    """Per sample, its group: ``meta[key]`` as a string.

    With ``key == "source"`` a dataset's ``sources()`` answers without loading pixels
    (:class:`~noisyseg.data.raster.RasterSegmentation`, :class:`~noisyseg.data.xbd.XBDSegmentation`
    and the wrappers have it); otherwise every sample is loaded once for its ``meta``.

    Raises:
        ValueError: a sample has no ``meta[key]`` (names the index and the keys it has).
    """
    n = len(dataset)  # type: ignore[arg-type]
    if key == "source" and callable(getattr(dataset, "sources", None)):
        out = [str(g) for g in dataset.sources()]  # type: ignore[attr-defined]
        if len(out) != n:
            raise ValueError(f"{type(dataset).__name__}.sources() gave {len(out)} names for {n} samples")
        return out
    out = []
    for k in range(n):
        meta = dataset[k].get(META, {})
        if key not in meta:
            raise ValueError(f"{type(dataset).__name__}[{k}] has no meta[{key!r}] to group by "
                             f"(meta keys: {sorted(meta)})")
        out.append(str(meta[key]))
    return out


# ----------------------------------------------------------------------------- samplers
class EpochIndex(int):
    """A dataset index that also carries the training epoch it was drawn for.

    Behaves as the plain ``int`` everywhere (comparison, hashing, numpy and list indexing), so a
    dataset that does not care never notices; one that draws per epoch reads :func:`epoch_of`.
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

    See the module docstring for the draw, the padding and the rank split; it yields
    :class:`EpochIndex` values tagged with the epoch.

    Args:
        dataset: a sized dataset.
        shuffle: random order; ``False`` yields ``0..n-1`` (still tagged with the epoch).
        seed: base seed; ``None`` takes the run's seed (``seed_everything``), read now.
        replacement: draw with replacement (each draw uniform over the dataset).
        num_samples: samples per epoch over all ranks (``None``: the dataset size).
        num_replicas, rank: W and r, default the process group's (1 and 0 without one).

    Raises:
        ValueError: an empty dataset, ``num_samples < 1``, or a rank outside ``[0, W)``.
    """

    def __init__(self, dataset: Sized, shuffle: bool = True, seed: int | None = None, replacement: bool = False,
                 num_samples: int | None = None, num_replicas: int | None = None, rank: int | None = None) -> None:
        if len(dataset) < 1 or (num_samples is not None and num_samples < 1):
            raise ValueError(f"EpochSampler: {len(dataset)} samples, num_samples={num_samples}; both must be >= 1")
        super().__init__(dataset, num_replicas=current_world_size() if num_replicas is None else num_replicas,
                         rank=current_rank() if rank is None else rank, shuffle=shuffle,
                         seed=default_seed() if seed is None else int(seed), drop_last=False)  # checks the rank
        self.replacement = bool(replacement)
        self.epoch_size = len(dataset) if num_samples is None else int(num_samples)  # over all ranks
        self.num_samples = math.ceil(self.epoch_size / self.num_replicas)  # per rank (DistributedSampler's len)
        self.total_size = self.num_samples * self.num_replicas

    def epoch_indices(self, epoch: int) -> torch.Tensor:
        """All ranks' indices of ``epoch`` in draw order, ``[total_size]`` (before the rank split)."""
        n = len(self.dataset)  # type: ignore[arg-type]
        state = np.random.SeedSequence([self.seed, int(epoch)]).generate_state(1, np.uint64)[0]
        g = torch.Generator().manual_seed(int(state) >> 1)  # a 63-bit seed per (seed, epoch)
        if not self.shuffle:
            idx = torch.arange(n)
        elif self.replacement:
            idx = torch.randint(0, n, (self.epoch_size,), generator=g)
        else:  # whole permutations, so no index repeats within one
            idx = torch.cat([torch.randperm(n, generator=g) for _ in range(math.ceil(self.epoch_size / n))])
        idx = idx[: self.epoch_size]  # padded by wrapping so every rank gets num_samples
        return torch.cat([idx, idx.repeat(math.ceil(self.total_size / len(idx)))])[: self.total_size]

    def __iter__(self) -> Iterator[int]:
        mine = self.epoch_indices(self.epoch)[self.rank : self.total_size : self.num_replicas]  # [num_samples]
        return iter([EpochIndex(i, self.epoch) for i in mine.tolist()])


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
        if len(dataset) < w:
            raise ValueError(
                f"the evaluation split has {len(dataset)} sample(s) but there are {w} processes; every process "
                f"needs at least one sample (use fewer devices or a larger split)"
            )
        # the parent checks the rank and stores its arguments (no process group needed when both are given)
        super().__init__(dataset, num_replicas=w, rank=r, shuffle=False, drop_last=False)
        self.num_samples = len(range(r, len(dataset), w))  # ceil((n - r) / w): ranks differ by at most one
        self.total_size = len(dataset)  # the whole split, not padded to a multiple of W

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.total_size, self.num_replicas))


# ----------------------------------------------------------------------------- the DataModule
class DataModule(L.LightningDataModule):
    """Wrap train/val/test datasets in loaders that use the sample-contract collate.

    Args:
        train: training dataset (needed by ``fit``).
        val: validation dataset (optional).
        test: test dataset (needed by ``test``).
        batch_size: samples per batch (per process under DDP).
        num_workers: loader worker processes; 0 keeps generation in the main process.
        eval_batch_size: batch size for val/test (defaults to ``batch_size``).
        drop_last: drop the last incomplete training batch (contrastive queues want fixed sizes).
        replacement: draw training samples with replacement (each draw uniform over the set).
        samples_per_epoch: training samples drawn per epoch over all processes (``None``: the
            dataset size); with ``batch_size`` it fixes the steps per epoch of a tiny dataset.
        seed: seed of the training order and of the epoch tags (``None``: the run's
            ``seed_everything``).
        noise_report: when a fit starts and the training samples carry both a (noisy) ``mask``
            and the ``clean_mask``, measure their agreement on the first this-many samples and log
            it (overall and per class, :func:`~noisyseg.data.label_noise.dataset_agreement`); 0
            turns it off.
        cache: keep every decoded sample in memory after its first read
            (:class:`~noisyseg.data.cache.InMemory`): for small real datasets read many times;
            refused for datasets that draw per epoch.

    Attributes:
        normalization: per-band mean/std of the training data, when the dataset states it.
        label_agreement: the agreement measured when the fit started, else ``None``.
    """

    def __init__(self, train: Dataset | None = None, val: Dataset | None = None, test: Dataset | None = None,
                 batch_size: int = 16, num_workers: int = 0, eval_batch_size: int | None = None,
                 drop_last: bool = False, replacement: bool = False, samples_per_epoch: int | None = None,
                 seed: int | None = None, noise_report: int = 256, cache: bool = False) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        if samples_per_epoch is not None and samples_per_epoch < 1:
            raise ValueError(f"samples_per_epoch={samples_per_epoch} must be >= 1 (or null for the dataset size)")
        if cache:
            train, val, test = (InMemory(d) if d is not None else None for d in (train, val, test))
        self.train_set, self.val_set, self.test_set = train, val, test
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size or batch_size, num_workers
        self.drop_last, self.replacement, self.samples_per_epoch = drop_last, replacement, samples_per_epoch
        self.seed, self.noise_report, self.label_agreement = seed, noise_report, None  # label_agreement: setup("fit")
        self.normalization: dict[str, Any] | None = getattr(train, "normalization", None)

    def setup(self, stage: str) -> None:
        """At ``fit``: log the realised noise of the training labels (when clean ones exist)."""
        ds = self.train_set
        if stage == "fit" and self.noise_report and ds is not None and len(ds) and {MASK, CLEAN_MASK} <= set(ds[0]):
            from noisyseg.data.label_noise import dataset_agreement, format_agreement  # it imports this module

            self.label_agreement = dataset_agreement(ds, getattr(ds, "num_classes", None), max_samples=self.noise_report)
            rank_zero_info(f"training labels: {format_agreement(self.label_agreement, getattr(ds, 'class_names', None))}")

    def _loader(self, ds: Dataset | None, name: str, train: bool) -> DataLoader:
        if ds is None:
            raise ValueError(f"no {name} dataset was configured (data.init_args.{name})")
        if len(ds) == 0:  # type: ignore[arg-type]
            raise ValueError(f"the {name} dataset {type(ds).__name__} is empty")
        batch_size, drop_last = (self.batch_size, self.drop_last) if train else (self.eval_batch_size, False)
        if callable(getattr(type(ds), "dataloader", None)):  # a streaming source shuffles and splits itself
            return ds.dataloader(batch_size=batch_size, num_workers=self.num_workers, drop_last=drop_last,  # type: ignore[attr-defined]
                                 train=train, collate_fn=collate, replacement=train and self.replacement,
                                 num_samples=self.samples_per_epoch if train else None)
        if train:  # order and epoch tags from (seed, epoch); split across DDP ranks by the sampler itself
            sampler = EpochSampler(ds, seed=self.seed, replacement=self.replacement, num_samples=self.samples_per_epoch)
        else:  # under DDP, evaluation splits without padding so every sample is scored exactly once
            sampler = UnpaddedDistributedSampler(ds) if is_dist() else None
        return DataLoader(ds, batch_size, sampler=sampler, drop_last=drop_last, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, collate_fn=collate)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, "train", True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.val_set, "val", False) if self.val_set is not None else []

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, "test", False)
