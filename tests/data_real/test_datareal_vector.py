"""VectorLabels: GeoJSON footprints burnt onto the windows of a SpaceNet-1 Rio tile (CC BY-SA 4.0,
EPSG:4326) and of a Sentinel-2 cloud chip (CC BY 4.0, EPSG:32736).

The polygons are drawn here in the pixel coordinates of the image (vertices off the pixel centres)
and written in longitude / latitude or Web Mercator. The reference label of a pixel is an even-odd
point-in-polygon test of its centre in pixel coordinates, written below: no GDAL rasteriser.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from datareal_fixtures import shared_data
from rasterio.warp import transform

from noisyseg.data import IGNORE_INDEX, RasterSegmentation, VectorLabels
from noisyseg.data.vector import read_features

TILE = "3band_013022223130_Public_img50"  # 406 x 438 px, EPSG:4326
# (class name, rings in image pixel (col, row)); one list of rings per polygon part
POLYGONS = [
    ("building", [[[(20.3, 15.7), (70.8, 25.1), (60.2, 80.6), (12.9, 66.4)]]]),
    ("shed", [[[(50.4, 50.3), (110.7, 60.9), (70.1, 118.2)]]]),  # overlaps the first: shed (2) wins
    ("building", [[[(150.2, 140.3), (230.6, 138.9), (240.4, 220.7), (145.5, 228.2)],
                   [(180.3, 170.1), (200.7, 172.4), (198.2, 195.6), (178.9, 190.3)]]]),  # with a hole
    ("building", [[[(300.2, 300.4), (340.7, 305.3), (330.1, 350.8)]],
                  [[(360.3, 20.2), (420.6, 30.8), (400.1, 90.4)]]]),  # a MultiPolygon
    ("ruin", [[[(100.3, 300.2), (140.9, 305.7), (120.4, 350.1)]]]),  # not in class_values: ignore
    ("building", [[[(110.2, 10.3), (126.6, 10.3), (126.6, 40.7), (110.2, 40.7)]]]),  # 1.4 px left of col 128
]
CLASSES = {"building": 1, "shed": 2, "ruin": IGNORE_INDEX}


def _geojson(path, to_xy, crs_name=None):
    """Write POLYGONS through ``to_xy(cols, rows) -> (xs, ys)`` as a FeatureCollection."""
    feats = []
    for kind, parts in POLYGONS:
        coords = [[_ring(to_xy, ring) for ring in part] for part in parts]
        geom = {"type": "MultiPolygon", "coordinates": coords} if len(parts) > 1 else \
            {"type": "Polygon", "coordinates": coords[0]}
        feats.append({"type": "Feature", "properties": {"kind": kind}, "geometry": geom})
    obj = {"type": "FeatureCollection", "features": feats}
    if crs_name:
        obj["crs"] = {"type": "name", "properties": {"name": crs_name}}
    path.write_text(json.dumps(obj))
    return str(path)


def _ring(to_xy, ring):
    """A closed ring of ``(x, y)`` lists from pixel ``(col, row)`` vertices."""
    xs, ys = to_xy(*np.asarray(ring + ring[:1], float).T)
    return [[float(x), float(y)] for x, y in zip(xs, ys)]


def _inside(px, py, rings):
    """Even-odd rule over all rings of one polygon part (holes included)."""
    out = np.zeros(px.shape, bool)
    for ring in rings:
        r = np.asarray(ring + ring[:1], float)
        for (x1, y1), (x2, y2) in zip(r[:-1], r[1:]):
            crosses = (y1 > py) != (y2 > py)
            with np.errstate(divide="ignore", invalid="ignore"):
                out ^= crosses & (px < (x2 - x1) * (py - y1) / (y2 - y1) + x1)
    return out


def _reference(r0, c0, h, w, pad=0):
    """Per class, centre-in-polygon on the grid ``[r0 - pad, r0 + h + pad) x [c0 - pad, ...)``."""
    rows, cols = np.mgrid[r0 - pad:r0 + h + pad, c0 - pad:c0 + w + pad]
    px, py = cols + 0.5, rows + 0.5
    regions: dict[int, np.ndarray] = {}
    for kind, parts in POLYGONS:
        cls = CLASSES[kind]
        hit = np.zeros(px.shape, bool)
        for part in parts:
            hit |= _inside(px, py, part)
        regions[cls] = regions.get(cls, np.zeros(px.shape, bool)) | hit
    return regions


def _paint(regions, shape, background=0):
    out = np.full(shape, background, np.int64)
    for cls in sorted(regions):
        out[regions[cls]] = cls
    return out


def _spacenet(**kw):
    root = str(shared_data() / "spacenet-rio")
    return RasterSegmentation([f"images/{TILE}.tif"], [f"masks/{TILE}.tif"], root=root, remap={255: 1},
                              patch_size=128, normalize=False, skip_empty=False, **kw)


def _tile_xy():
    with rasterio.open(shared_data() / "spacenet-rio" / "images" / f"{TILE}.tif") as src:
        tr = src.transform
    return lambda cols, rows: tr @ (cols, rows)


@pytest.mark.real_data
def test_centre_rule_attribute_classes_and_clean_mask(tmp_path):
    path = _geojson(tmp_path / "fp.geojson", _tile_xy())
    ds = VectorLabels(_spacenet(), path, class_attribute="kind", class_values={"building": 1, "shed": 2})
    assert len(ds) == 16 and ds.num_classes == 3 and ds.stats["patches"] == 16
    with rasterio.open(shared_data() / "spacenet-rio" / "masks" / f"{TILE}.tif") as src:
        truth = src.read(1)
    counts = np.zeros(256, int)
    for k in range(len(ds)):
        s = ds[k]
        r0, c0, h, w = s["meta"]["window"]
        want = _paint(_reference(r0, c0, h, w), (h, w))
        np.testing.assert_array_equal(s["mask"].numpy(), want)
        np.testing.assert_array_equal(s["clean_mask"].numpy(), truth[r0:r0 + h, c0:c0 + w] // 255)
        counts += np.bincount(want.ravel(), minlength=256)
        assert s["meta"]["mask_source"] == path and s["meta"]["clean_mask_source"].endswith(f"{TILE}.tif")
    assert counts[1] > 5000 and counts[2] > 1000 and counts[IGNORE_INDEX] > 500  # every class burnt


@pytest.mark.real_data
def test_all_touched_is_a_superset(tmp_path):
    path = _geojson(tmp_path / "fp.geojson", _tile_xy())
    centre = VectorLabels(_spacenet(), path)  # every feature is class 1 (burn_class)
    touched = VectorLabels(_spacenet(), path, all_touched=True)
    grown = 0
    for k in range(len(centre)):
        a, b = centre[k]["mask"].numpy() == 1, touched[k]["mask"].numpy() == 1
        assert not (a & ~b).any()
        grown += int((b & ~a).sum())
        r0, c0, h, w = centre[k]["meta"]["window"]
        regions = _reference(r0, c0, h, w)
        np.testing.assert_array_equal(a, np.logical_or.reduce(list(regions.values())))
    assert grown > 100


@pytest.mark.real_data
@pytest.mark.parametrize("radius", [2.5, 2.0, -1.5])
def test_buffer_matches_disk_morphology_across_window_edges(tmp_path, radius):
    path = _geojson(tmp_path / "fp.geojson", _tile_xy())
    ds = VectorLabels(_spacenet(), path, class_attribute="kind", class_values={"building": 1, "shed": 2},
                      buffer_px=radius)
    plain = VectorLabels(_spacenet(), path, class_attribute="kind", class_values={"building": 1, "shed": 2})
    pad = 3
    dy, dx = np.mgrid[-pad:pad + 1, -pad:pad + 1]
    disk = dy**2 + dx**2 <= radius**2  # [7, 7]
    before = after = 0
    for k in (0, 1, 5, 3, 15):  # window 1 (cols 128..255) gets the footprint 1.4 px left of it
        s = ds[k]
        r0, c0, h, w = s["meta"]["window"]
        grown = {}
        for cls, region in _reference(r0, c0, h, w, pad=pad).items():
            out = np.zeros((h, w), bool) if radius > 0 else np.ones((h, w), bool)
            for oy, ox in zip(dy[disk], dx[disk]):
                shifted = region[pad + oy:pad + oy + h, pad + ox:pad + ox + w]
                out = out | shifted if radius > 0 else out & shifted
            grown[cls] = out
        np.testing.assert_array_equal(s["mask"].numpy(), _paint(grown, (h, w)))
        before, after = before + int((plain[k]["mask"] == 1).sum()), after + int((s["mask"] == 1).sum())
    assert after > before * 1.1 if radius > 0 else after < before * 0.95
    # the footprint ends at col 126.6: centre rule to col 126, + 2.5 px to col 128 = window 1's col 0
    assert (ds[1]["mask"][10:41, 0] == 1).all() == (radius > 0) and not (ds[1]["mask"][:, 1:] == 1).any()


@pytest.mark.real_data
def test_epsg4326_and_3857_footprints_on_a_utm_chip(tmp_path):
    root = shared_data() / "s2-cloud"
    with rasterio.open(root / "train_features" / "adwp" / "B02.tif") as src:
        crs, tr = src.crs, src.transform

    def lonlat(cols, rows):
        return transform(crs, "EPSG:4326", *(tr @ (cols, rows)))

    def mercator(cols, rows):
        return transform(crs, "EPSG:3857", *(tr @ (cols, rows)))

    def utm(cols, rows):
        return tr @ (cols, rows)

    imagery = RasterSegmentation(["train_features/adwp"], root=str(root), bands=["B02.tif", "B08.tif"],
                                 patch_size=128, normalize=False, skip_empty=False)
    files = [(_geojson(tmp_path / "a.geojson", lonlat), None),
             (_geojson(tmp_path / "b.geojson", mercator, "urn:ogc:def:crs:EPSG::3857"), None),
             (_geojson(tmp_path / "c.geojson", utm), "EPSG:32736")]
    for path, crs_arg in files:
        ds = VectorLabels(imagery, path, class_attribute="kind", class_values={"building": 1, "shed": 2},
                          crs=crs_arg)
        for k in (0, 1, 3, 5, 10):
            s = ds[k]
            r0, c0, h, w = s["meta"]["window"]
            np.testing.assert_array_equal(s["mask"].numpy(), _paint(_reference(r0, c0, h, w), (h, w)),
                                          err_msg=path)
    assert str(read_features(files[1][0])[1]) == "EPSG:3857" and str(read_features(files[0][0])[1]) == "EPSG:4326"


@pytest.mark.real_data
def test_errors_name_the_files(tmp_path):
    path = _geojson(tmp_path / "fp.geojson", _tile_xy())
    far = _geojson(tmp_path / "far.geojson", lambda c, r: (c * 1e-5 + 10.0, r * -1e-5 + 50.0))
    with pytest.raises(ValueError, match=r"no image intersects any footprint of .*far.geojson"):
        VectorLabels(_spacenet(), far)
    with pytest.raises(ValueError, match=r"feature 0 of .*fp.geojson: kind='building' must be a class id"):
        VectorLabels(_spacenet(), path, class_attribute="kind")
    with pytest.raises(ValueError, match=r"has no features to burn"):
        VectorLabels(_spacenet(), path, class_attribute="kind", class_values={"x": 1}, unmapped="skip")
    with pytest.raises(ValueError, match=r"buffer_px=nan"):
        VectorLabels(_spacenet(), path, buffer_px=float("nan"))
    with pytest.raises(ValueError, match=r"background='rest'"):
        VectorLabels(_spacenet(), path, background="rest")
    (tmp_path / "fp.gpkg").write_bytes(b"")  # an empty file is no GeoPackage: OGR's error, with the file named
    with pytest.raises(ValueError, match=r"vector file .*fp.gpkg cannot be read by OGR"):
        VectorLabels(_spacenet(), str(tmp_path / "fp.gpkg"))
    (tmp_path / "bad.geojson").write_text('{"type": "Topology"}')
    with pytest.raises(ValueError, match=r"bad.geojson is not GeoJSON"):
        VectorLabels(_spacenet(), str(tmp_path / "bad.geojson"))


@pytest.mark.real_data
@pytest.mark.parametrize("driver,suffix", [("GPKG", ".gpkg"), ("ESRI Shapefile", ".shp")])
def test_geopackage_and_shapefile_give_the_geojson_labels(tmp_path, driver, suffix):
    """The same polygons written by OGR as GeoPackage / Shapefile (in Web Mercator) burn the same masks."""
    pyogrio_raw = pytest.importorskip("pyogrio.raw")
    shapely = pytest.importorskip("shapely")
    to_wgs84 = _tile_xy()

    def to_mercator(cols, rows):
        lon, lat = to_wgs84(cols, rows)
        return transform("EPSG:4326", "EPSG:3857", list(lon), list(lat))

    gj = _geojson(tmp_path / "fp.geojson", to_wgs84)
    feats, _ = read_features(_geojson(tmp_path / "merc.geojson", to_mercator, "EPSG:3857"))
    out = str(tmp_path / f"fp{suffix}")
    geoms = [shapely.geometry.shape(f["geometry"]) for f in feats]
    multi = [g if g.geom_type == "MultiPolygon" else shapely.MultiPolygon([g]) for g in geoms]
    pyogrio_raw.write(out, geometry=shapely.to_wkb(np.array(multi, dtype=object)),
        field_data=[np.array([f["properties"]["kind"] for f in feats], dtype=object)], fields=["kind"],
        geometry_type="MultiPolygon", crs="EPSG:3857", driver=driver)
    read, crs = read_features(out)
    assert [f["properties"]["kind"] for f in read] == [k for k, _ in POLYGONS] and crs.to_epsg() == 3857
    kw = dict(class_attribute="kind", class_values={"building": 1, "shed": 2})
    ogr, ref = VectorLabels(_spacenet(), out, **kw), VectorLabels(_spacenet(), gj, **kw)
    burnt = 0
    for k in range(len(ref)):
        a = ogr[k]["mask"].numpy()
        np.testing.assert_array_equal(a, ref[k]["mask"].numpy())
        burnt += int((a == 1).sum())
    assert burnt > 5000
