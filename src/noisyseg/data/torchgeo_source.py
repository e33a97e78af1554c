"""torchgeo datasets as sources: their samples turned into noisyseg's sample contract.

Two kinds of torchgeo dataset (microsoft/torchgeo, ``torchgeo/datasets/geo.py``):

* a ``NonGeoDataset`` (LoveDA, xView2, ...) is indexed by integer and returns a dict with
  ``image`` and usually ``mask``;
* a ``GeoDataset`` (a ``RasterDataset`` over GeoTIFFs, an intersection ``image & mask``, ...) is
  indexed by a spatial query that a ``GeoSampler`` yields; here the sampler's queries are listed
  once, so query ``i`` is sample ``i`` (a ``RandomGeoSampler``'s draws are fixed at that point).

:class:`TorchGeoSource` wraps either as a map-style dataset returning ``image`` float32
``[C, H, W]``, ``mask`` int64 ``[H, W]`` (a ``[1, H, W]`` mask is squeezed; ``remap`` and
``unlabelled`` as in :func:`~noisyseg.data.loading.remap_mask`, so a class that means "no
label" becomes :data:`~noisyseg.data.IGNORE_INDEX`) and ``meta`` (index, dataset name, and for
geo samples the query bounds and CRS). Other keys of the torchgeo sample are dropped. From YAML::

    train:
      class_path: noisyseg.data.TorchGeoSource
      init_args:
        dataset: {class_path: torchgeo.datasets.LoveDA, init_args: {root: data/loveda, split: train}}
        unlabelled: 0          # LoveDA's 0 is no-data

    train:
      class_path: noisyseg.data.TorchGeoSource
      init_args:
        dataset:
          class_path: torchgeo.datasets.IntersectionDataset
          init_args:
            dataset1: {class_path: torchgeo.datasets.RasterDataset, init_args: {paths: data/images}}
            dataset2: {class_path: mypackage.MaskRasters, init_args: {paths: data/masks}}  # is_image = False
        sampler: torchgeo.samplers.GridGeoSampler
        sampler_args: {size: 256, stride: 256}

torchgeo is an optional dependency (``pip install 'noisyseg[torchgeo]'``); only the geo path
needs it installed here (the dataset classes of a config need it anyway).
"""

from __future__ import annotations

import numbers
from typing import Any

import torch
from torch.utils.data import Dataset

from noisyseg.data.loading import Sample, make_sample, normalize, remap_mask

__all__ = ["TorchGeoSource"]

EXTRA = "pip install 'noisyseg[torchgeo]'"


def _geo_classes() -> tuple[type, type] | None:
    """``(GeoDataset, GeoSampler)`` when torchgeo is installed, else ``None``."""
    try:
        from torchgeo.datasets import GeoDataset
        from torchgeo.samplers import GeoSampler
    except ImportError:
        return None
    return GeoDataset, GeoSampler


def _plain(value: Any) -> Any:
    """A bound as a JSON value: numbers as float, timestamps and others as text."""
    if value is None or isinstance(value, (bool, str)):
        return value
    return float(value) if isinstance(value, numbers.Real) else str(value)


def _plain_bounds(query: Any) -> list[list[Any]]:
    """A torchgeo query as ``[[start, stop], ...]`` per axis (x, y, t slices; a BoundingBox: one value each)."""
    return [[_plain(p.start), _plain(p.stop)] if isinstance(p, slice) else [_plain(p)] for p in query]


class TorchGeoSource(Dataset):
    """A torchgeo ``NonGeoDataset``, or a ``GeoDataset`` with a sampler, in the sample contract.

    Args:
        dataset: the torchgeo dataset (any map-style dataset returning a dict with ``image_key``).
        sampler: for a ``GeoDataset``: a ``GeoSampler`` instance, or its class path
            (``torchgeo.samplers.GridGeoSampler``) built as ``cls(dataset, **sampler_args)``.
        sampler_args: keyword arguments of the sampler class (``size``, ``stride``, ``length``...).
        image_key: key of the image in the torchgeo sample.
        mask_key: key of the mask (``None``: image-only samples, e.g. for contrastive pretraining).
        remap: raw mask value -> class (targets may be ``'ignore'``).
        unlabelled: raw mask value of unlabelled / no-data pixels -> IGNORE_INDEX.
        num_classes: classes of the (remapped) masks, exposed as ``num_classes``.
        mean, std: per-band statistics to normalise images with (exposed as ``normalization``).

    Raises:
        ImportError: a sampler is given but torchgeo is not installed (names the extra).
        ValueError: a ``GeoDataset`` without a sampler, a sampler for a non-geo dataset, a sampler
            class path that is not a ``GeoSampler``, a sampler that yields nothing, or
            ``mean``/``std`` of different lengths.
    """

    def __init__(
        self,
        dataset: Dataset,
        sampler: Any = None,
        sampler_args: dict[str, Any] | None = None,
        image_key: str = "image",
        mask_key: str | None = "mask",
        remap: dict[Any, Any] | None = None,
        unlabelled: int | None = None,
        num_classes: int | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
    ) -> None:
        geo = _geo_classes()
        if sampler is not None and geo is None:
            raise ImportError(f"TorchGeoSource with a sampler needs torchgeo: {EXTRA}")
        is_geo = geo is not None and isinstance(dataset, geo[0])
        self.dataset, self.image_key, self.mask_key = dataset, image_key, mask_key
        self.remap, self.unlabelled, self.num_classes = remap, unlabelled, num_classes
        self.queries: list[Any] | None = None
        if is_geo:
            if sampler is None:
                raise ValueError(f"{type(dataset).__name__} is a torchgeo GeoDataset: give a sampler, e.g. "
                                 f"sampler: torchgeo.samplers.GridGeoSampler, sampler_args: {{size: 256}}")
            if isinstance(sampler, str):
                from noisyseg.config import check_class

                sampler = check_class(sampler, (geo[1],))(dataset, **(sampler_args or {}))
            elif sampler_args:
                raise ValueError("sampler_args apply to a sampler class path, not to a sampler instance")
            self.queries = list(sampler)
            if not self.queries:
                raise ValueError(f"the sampler {type(sampler).__name__} yields no query over {type(dataset).__name__} "
                                 f"(bounds {dataset.bounds}); is the patch size larger than the rasters?")
        elif sampler is not None:
            raise ValueError(f"{type(dataset).__name__} is not a torchgeo GeoDataset (indexed by integer): "
                             f"it takes no sampler")
        if (mean is None) != (std is None) or (mean is not None and len(mean) != len(std)):  # type: ignore[arg-type]
            raise ValueError(f"mean {mean} and std {std}: give both, one value per band")
        self.normalization = None if mean is None else {"mean": [float(m) for m in mean],
                                                        "std": [float(s) for s in std]}  # type: ignore[union-attr]

    def __len__(self) -> int:
        return len(self.queries) if self.queries is not None else len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Sample:
        i = int(index)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} samples of {type(self.dataset).__name__}")
        raw = self.dataset[self.queries[i] if self.queries is not None else i]
        if self.image_key not in raw:
            raise KeyError(f"{type(self.dataset).__name__}[{i}] has no {self.image_key!r} (keys: {sorted(raw)})")
        image = torch.as_tensor(raw[self.image_key])  # [C, H, W]
        meta: dict[str, Any] = {"index": i, "source": type(self.dataset).__name__}
        if self.queries is not None:
            meta["bounds"] = _plain_bounds(self.queries[i])
            crs = raw.get("crs")
            if crs is not None:
                meta["crs"] = crs.to_string() if hasattr(crs, "to_string") else str(crs)  # "EPSG:32633", not WKT
        mask = None
        if self.mask_key is not None:
            if self.mask_key not in raw:
                raise KeyError(f"{type(self.dataset).__name__}[{i}] has no {self.mask_key!r} (keys: {sorted(raw)}); "
                               f"set mask_key: null for image-only samples")
            m = torch.as_tensor(raw[self.mask_key])
            if m.ndim == 3 and m.shape[0] == 1:
                m = m[0]  # [1, H, W] -> [H, W]
            mask = remap_mask(m.numpy(), self.remap, self.unlabelled)  # [H, W] int64
        if self.normalization is not None:
            image = normalize(image.numpy(), self.normalization, f"{type(self.dataset).__name__}[{i}]")  # [C, H, W]
        return make_sample(image, mask, meta=meta)
