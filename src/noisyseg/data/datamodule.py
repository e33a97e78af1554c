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
"""

from __future__ import annotations

from typing import Any

import lightning as L
from torch.utils.data import DataLoader, Dataset

from noisyseg.data.sample import collate
from noisyseg.data.samplers import UnpaddedDistributedSampler
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
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        self.train_set, self.val_set, self.test_set = train, val, test
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.drop_last = drop_last

    def _loader(self, ds: Dataset | None, name: str, train: bool) -> DataLoader:
        if ds is None:
            raise ValueError(f"no {name} dataset was configured (data.init_args.{name})")
        if len(ds) == 0:  # type: ignore[arg-type]
            raise ValueError(f"the {name} dataset {type(ds).__name__} is empty")
        # under DDP, evaluation splits without padding so every sample is scored exactly once
        sampler = UnpaddedDistributedSampler(ds) if not train and is_dist() else None
        return DataLoader(
            ds,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
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
