"""One Lightning DataModule for every dataset: the datasets are handed to it (from YAML).

Configs name the datasets with ``class_path``/``init_args``, so any dataset that returns the
sample contract (:mod:`noisyseg.data.sample`) trains through the same CLI::

    data:
      class_path: noisyseg.data.DataModule
      init_args:
        train: {class_path: noisyseg.data.VTSSegmentation, init_args: {split: train, size: 64}}
        val:   {class_path: noisyseg.data.VTSSegmentation, init_args: {split: val, size: 32}}
        batch_size: 16

Augmentation is not done here but batched on the device by the task
(:mod:`noisyseg.transforms`), which is faster on the CPU than per-sample transforms in workers.

The training loader draws with :class:`~noisyseg.data.samplers.EpochSampler`: its order is a
function of (seed, epoch) and every index it yields carries the epoch, so per-epoch random
pairings reach loader workers (:func:`~noisyseg.data.samplers.epoch_of`). ``replacement`` and
``samples_per_epoch`` make an epoch a fixed number of draws, for datasets of a few images.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset

from noisyseg.data.cache import InMemory
from noisyseg.data.noise_report import dataset_agreement, format_agreement
from noisyseg.data.sample import CLEAN_MASK, MASK, collate
from noisyseg.data.samplers import EpochSampler, UnpaddedDistributedSampler
from noisyseg.distributed import is_dist


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
            it (overall and per class, :mod:`~noisyseg.data.noise_report`); 0 turns it off.
        cache: keep every decoded sample in memory after its first read
            (:class:`~noisyseg.data.cache.InMemory`): for small real datasets read many times;
            refused for datasets that draw per epoch.
    """

    def __init__(
        self,
        train: Dataset | None = None,
        val: Dataset | None = None,
        test: Dataset | None = None,
        batch_size: int = 16,
        num_workers: int = 0,
        eval_batch_size: int | None = None,
        drop_last: bool = False,
        replacement: bool = False,
        samples_per_epoch: int | None = None,
        seed: int | None = None,
        noise_report: int = 256,
        cache: bool = False,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        if samples_per_epoch is not None and samples_per_epoch < 1:
            raise ValueError(f"samples_per_epoch={samples_per_epoch} must be >= 1 (or null for the dataset size)")
        self.replacement, self.samples_per_epoch, self.seed = replacement, samples_per_epoch, seed
        self.noise_report = noise_report
        self.label_agreement: dict[str, Any] | None = None  # set by setup("fit") when measured
        if cache:
            train, val, test = (InMemory(d) if d is not None else None for d in (train, val, test))
        self.train_set, self.val_set, self.test_set = train, val, test
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.drop_last = drop_last

    def setup(self, stage: str) -> None:
        """At ``fit``: log the realised noise of the training labels (when clean ones exist)."""
        if stage != "fit" or not self.noise_report or self.train_set is None or len(self.train_set) == 0:
            return
        first = self.train_set[0]
        if MASK not in first or CLEAN_MASK not in first:
            return
        names = getattr(self.train_set, "class_names", None)
        self.label_agreement = dataset_agreement(self.train_set, getattr(self.train_set, "num_classes", None),
                                                 max_samples=self.noise_report)
        rank_zero_info(f"training labels: {format_agreement(self.label_agreement, names)}")

    def _loader(self, ds: Dataset | None, name: str, train: bool) -> DataLoader:
        if ds is None:
            raise ValueError(f"no {name} dataset was configured (data.init_args.{name})")
        if len(ds) == 0:  # type: ignore[arg-type]
            raise ValueError(f"the {name} dataset {type(ds).__name__} is empty")
        if callable(getattr(type(ds), "dataloader", None)):  # a streaming source (StreamingShards) shuffles and splits itself
            return ds.dataloader(batch_size=self.batch_size if train else self.eval_batch_size,  # type: ignore[attr-defined]
                                 num_workers=self.num_workers, drop_last=train and self.drop_last, train=train,
                                 collate_fn=collate, replacement=train and self.replacement,
                                 num_samples=self.samples_per_epoch if train else None)
        if train:  # order and epoch tags from (seed, epoch); split across DDP ranks by the sampler itself
            sampler = EpochSampler(ds, seed=self.seed, replacement=self.replacement, num_samples=self.samples_per_epoch)
        else:  # under DDP, evaluation splits without padding so every sample is scored exactly once
            sampler = UnpaddedDistributedSampler(ds) if is_dist() else None
        return DataLoader(
            ds,
            batch_size=self.batch_size if train else self.eval_batch_size,
            sampler=sampler,
            drop_last=train and self.drop_last,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, "train", True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.val_set, "val", False) if self.val_set is not None else []

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, "test", False)

    @property
    def normalization(self) -> dict[str, Any] | None:
        """Per-band mean/std of the training data, when the dataset states it."""
        return getattr(self.train_set, "normalization", None)
