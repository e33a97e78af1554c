"""Keep decoded samples in memory: real tiles are decoded, resampled and corrupted once per run.

A tiny real dataset (a few hundred crops) is read thousands of times by a fixed-steps training
loop: each read opens a GeoTIFF or decodes a whole 1024 px PNG, resamples it and, for noisy
labels, relabels every building (``ndimage`` per object) -- tens of ms a sample, far more than a
training step's share. Samples that do not depend on the epoch are the same every time, so
:class:`InMemory` keeps each one after its first read (per process: a loader worker keeps its
own).

Not for datasets that draw per epoch (random pairings, :class:`~noisyseg.data.vts.VTSPairs`):
they say so with ``draws_per_epoch = True`` and are refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch.utils.data import Dataset

if TYPE_CHECKING:  # loading (the DataModule) imports this module
    from noisyseg.data.loading import Sample


class InMemory(Dataset):
    """Wrap ``dataset`` so each sample is read once and then served from memory.

    Args:
        dataset: a dataset whose samples do not depend on the epoch.

    Raises:
        ValueError: the dataset (or one it wraps, through ``.dataset``) draws per epoch.
    """

    def __init__(self, dataset: Dataset) -> None:
        inner: Any = dataset
        while inner is not None:
            if getattr(inner, "draws_per_epoch", False):
                raise ValueError(f"{type(inner).__name__} draws new samples every epoch (random pairing); "
                                 f"caching would freeze epoch 0's draw: set cache: false")
            inner = getattr(inner, "dataset", None)
        self.dataset = dataset
        self._samples: dict[int, Sample] = {}

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Sample:
        key = int(index)
        if key not in self._samples:
            self._samples[key] = self.dataset[key]
        return self._samples[key]

    def __getattr__(self, name: str) -> Any:  # normalization, num_classes, stats, sources ... of the wrapped set
        if name in ("dataset", "_samples"):
            raise AttributeError(name)
        return getattr(self.dataset, name)
