"""Labels made on the fly for the georeferenced windows of a :class:`RasterSegmentation`.

Users rarely hold masks aligned pixel for pixel with their images: they hold a land-cover product
on its own grid or vector footprints. :class:`GeoLabels` is the shared part of the datasets that
turn those into masks (:class:`~noisyseg.data.products.ProductLabels`,
:class:`~noisyseg.data.vector.VectorLabels`): it keeps the wrapped imagery's windows, resampling,
normalisation and optional clean masks, works out each sample's pixel grid in the image CRS
(:func:`window_grid`), asks the subclass for the labels on that grid, and marks image no-data and
padding :data:`~noisyseg.data.loading.IGNORE_INDEX`.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import numpy as np
from affine import Affine
from rasterio.coords import BoundingBox
from rasterio.crs import CRS
from rasterio.windows import Window
from torch.utils.data import Dataset

from noisyseg.data.io import image_resampling, open_raster, read_sources, valid_pixels
from noisyseg.data.raster import RasterSegmentation
from noisyseg.data.loading import IGNORE_INDEX, IMAGE, MASK, META, EpochIndex, Sample, make_sample, pad_to


@dataclass(frozen=True)
class ImageGeo:
    """What :class:`GeoLabels` needs to know of one image, read once from its first file."""

    path: str
    crs: CRS
    transform: Affine  # native pixel -> image CRS
    bounds: BoundingBox  # in the image CRS
    float_dtype: bool
    nodata: float | None  # the file's own


@dataclass(frozen=True)
class WindowGrid:
    """The output pixel grid of one sample, before padding.

    Attributes:
        image: index of the image in the wrapped dataset.
        crs: the image CRS.
        transform: output pixel ``(col, row)`` -> image CRS (native transform x window offset x
            the resampling scale).
        shape: ``(h, w)`` output pixels of the window.
        valid: ``[h, w]`` bool, False where the image is no-data.
    """

    image: int
    crs: CRS
    transform: Affine
    shape: tuple[int, int]
    valid: np.ndarray


def read_image_geo(path: str) -> ImageGeo:
    """CRS, transform, bounds, dtype kind and no-data of one raster (metadata only).

    Raises:
        ValueError: the raster has no CRS (names the file).
    """
    with open_raster(path) as src:
        if src.crs is None:
            raise ValueError(f"image {path} has no CRS: labels on another grid cannot be placed on it "
                             f"(georeference it, e.g. gdal_edit.py -a_srs EPSG:XXXX)")
        return ImageGeo(path, src.crs, src.transform, src.bounds, np.dtype(src.dtypes[0]).kind == "f",
                        src.nodata)


def window_grid(dataset: RasterSegmentation, geo: ImageGeo, image: int, meta: dict[str, Any]) -> WindowGrid:
    """The pixel grid and valid pixels of a sample of ``dataset`` (from its ``meta``).

    ``meta["native_window"]`` is the region of the file read and ``meta["window"]`` its output size,
    so one output pixel spans ``native / output`` native pixels on each axis (1 at ``resample=1``).
    The image no-data test is :func:`~noisyseg.data.io.valid_pixels`, as the dataset's own; the
    image is read again for it only when it can hold no-data (a no-data value, or float bands).
    """
    _, _, h, w = (int(v) for v in meta["window"])
    nr, nc, nh, nw = (float(v) for v in meta["native_window"])
    src_win = Window(nc, nr, nw, nh)
    transform = geo.transform @ Affine.translation(nc, nr) @ Affine.scale(nw / w, nh / h)
    nodata = _image_nodata(dataset, geo, image)
    if nodata is None and not geo.float_dtype:
        valid = np.ones((h, w), bool)
    else:
        paths = dataset.images[image]
        shape = None if dataset.resample == 1 else (h, w)
        with ExitStack() as stack:
            srcs = [stack.enter_context(open_raster(p)) for p in paths]
            raw = read_sources(srcs, paths, src_win, dataset.band_indexes, shape,
                               image_resampling(dataset.resample))  # [C, h, w]
        valid = valid_pixels(raw, nodata)
    return WindowGrid(image, geo.crs, transform, (h, w), valid)


def _image_nodata(dataset: RasterSegmentation, geo: ImageGeo, image: int) -> float | None:
    """The no-data value ``dataset`` uses for an image: its override, else the file's."""
    if dataset.nodata is not None:  # validated datasets list it per image
        return dataset.nodata[image]
    return geo.nodata if dataset.nodata_override is None else dataset.nodata_override


class GeoLabels(Dataset):
    """Base of datasets whose ``mask`` is made for each image window from georeferenced labels.

    A sample is the wrapped dataset's sample with ``mask`` replaced by :meth:`labels` on the
    window's grid (image no-data and padding: IGNORE_INDEX); the wrapped ``mask``, when the
    imagery has clean masks configured (its ``masks``), becomes ``clean_mask``. ``meta`` keeps the
    wrapped keys, with ``mask_source`` naming the label file and ``clean_mask_source`` the clean
    mask (``None`` without one). Every image is opened once in ``__init__`` for its CRS and bounds.

    Args:
        dataset: the imagery (from YAML: a nested ``class_path`` / ``init_args``).
        labels_path: the label file, for messages and ``meta``.

    Raises:
        ValueError: ``dataset`` is not a RasterSegmentation, or an image has no CRS (named).
    """

    def __init__(self, dataset: RasterSegmentation, labels_path: str) -> None:
        if not isinstance(dataset, RasterSegmentation):
            raise ValueError(f"dataset must be a RasterSegmentation (georeferenced imagery), got "
                             f"{type(dataset).__name__}")
        self.dataset, self.labels_path = dataset, str(labels_path)
        self.own_stats: dict[str, Any] = {}  # counts this wrapper adds to the imagery's ``stats``
        self.geo = [read_image_geo(dataset.images[i][0]) for i in range(len(dataset.images))]
        self._samples = np.arange(len(dataset), dtype=np.int64)  # [N] wrapped sample per sample
        self._image_of = np.asarray([i for i, _ in dataset.windows], np.int64)  # [N] image per sample

    def keep_images(self, keep: np.ndarray) -> None:
        """Drop the samples of images where ``keep`` (``[n images]`` bool) is False."""
        self._samples = self._samples[keep[self._image_of[self._samples]]]

    def labels(self, grid: WindowGrid) -> np.ndarray:
        """``[h, w]`` int64 class ids on ``grid`` (IGNORE_INDEX where unknown); subclasses say how."""
        raise NotImplementedError

    # ----------------------------------------------------------- what wrappers and splits read
    @property
    def normalization(self) -> dict[str, Any] | None:
        """The imagery's per-band statistics."""
        return self.dataset.normalization

    @property
    def stats(self) -> dict[str, Any]:
        """The imagery's indexing counts, with this dataset's own (``own_stats``)."""
        return {**self.dataset.stats, **self.own_stats}

    def sources(self) -> list[str]:
        """Per sample, its image (``meta["source"]``), without reading pixels."""
        inner = self.dataset.sources()
        return [inner[k] for k in self._samples.tolist()]

    def __len__(self) -> int:
        return len(self._samples)

    def __getitem__(self, index: int) -> Sample:
        """Sample ``index``: the imagery's image ``[C, P, P]``, ``mask`` ``[P, P]`` from the labels."""
        k = int(self._samples[int(index)])
        sample = self.dataset[EpochIndex.carry(index, k)]
        i = int(self._image_of[k])
        meta = dict(sample[META])
        grid = window_grid(self.dataset, self.geo[i], i, meta)
        labels = np.asarray(self.labels(grid), np.int64)  # [h, w]
        labels[~grid.valid] = IGNORE_INDEX
        (labels,) = pad_to(tuple(sample[IMAGE].shape[-2:]), labels)  # as the imagery pads
        meta["clean_mask_source"] = meta.pop("mask_source", None)
        meta["mask_source"] = self.labels_path
        return make_sample(sample[IMAGE], labels, clean_mask=sample.get(MASK), meta=meta)

