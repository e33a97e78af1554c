"""Noisy labels from a land-cover product raster on its own grid (CRS, resolution, extent).

:class:`ProductLabels` pairs the windows of a :class:`~noisyseg.data.raster.RasterSegmentation`
with ONE product raster (ESA WorldCover, Dynamic World, Esri LULC, NLCD or the user's own), warped
on the fly onto each window's pixel grid by nearest neighbour with GDAL's warper
(``rasterio.warp.reproject``, reading only the product region under the window), then mapped from
product codes to the user's classes by a table (:data:`PRODUCT_TABLES`, :func:`class_lookup`).
Like torchgeo's ``RasterDataset`` intersected with a ``GeoDataset`` of labels, but without a spatial
index: the imagery's own windows drive the reads.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.warp import reproject, transform_bounds

from noisyseg.data.georef import GeoLabels, WindowGrid
from noisyseg.data.io import open_raster
from noisyseg.data.raster import RasterSegmentation
from noisyseg.data.loading import IGNORE_INDEX

# ------------------------------------------------------------------------------- class tables
# Official product codes -> class names. Names match case-insensitively in ``classes``.

WORLDCOVER: dict[int, str] = {
    # ESA WorldCover 10 m v100 (2020) / v200 (2021), Product User Manual (Zanaga et al. 2021, 2022),
    # "Map" band legend; no-data 0.
    10: "tree cover", 20: "shrubland", 30: "grassland", 40: "cropland", 50: "built-up",
    60: "bare / sparse vegetation", 70: "snow and ice", 80: "permanent water bodies",
    90: "herbaceous wetland", 95: "mangroves", 100: "moss and lichen",
}
DYNAMIC_WORLD: dict[int, str] = {
    # Dynamic World V1 "label" band (Brown et al. 2022, Scientific Data 9:251; Earth Engine
    # catalogue GOOGLE/DYNAMICWORLD/V1). Code 0 is water, so no-data must be given explicitly.
    0: "water", 1: "trees", 2: "grass", 3: "flooded_vegetation", 4: "crops", 5: "shrub_and_scrub",
    6: "built", 7: "bare", 8: "snow_and_ice",
}
ESRI_LULC: dict[int, str] = {
    # Esri / Impact Observatory Sentinel-2 10 m Land Use/Land Cover time series 2017- (Karra et al.
    # 2021, IGARSS); 3 (grass) and 6 (scrub) of the 2020 v1 map are merged into 11 (rangeland);
    # no-data 0. Clouds (10) is a code, not a land cover: map it to "ignore" in ``classes``.
    1: "water", 2: "trees", 4: "flooded vegetation", 5: "crops", 7: "built area", 8: "bare ground",
    9: "snow/ice", 10: "clouds", 11: "rangeland",
}
NLCD: dict[int, str] = {
    # USGS National Land Cover Database legend (Homer et al. 2020, ISPRS J.; MRLC NLCD class
    # legend); 51, 72, 73, 74 occur in Alaska only.
    11: "open water", 12: "perennial ice/snow", 21: "developed, open space",
    22: "developed, low intensity", 23: "developed, medium intensity", 24: "developed, high intensity",
    31: "barren land", 41: "deciduous forest", 42: "evergreen forest", 43: "mixed forest",
    51: "dwarf scrub", 52: "shrub/scrub", 71: "grassland/herbaceous", 72: "sedge/herbaceous",
    73: "lichens", 74: "moss", 81: "pasture/hay", 82: "cultivated crops", 90: "woody wetlands",
    95: "emergent herbaceous wetlands",
}
PRODUCT_TABLES: dict[str, dict[int, str]] = {
    "worldcover": WORLDCOVER, "dynamic_world": DYNAMIC_WORLD, "esri_lulc": ESRI_LULC, "nlcd": NLCD,
}
"""The shipped tables by name (``ProductLabels(table=...)``)."""

NO_OVERLAP = ("error", "skip")


def product_table(table: str | dict[Any, str]) -> dict[int, str]:
    """A shipped table by name, or the user's own ``{code: name}`` checked (YAML keys may be strings).

    Raises:
        ValueError: unknown name (lists the valid ones), or a code that is not an integer >= 0.
    """
    if isinstance(table, str):
        if table.lower() not in PRODUCT_TABLES:
            raise ValueError(f"unknown product table {table!r}; valid: {sorted(PRODUCT_TABLES)} or a "
                             f"{{code: name}} mapping")
        return dict(PRODUCT_TABLES[table.lower()])
    out: dict[int, str] = {}
    for code, name in dict(table).items():
        c = _as_code(code)
        if c is None:
            raise ValueError(f"product table code {code!r} ({name!r}) must be an integer >= 0")
        out[c] = str(name)
    if not out:
        raise ValueError("the product table is empty")
    return out


def class_lookup(
    table: dict[int, str], classes: dict[Any, int | str] | None = None, other: int | str = "ignore"
) -> dict[int, int]:
    """Product code -> class id: one class per table entry, or the user's (coarser) classes.

    Args:
        table: ``{code: name}`` (:func:`product_table`).
        classes: ``None``: the table's codes in ascending order become classes ``0..K-1``. Else
            ``{code or name: class id or "ignore"}``, e.g. ``{"built-up": 1}`` with ``other=0``
            for building vs rest; several codes may share a class.
        other: the class of table codes ``classes`` does not name (``"ignore"``: IGNORE_INDEX).
            Codes outside the table are always IGNORE_INDEX.

    Raises:
        ValueError: a key is neither a table code nor a table name (lists the names), or a target
            is not an integer in ``[0, 255)`` or ``"ignore"``.
    """
    if classes is None:
        return {code: k for k, code in enumerate(sorted(table))}
    by_name = {name.lower(): code for code, name in table.items()}
    default = _as_class(other, "other")
    out = {code: default for code in table}
    for key, target in classes.items():
        code = _as_code(key)
        if code is None:
            code = by_name.get(str(key).lower())
        if code is None or code not in table:
            raise ValueError(f"classes key {key!r} is not a code or name of the product table; valid "
                             f"names: {sorted(by_name)}; codes: {sorted(table)}")
        out[code] = _as_class(target, f"classes[{key!r}]")
    return out


def map_codes(codes: np.ndarray, lookup: dict[int, int]) -> np.ndarray:
    """``[h, w]`` product codes -> int64 class ids; codes missing from ``lookup`` -> IGNORE_INDEX."""
    keys = np.asarray(sorted(lookup), np.int64)  # [K]
    values = np.asarray([lookup[k] for k in keys.tolist()], np.int64)  # [K]
    pos = np.clip(np.searchsorted(keys, codes), 0, len(keys) - 1)  # [h, w]
    return np.where(keys[pos] == codes, values[pos], IGNORE_INDEX)


def _as_code(value: Any) -> int | None:
    """An integer code >= 0 from an int or a digit string (YAML keys), else ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, np.integer)) and value >= 0:
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _as_class(value: Any, what: str) -> int:
    if isinstance(value, str) and value.lower() == "ignore":
        return IGNORE_INDEX
    c = _as_code(value)
    if c is None or c >= IGNORE_INDEX:
        raise ValueError(f"{what}={value!r} must be a class id in [0, {IGNORE_INDEX}) or 'ignore'")
    return c


# ------------------------------------------------------------------------------------ dataset
class ProductLabels(GeoLabels):
    """Imagery windows with labels warped from one land-cover product raster.

    For each sample, the product is reprojected onto the window's output pixel grid (image CRS,
    window transform, resampling included) by nearest neighbour -- every pixel takes the code of
    the product pixel under its centre, so codes stay exact -- and mapped to classes. IGNORE_INDEX:
    pixels outside the product, product no-data, codes not in the table (or mapped to
    ``"ignore"``), image no-data, and padding. A product coarser than the imagery gives blocky
    labels: the noise such a product brings.

    An image whose footprint does not intersect the product's at all is an error by default (a
    wrong CRS or product tile is the usual cause); ``no_overlap="skip"`` drops its samples with a
    warning that counts and names them (``stats["no_overlap"]``). Windows of an overlapping image
    that fall outside the product are kept with all-IGNORE masks.

    Args:
        dataset: the imagery, a :class:`~noisyseg.data.raster.RasterSegmentation` (its ``masks``,
            when given, are the clean masks: sample ``clean_mask``).
        product: the product raster (any CRS GDAL knows; band 1 holds the codes).
        table: a shipped table name (:data:`PRODUCT_TABLES`: ``worldcover``, ``dynamic_world``,
            ``esri_lulc``, ``nlcd``) or the user's own ``{code: name}``.
        classes: product code or name -> class id / ``"ignore"`` (:func:`class_lookup`); ``None``:
            one class per table entry, in code order.
        other: class of the table codes ``classes`` leaves out (``"ignore"`` or an id).
        product_nodata: the product's no-data code (``None``: the file's own).
        no_overlap: ``"error"`` or ``"skip"`` (see above).
        root: folder a relative ``product`` path is under.

    Raises:
        ValueError: unknown table or bad mapping; the product or an image has no CRS; an image does
            not overlap the product with ``no_overlap="error"`` (files named).
        OSError: the product cannot be read (named).

    Attributes:
        lookup: product code -> class id.
        num_classes: the number of class ids (largest id + 1).
        class_names: per class id its product name (``classes=None`` only, else ``None``).
    """

    def __init__(
        self,
        dataset: RasterSegmentation,
        product: str,
        table: str | dict[Any, str] = "worldcover",
        classes: dict[Any, int | str] | None = None,
        other: int | str = "ignore",
        product_nodata: float | None = None,
        no_overlap: str = "error",
        root: str = ".",
    ) -> None:
        if no_overlap not in NO_OVERLAP:
            raise ValueError(f"no_overlap={no_overlap!r}; valid: {NO_OVERLAP}")
        codes = product_table(table)
        self.lookup = class_lookup(codes, classes, other)
        ids = [c for c in self.lookup.values() if c != IGNORE_INDEX]
        if not ids:
            raise ValueError(f"classes={classes!r} with other={other!r} maps every product code to 'ignore'")
        self.num_classes = max(ids) + 1
        self.class_names = [codes[c] for c in sorted(codes)] if classes is None else None
        path = str(Path(root) / product)  # an absolute product path stays as it is
        super().__init__(dataset, path)
        with open_raster(path) as src:
            if src.crs is None:
                raise ValueError(f"product {path} has no CRS: it cannot be warped onto the images")
            self.product_crs, bounds = src.crs, src.bounds
            self.product_nodata = src.nodata if product_nodata is None else product_nodata
        self._check_overlap(bounds, no_overlap)

    def _check_overlap(self, bounds: rasterio.coords.BoundingBox, mode: str) -> None:
        """Raise or drop (``mode``) the images whose footprint misses the product's."""
        keep = np.ones(len(self.geo), bool)
        for i, geo in enumerate(self.geo):
            left, bottom, right, top = transform_bounds(geo.crs, self.product_crs, *geo.bounds)
            keep[i] = left < bounds.right and right > bounds.left and bottom < bounds.top and top > bounds.bottom
        missing = [self.geo[i].path for i in np.flatnonzero(~keep)]
        self.own_stats["no_overlap"] = len(missing)
        if not missing:
            return
        if mode == "error" or keep.sum() == 0:
            raise ValueError(
                f"{len(missing)} image(s) do not overlap product {self.labels_path} "
                f"({self.product_crs}, bounds {tuple(round(v, 6) for v in bounds)}): {missing[:5]}; check "
                f"the CRSs and the product tile" + ("" if mode == "skip" else " (no_overlap='skip' drops them)"))
        self.keep_images(keep)
        warnings.warn(f"dropped the samples of {len(missing)} image(s) outside product {self.labels_path}: "
                      f"{missing[:5]}", stacklevel=3)

    def labels(self, grid: WindowGrid) -> np.ndarray:
        """``[h, w]`` class ids: the product warped onto ``grid`` (nearest), mapped by ``lookup``."""
        codes = np.full(grid.shape, -1, np.int32)  # -1: outside the product (tables hold codes >= 0)
        with open_raster(self.labels_path) as src:
            reproject(
                rasterio.band(src, 1), codes, src_transform=src.transform, src_crs=src.crs,
                src_nodata=self.product_nodata, dst_transform=grid.transform, dst_crs=grid.crs,
                dst_nodata=-1, init_dest_nodata=True, resampling=Resampling.nearest,
            )
        return map_codes(codes, self.lookup)  # [h, w]; product no-data was never written: -1
