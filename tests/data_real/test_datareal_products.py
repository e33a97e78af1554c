"""ProductLabels: a land-cover product in another CRS and resolution, warped onto the windows of the
Sentinel-2 cloud chips (CC BY 4.0, EPSG:32736) and of generated UTM rasters.

The products are generated here (WorldCover codes in random 0.0002 deg or 30 m cells, a no-data
strip, a code outside the table). The reference label of an image pixel is the product pixel that
contains the pixel centre, found by transforming the centre with ``rasterio.warp.transform`` and
indexing the product array: the definition of nearest-neighbour warping, without GDAL's warper.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import rasterio
from affine import Affine
from datareal_fixtures import multiband_uint16, shared_data, write_raster
from rasterio.enums import Resampling
from rasterio.warp import reproject, transform, transform_bounds
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from noisyseg.data import IGNORE_INDEX, PRODUCT_TABLES, ProductLabels, RasterSegmentation
from noisyseg.data.products import class_lookup, map_codes, product_table

S2_BANDS = ["B02.tif", "B03.tif", "B04.tif", "B08.tif"]
WC = [10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100]  # ESA WorldCover codes, in class order


def _s2(**kw) -> RasterSegmentation:
    return RasterSegmentation("train_features/*", root=str(shared_data() / "s2-cloud"), bands=S2_BANDS,
                              patch_size=64, normalize=False, skip_empty=False, **kw)


def _write_product(path, crs, bounds, cover=(0.1, 0.7, 0.05, 0.6), res=0.0002, seed=0):
    """A WorldCover-coded product in ``crs`` over part of ``bounds`` (image bounds in ``crs``).

    ``cover`` = (start, end) fractions along x, then along y from the top, so part of the image
    lies outside. Rows 0..4 are no-data (0); code 15 is not in the table.
    """
    left, bottom, right, top = bounds
    x0, x1 = left + cover[0] * (right - left), left + cover[1] * (right - left)
    y0, y1 = top - cover[2] * (top - bottom), top - cover[3] * (top - bottom)
    w, h = int((x1 - x0) / res), int((y0 - y1) / res)
    tr = Affine(res, 0, x0, 0, -res, y0)
    codes = np.asarray(WC[:2] + WC[3:] + [15], np.uint8)  # 30 (class 2) never drawn; 15 not a code
    arr = codes[np.random.default_rng(seed).integers(0, len(codes), (h, w))]
    arr[:5] = 0  # no-data strip
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=1, dtype="uint8", crs=crs,
                       transform=tr, nodata=0) as dst:
        dst.write(arr, 1)
    return arr, tr


def _centre_reference(product, ptr, pcrs, img_crs, img_tr, rows, cols, lut, scale=1.0):
    """``[h, w]`` classes: product pixel under each output pixel centre (``scale`` native px each)."""
    xs, ys = img_tr @ ((cols + 0.5) * scale, (rows + 0.5) * scale)
    px, py = transform(img_crs, pcrs, xs.ravel(), ys.ravel())
    c, r = ~ptr @ (np.asarray(px), np.asarray(py))
    c, r = np.floor(c).astype(int), np.floor(r).astype(int)
    inside = (c >= 0) & (c < product.shape[1]) & (r >= 0) & (r < product.shape[0])
    out = np.full(c.shape, IGNORE_INDEX, np.int64)
    out[inside] = [lut.get(int(v), IGNORE_INDEX) for v in product[r[inside], c[inside]]]  # 0 / 15: ignore
    return out.reshape(rows.shape)


def _chip_geo(chip: str = "adwp"):
    with rasterio.open(shared_data() / "s2-cloud" / "train_features" / chip / "B02.tif") as src:
        return src.crs, src.transform, src.bounds


@pytest.mark.real_data
def test_product_in_epsg4326_matches_centre_lookup_and_reproject(tmp_path):
    crs, tr, b = _chip_geo()
    prod, ptr = _write_product(tmp_path / "wc.tif", "EPSG:4326", transform_bounds(crs, "EPSG:4326", *b))
    with pytest.warns(UserWarning, match=r"dropped the samples of 1 image.*aeey"):
        ds = ProductLabels(_s2(masks="train_labels/*.tif"), str(tmp_path / "wc.tif"), no_overlap="skip")
    assert len(ds) == 64 and ds.stats["no_overlap"] == 1 and ds.num_classes == 11
    assert all(s.endswith("adwp") for s in ds.sources())
    lut = {code: k for k, code in enumerate(WC)}
    seen = set()
    for k in (0, 1, 9, 27, 44, 63):  # top-left (no-data strip), edges of the product, outside it
        s = ds[k]
        r0, c0, h, w = s["meta"]["window"]
        rows, cols = np.mgrid[r0:r0 + h, c0:c0 + w]
        want = _centre_reference(prod, ptr, "EPSG:4326", crs, tr, rows, cols, lut)
        np.testing.assert_array_equal(s["mask"].numpy(), want)
        # GDAL's own nearest warp of the same product onto the window's transform
        ref = np.full((h, w), -1, np.int32)
        reproject(prod, ref, src_transform=ptr, src_crs="EPSG:4326", src_nodata=0,
                  dst_transform=window_transform(Window(c0, r0, w, h), tr), dst_crs=crs, dst_nodata=-1,
                  resampling=Resampling.nearest)
        np.testing.assert_array_equal(s["mask"].numpy(), map_codes(ref, lut))
        with rasterio.open(shared_data() / "s2-cloud" / "train_labels" / "adwp.tif") as src:
            np.testing.assert_array_equal(s["clean_mask"].numpy(), src.read(1, window=Window(c0, r0, w, h)))
        seen |= set(np.unique(want).tolist())
        assert s["meta"]["mask_source"].endswith("wc.tif")
        assert s["meta"]["clean_mask_source"].endswith("adwp.tif")
    assert seen == {0, 1, 3, 4, 5, 6, 7, 8, 9, 10, IGNORE_INDEX}  # 30 (class 2) is never drawn
    assert (ds[63]["mask"] == IGNORE_INDEX).all()  # bottom-right window: outside the product


@pytest.mark.real_data
def test_product_in_epsg3857_on_resampled_windows_building_vs_rest(tmp_path):
    crs, tr, b = _chip_geo()
    prod, ptr = _write_product(tmp_path / "wc.tif", "EPSG:3857", transform_bounds(crs, "EPSG:3857", *b),
                               cover=(0.3, 1.2, 0.2, 0.9), res=30.0, seed=1)
    with pytest.warns(UserWarning, match="aeey"):
        ds = ProductLabels(_s2(resample=0.5), "wc.tif", root=str(tmp_path), classes={"Built-up": 1}, other=0,
                           no_overlap="skip")
    assert len(ds) == 16 and ds.num_classes == 2 and ds.class_names is None
    lut = {code: int(code == 50) for code in WC}
    for k in (0, 5, 10, 15):
        s = ds[k]
        r0, c0, h, w = s["meta"]["window"]  # output pixels of 20 m
        rows, cols = np.mgrid[r0:r0 + h, c0:c0 + w]
        want = _centre_reference(prod, ptr, "EPSG:3857", crs, tr, rows, cols, lut, scale=2.0)
        np.testing.assert_array_equal(s["mask"].numpy(), want)
        assert set(np.unique(want).tolist()) <= {0, 1, IGNORE_INDEX} and "clean_mask" not in s
    assert {0, 1, IGNORE_INDEX} <= set(np.unique(ds[5]["mask"].numpy()).tolist())


def test_image_nodata_and_padding_are_ignored(tmp_path):
    img = multiband_uint16(np.random.default_rng(0))  # [4, 96, 80], no-data block [:20, :30]
    write_raster(tmp_path / "img" / "t0.tif", img, nodata=0)  # EPSG:32633, 10 m
    with rasterio.open(tmp_path / "img" / "t0.tif") as src:
        crs, tr, b = src.crs, src.transform, src.bounds
    prod, ptr = _write_product(tmp_path / "p.tif", "EPSG:4326", transform_bounds(crs, "EPSG:4326", *b),
                               cover=(-0.1, 1.1, -0.1, 1.1), res=0.00015)
    imagery = RasterSegmentation("img/*.tif", root=str(tmp_path), patch_size=128, normalize=False)
    s = ProductLabels(imagery, str(tmp_path / "p.tif"))[0]
    assert s["mask"].shape == (128, 128) and s["image"].shape == (4, 128, 128)
    rows, cols = np.mgrid[0:96, 0:80]
    want = _centre_reference(prod, ptr, "EPSG:4326", crs, tr, rows, cols, {c: k for k, c in enumerate(WC)})
    want[:20, :30] = IGNORE_INDEX  # image no-data
    np.testing.assert_array_equal(s["mask"][:96, :80].numpy(), want)
    assert (s["mask"][96:] == IGNORE_INDEX).all() and (s["mask"][:, 80:] == IGNORE_INDEX).all()
    assert (want[20:] != IGNORE_INDEX).mean() > 0.8
    # a no-data code that the table holds: its pixels are ignored, not class 3
    s = ProductLabels(imagery, str(tmp_path / "p.tif"), product_nodata=40)[0]
    lut = {c: k for k, c in enumerate(WC) if c != 40}
    want = _centre_reference(prod, ptr, "EPSG:4326", crs, tr, rows, cols, lut)
    want[:20, :30] = IGNORE_INDEX
    np.testing.assert_array_equal(s["mask"][:96, :80].numpy(), want)
    assert (want == IGNORE_INDEX).sum() > 600 + (want[20:] == IGNORE_INDEX).size * 0.05


def test_shipped_tables_and_class_mapping():
    assert sorted(PRODUCT_TABLES["worldcover"]) == WC
    assert sorted(PRODUCT_TABLES["dynamic_world"]) == list(range(9))
    assert sorted(PRODUCT_TABLES["esri_lulc"]) == [1, 2, 4, 5, 7, 8, 9, 10, 11]
    assert sorted(PRODUCT_TABLES["nlcd"]) == [11, 12, 21, 22, 23, 24, 31, 41, 42, 43, 51, 52, 71, 72, 73,
                                              74, 81, 82, 90, 95]
    assert PRODUCT_TABLES["worldcover"][50] == "built-up" and PRODUCT_TABLES["dynamic_world"][6] == "built"
    assert class_lookup(product_table("WorldCover")) == {c: k for k, c in enumerate(WC)}
    nlcd = class_lookup(product_table("nlcd"), {"Developed, open space": 1, 22: 1, "23": 1, 24: 1,
                                                11: "ignore"}, other=0)
    assert [c for c, v in nlcd.items() if v == 1] == [21, 22, 23, 24] and nlcd[11] == IGNORE_INDEX
    assert nlcd[95] == 0
    own = product_table({"1": "road", 3: "roof"})  # YAML keys may arrive as strings
    assert class_lookup(own) == {1: 0, 3: 1}
    codes = np.asarray([[0, 1, 2, 3], [-1, 3, 1, 200]])
    np.testing.assert_array_equal(map_codes(codes, {1: 0, 3: 1}), [[255, 0, 255, 1], [255, 1, 0, 255]])
    with pytest.raises(ValueError, match=r"unknown product table 'corine'.*dynamic_world"):
        product_table("corine")
    with pytest.raises(ValueError, match=r"classes key 'buildings'.*built-up"):
        class_lookup(product_table("worldcover"), {"buildings": 1})
    with pytest.raises(ValueError, match=r"classes key 12 .*codes"):
        class_lookup(product_table("worldcover"), {12: 1})
    with pytest.raises(ValueError, match=r"other='rest'"):
        class_lookup(product_table("worldcover"), {50: 1}, other="rest")
    with pytest.raises(ValueError, match=r"code -3"):
        product_table({-3: "x"})


@pytest.mark.real_data
def test_errors_name_the_files(tmp_path):
    crs, _, b = _chip_geo()
    _write_product(tmp_path / "wc.tif", "EPSG:4326", transform_bounds(crs, "EPSG:4326", *b))
    with pytest.raises(ValueError, match=r"1 image\(s\) do not overlap product .*wc.tif.*aeey.*no_overlap='skip'"):
        ProductLabels(_s2(), str(tmp_path / "wc.tif"))
    with pytest.raises(ValueError, match=r"no_overlap='drop'; valid"):
        ProductLabels(_s2(), str(tmp_path / "wc.tif"), no_overlap="drop")
    with pytest.raises(ValueError, match=r"unknown product table 'worldcover2'"):
        ProductLabels(_s2(), str(tmp_path / "wc.tif"), table="worldcover2")
    with pytest.raises(ValueError, match=r"maps every product code to 'ignore'"):
        ProductLabels(_s2(), str(tmp_path / "wc.tif"), classes={50: "ignore"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(tmp_path / "nocrs.tif", "w", driver="GTiff", width=4, height=4, count=1,
                           dtype="uint8") as dst:
            dst.write(np.full((1, 4, 4), 10, np.uint8))
    with pytest.raises(ValueError, match=r"product .*nocrs.tif has no CRS"):
        ProductLabels(_s2(), str(tmp_path / "nocrs.tif"), no_overlap="skip")
    plain = RasterSegmentation(["nocrs.tif"], root=str(tmp_path), normalize=False)
    with pytest.raises(ValueError, match=r"image .*nocrs.tif has no CRS"):
        ProductLabels(plain, str(tmp_path / "wc.tif"))
