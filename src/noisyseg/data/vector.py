"""Noisy labels from vector footprints (OSM-like buildings, field boundaries), burnt per window.

:class:`VectorLabels` pairs the windows of a :class:`~noisyseg.data.raster.RasterSegmentation` with
polygons from one vector file: the geometries are transformed to each image CRS
(``rasterio.warp.transform_geom``, once per CRS), and the ones near a window are burnt onto its
output pixel grid with ``rasterio.features.rasterize``. Reading: GeoJSON (``.geojson`` / ``.json``)
with the standard library; GeoPackage, Shapefile and every other OGR format through pyogrio
(fiona when pyogrio is missing).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.features import rasterize
from rasterio.warp import transform_geom

from noisyseg.data.georef import GeoLabels, WindowGrid
from noisyseg.data.raster import RasterSegmentation
from noisyseg.data.loading import IGNORE_INDEX

GEOJSON_SUFFIXES = (".geojson", ".json")
GEOJSON_CRS = "EPSG:4326"
"""RFC 7946 section 4: GeoJSON coordinates are WGS 84 longitude, latitude."""


def read_features(path: str, crs: str | None = None) -> tuple[list[dict[str, Any]], CRS]:
    """The features (``{"geometry", "properties"}``) of a vector file and their CRS.

    Args:
        path: GeoJSON (FeatureCollection, Feature or bare geometry), or any OGR format (pyogrio).
        crs: overrides the file's CRS. GeoJSON without one is EPSG:4326 (RFC 7946); a legacy
            ``"crs": {"properties": {"name": ...}}`` member is honoured.

    Raises:
        ValueError: the file is not GeoJSON and neither pyogrio nor fiona is installed, OGR cannot
            read it, its JSON is not GeoJSON, or the CRS is unknown (file named).
        OSError: the file cannot be read.
    """
    if path.lower().endswith(GEOJSON_SUFFIXES):
        try:
            obj = json.loads(Path(path).read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"vector file {path} is not valid JSON: {err}") from err
        kind = obj.get("type") if isinstance(obj, dict) else None
        if kind == "FeatureCollection":
            feats = obj.get("features") or []
        elif kind == "Feature":
            feats = [obj]
        elif isinstance(kind, str) and "coordinates" in obj or kind == "GeometryCollection":
            feats = [{"geometry": obj, "properties": {}}]
        else:
            raise ValueError(f"vector file {path} is not GeoJSON (top-level type {kind!r})")
        named = ((obj.get("crs") or {}).get("properties") or {}).get("name")
        file_crs = named or GEOJSON_CRS
    else:
        feats, file_crs = _read_ogr(path)
    try:
        out_crs = CRS.from_user_input(crs or file_crs)
    except CRSError as err:
        raise ValueError(f"vector file {path}: unknown CRS {crs or file_crs!r}: {err}") from err
    return [{"geometry": f.get("geometry"), "properties": dict(f.get("properties") or {})} for f in feats], out_crs


def _read_ogr(path: str) -> tuple[list[dict[str, Any]], str | None]:
    """Features and CRS (WKT) of any OGR vector format (GeoPackage, Shapefile, FlatGeobuf, ...).

    Through pyogrio (a dependency: GDAL's vector drivers in a wheel), which returns geometries as WKB
    (decoded by shapely) and attributes as columns; through fiona when pyogrio is missing.

    Raises:
        ValueError: neither library is installed, or OGR cannot read the file (file named).
    """
    try:
        import pyogrio.raw
    except ImportError:
        pyogrio = None
    if pyogrio is not None:
        import shapely
        from shapely.geometry import mapping

        try:
            meta, _, wkb, columns = pyogrio.raw.read(path)
        except Exception as err:  # pyogrio's DataSourceError and friends: one message naming the file
            raise ValueError(f"vector file {path} cannot be read by OGR: {err}") from err
        names = list(meta.get("fields") if meta.get("fields") is not None else [])
        feats = []
        for i, g in enumerate(shapely.from_wkb(wkb) if wkb is not None else []):
            props = {n: (col[i].item() if hasattr(col[i], "item") else col[i]) for n, col in zip(names, columns)}
            feats.append({"geometry": None if g is None else mapping(g), "properties": props})
        return feats, meta.get("crs") or None
    try:
        import fiona
    except ImportError:
        raise ValueError(
            f"vector file {path}: reading {Path(path).suffix or 'this format'} needs pyogrio or fiona, neither "
            f"is installed; supported without them: GeoJSON ({', '.join(GEOJSON_SUFFIXES)}). Install pyogrio, "
            f"or convert: ogr2ogr -f GeoJSON out.geojson {path}") from None
    with fiona.open(path) as src:
        return [dict(getattr(f, "__geo_interface__", f)) for f in src], src.crs_wkt or None


def disk_offsets(radius: float) -> list[tuple[int, int]]:
    """Integer ``(dy, dx)`` with ``dy**2 + dx**2 <= radius**2``: a disk structuring element."""
    r = int(math.floor(abs(radius)))
    return [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if dy * dy + dx * dx <= radius * radius]


def grow(region: np.ndarray, radius: float, pad: int) -> np.ndarray:
    """Dilate (``radius > 0``) or erode (``< 0``) a padded bool region by a disk; crop the pad.

    A pixel is in the dilation when a pixel centre of ``region`` lies within ``radius`` pixels of
    its centre, in the erosion when every pixel centre within ``|radius|`` is in ``region``.

    Args:
        region: ``[h + 2 pad, w + 2 pad]`` bool.
        radius: in pixels.
        pad: ``>= ceil(|radius|)``, so every pixel of the crop sees its whole disk.

    Returns:
        ``[h, w]`` bool.
    """
    h, w = region.shape[0] - 2 * pad, region.shape[1] - 2 * pad
    dilate = radius > 0
    out = np.zeros((h, w), bool) if dilate else np.ones((h, w), bool)
    for dy, dx in disk_offsets(radius):
        shifted = region[pad + dy: pad + dy + h, pad + dx: pad + dx + w]  # [h, w]
        out = out | shifted if dilate else out & shifted
    return out


class VectorLabels(GeoLabels):
    """Imagery windows with labels rasterised from vector footprints.

    Each feature's class comes from ``class_attribute`` (through ``class_values``) or is
    ``burn_class``. A pixel takes a class when its **centre** lies inside a feature of that class
    (GDAL's rule, ``all_touched=False``); ``all_touched=True`` takes every pixel the geometry
    touches (a superset: thin or small features survive, areas grow by up to a pixel). Where
    features of different classes overlap, the higher class id wins, IGNORE_INDEX above all (the
    result does not depend on feature order). Pixels under no feature are ``background``; image
    no-data and padding are IGNORE_INDEX.

    ``buffer_px`` grows (``> 0``) or shrinks (``< 0``) every class region by that many **output
    pixels** (a disk of that radius, :func:`grow`; the region of each class as a whole, so touching
    footprints of one class erode as one), to model labels drawn too generously or too tightly.
    It matches a geometric buffer of the footprints up to half a pixel, and works the same in
    projected and geographic image CRSs. Footprints up to ``buffer_px`` outside a window still
    grow into it (the window is burnt with a margin).

    Args:
        dataset: the imagery, a :class:`~noisyseg.data.raster.RasterSegmentation` (its ``masks``,
            when given, are the clean masks: sample ``clean_mask``).
        footprints: the vector file (:func:`read_features`: GeoJSON, GeoPackage, Shapefile or any OGR format).
        class_attribute: the property holding each feature's class (``None``: ``burn_class``).
        class_values: attribute value -> class id or ``"ignore"`` (values compared as text, so YAML
            ``{1: 2}`` matches ``1`` and ``"1"``); ``None``: the value is the class id.
        burn_class: class of every feature without ``class_attribute``.
        background: class of pixels under no feature (an id or ``"ignore"``).
        unmapped: class of features whose value ``class_values`` lacks, or that lack the attribute:
            ``"ignore"`` (IGNORE_INDEX), ``"skip"`` (not burnt) or an id.
        buffer_px: grow / shrink the class regions by this many output pixels.
        all_touched: burn every pixel a geometry touches instead of the pixel-centre rule.
        crs: the footprints' CRS when the file states none or a wrong one.
        root: folder a relative ``footprints`` path is under.

    Raises:
        ValueError: bad options; no features; a class value that is not an id; an image without
            CRS; or no image intersects the footprints at all (a CRS mix-up; files named).

    Attributes:
        features: ``[(geometry, class id)]`` in the footprints' CRS.
        num_classes: the number of class ids (largest id + 1).
    """

    def __init__(
        self,
        dataset: RasterSegmentation,
        footprints: str,
        class_attribute: str | None = None,
        class_values: dict[Any, int | str] | None = None,
        burn_class: int = 1,
        background: int | str = 0,
        unmapped: int | str = "ignore",
        buffer_px: float = 0.0,
        all_touched: bool = False,
        crs: str | None = None,
        root: str = ".",
    ) -> None:
        if not math.isfinite(float(buffer_px)):
            raise ValueError(f"buffer_px={buffer_px!r} must be a finite number of pixels")
        self.buffer_px, self.all_touched = float(buffer_px), bool(all_touched)
        self.background = _class_id(background, "background")
        skip = isinstance(unmapped, str) and unmapped.lower() == "skip"
        missing = None if skip else _class_id(unmapped, "unmapped")
        path = str(Path(root) / footprints)
        super().__init__(dataset, path)
        feats, self.crs = read_features(path, crs)
        values = None if class_values is None else {str(k): _class_id(v, f"class_values[{k!r}]")
                                                     for k, v in class_values.items()}
        self.features: list[tuple[dict[str, Any], int]] = []
        for n, f in enumerate(feats):
            if not f["geometry"]:
                continue  # a feature without geometry burns nothing
            if class_attribute is None:
                cls: int | None = _class_id(burn_class, "burn_class")
            else:
                value = f["properties"].get(class_attribute)
                if values is not None:
                    cls = values.get(str(value), missing)
                elif value is None:
                    cls = missing
                else:
                    cls = _class_id(value, f"feature {n} of {path}: {class_attribute}")
            if cls is not None:
                self.features.append((f["geometry"], cls))
        if not self.features:
            raise ValueError(f"vector file {path} has no features to burn (with class_attribute="
                             f"{class_attribute!r}, unmapped={unmapped!r})")
        ids = [c for _, c in self.features] + [self.background]
        self.num_classes = max([c for c in ids if c != IGNORE_INDEX], default=0) + 1
        self._by_crs: dict[str, tuple[list[dict[str, Any]], np.ndarray, np.ndarray]] = {}
        self._check_overlap()

    def _in_crs(self, crs: CRS) -> tuple[list[dict[str, Any]], np.ndarray, np.ndarray]:
        """Geometries in ``crs``, their classes ``[N]`` and bounds ``[N, 4]`` (cached per CRS)."""
        key = crs.to_wkt()
        if key not in self._by_crs:
            geoms = [g for g, _ in self.features]
            if crs != self.crs:
                geoms = transform_geom(self.crs, crs, geoms)
            bounds = np.asarray([_geom_bounds(g) for g in geoms], np.float64).reshape(-1, 4)
            self._by_crs[key] = (list(geoms), np.asarray([c for _, c in self.features], np.int64), bounds)
        return self._by_crs[key]

    def _check_overlap(self) -> None:
        for geo in self.geo:
            _, _, b = self._in_crs(geo.crs)
            hit = ((b[:, 0] < geo.bounds.right) & (b[:, 2] > geo.bounds.left)
                   & (b[:, 1] < geo.bounds.top) & (b[:, 3] > geo.bounds.bottom))
            if hit.any():
                return
        raise ValueError(
            f"no image intersects any footprint of {self.labels_path} (footprints in {self.crs}; images "
            f"such as {self.geo[0].path} in {self.geo[0].crs}): check the CRSs (set crs=...) and the files")

    def labels(self, grid: WindowGrid) -> np.ndarray:
        """``[h, w]`` class ids burnt from the footprints onto ``grid``."""
        h, w = grid.shape
        pad = int(math.ceil(abs(self.buffer_px)))
        transform = grid.transform @ Affine.translation(-pad, -pad)  # burnt with a margin of pad pixels
        shape = (h + 2 * pad, w + 2 * pad)
        geoms, classes, b = self._in_crs(grid.crs)
        xs, ys = zip(*(transform @ (c, r) for c, r in ((0, 0), (shape[1], 0), (0, shape[0]), (shape[1], shape[0]))))
        near = (b[:, 0] <= max(xs)) & (b[:, 2] >= min(xs)) & (b[:, 1] <= max(ys)) & (b[:, 3] >= min(ys))
        out = np.full((h, w), self.background, np.int64)
        for cls in np.unique(classes[near]).tolist():  # ascending: a higher class wins, IGNORE last
            shapes = [(geoms[k], 1) for k in np.flatnonzero(near & (classes == cls)).tolist()]
            burnt = rasterize(shapes, out_shape=shape, transform=transform, fill=0, all_touched=self.all_touched,
                              dtype="uint8").astype(bool)  # [h + 2 pad, w + 2 pad]
            region = grow(burnt, self.buffer_px, pad) if pad else burnt
            out[region] = cls
        return out


def _class_id(value: Any, what: str) -> int:
    """A class id in ``[0, 255)``, or IGNORE_INDEX for ``"ignore"`` / 255."""
    if isinstance(value, str) and value.lower() == "ignore":
        return IGNORE_INDEX
    try:
        c = int(value)
        ok = not isinstance(value, bool) and float(value) == c and 0 <= c <= IGNORE_INDEX
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{what}={value!r} must be a class id in [0, {IGNORE_INDEX}) or 'ignore'")
    return c


def _geom_bounds(geom: dict[str, Any]) -> tuple[float, float, float, float]:
    """``(left, bottom, right, top)`` of a GeoJSON-like geometry (NaNs when it has no points)."""
    if geom.get("type") == "GeometryCollection":
        parts = [_geom_bounds(g) for g in geom.get("geometries", [])]
        return (min(p[0] for p in parts), min(p[1] for p in parts),
                max(p[2] for p in parts), max(p[3] for p in parts)) if parts else (math.nan,) * 4
    xy = np.asarray(list(_points(geom["coordinates"])), np.float64).reshape(-1, 2)  # [n points, 2]
    if not len(xy):
        return (math.nan,) * 4
    return float(xy[:, 0].min()), float(xy[:, 1].min()), float(xy[:, 0].max()), float(xy[:, 1].max())


def _points(coords: Any):
    """Every ``(x, y)`` of nested GeoJSON coordinates (a third, z value is dropped)."""
    if len(coords) and isinstance(coords[0], (int, float)):
        yield coords[0], coords[1]
        return
    for c in coords:
        yield from _points(c)
