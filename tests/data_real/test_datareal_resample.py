"""Resampled reads: RasterSegmentation (GDAL average / bilinear, nearest masks) and XBDSegmentation
(PIL box, polygons rasterised on the output grid) on generated fixtures, Open Cities AI (CC BY 4.0)
and xBD tier3 (CC BY-NC-SA 4.0), and tile-disjoint splits of the real tiles."""

from __future__ import annotations

import math

import numpy as np
import pytest
import rasterio
from datareal_fixtures import make_xbd, shared_data, write_raster
from rasterio.enums import Resampling

from noisyseg.data.grid import scaled_size
from noisyseg.data.raster import RasterSegmentation
from noisyseg.data.loading import IGNORE_INDEX
from noisyseg.data.splits import ConcatSources, TileSplit
from noisyseg.data.xbd import XBDSegmentation, burn

OPENCITIES = {"images": "images/*.tif", "masks": "masks/*.tif", "mask_suffix": "_mask",
              "band_indexes": [1, 2, 3], "remap": {255: 1}}


def blocks(rng: np.random.Generator, shape: tuple[int, ...], high: int, low: int = 0) -> np.ndarray:
    """Random values constant on 2x2 blocks: ``[..., 2h, 2w]`` from ``[..., h, w]`` draws."""
    small = rng.integers(low, high, shape)
    return np.repeat(np.repeat(small, 2, -2), 2, -1)


def block_tile(tmp_path, nodata_block: bool = True):
    """A 64x64 3-band tile: 2x2 blocks of value ``v`` plus a [[0, 2], [2, 0]] pattern (block mean
    ``v + 1``), no-data 0 on rows 0-3 x cols 0-3; the mask {0, 1, 2, 9} constant on 2x2 blocks."""
    rng = np.random.default_rng(0)
    base = blocks(rng, (3, 32, 32), 200, low=1)  # [3, 64, 64]
    image = (base + np.tile([[0, 2], [2, 0]], (32, 32))).astype(np.uint8)
    if nodata_block:
        image[:, :4, :4] = 0
    mask = blocks(rng, (1, 32, 32), 4).astype(np.uint8)
    mask[mask == 3] = 9  # raw 9 = unlabelled
    write_raster(tmp_path / "img" / "t0.tif", image, nodata=0)
    write_raster(tmp_path / "lab" / "t0.tif", mask)
    return image, mask[0]


def test_half_resolution_reads_block_means_and_nearest_mask(tmp_path):
    image, mask = block_tile(tmp_path)
    ds = RasterSegmentation("img/*.tif", "lab/*.tif", root=str(tmp_path), normalize=False, unlabelled=9,
                            remap={2: 1, 1: 2}, resample=0.5)
    s = ds[0]
    assert s["image"].shape == (3, 32, 32) and ds.sizes == [(32, 32)]
    want = image.reshape(3, 32, 2, 32, 2).astype(np.float64).mean((2, 4))  # [3, 32, 32] block means = v + 1
    want[:, :2, :2] = 0  # the no-data block reads 0
    np.testing.assert_array_equal(s["image"].numpy(), want)
    raw = mask[::2, ::2]  # the block values
    expect = np.where(raw == 9, IGNORE_INDEX, np.where(raw == 1, 2, np.where(raw == 2, 1, raw)))
    expect[:2, :2] = IGNORE_INDEX  # under the image's no-data
    np.testing.assert_array_equal(s["mask"].numpy(), expect)
    assert s["meta"]["window"] == [0, 0, 32, 32] and s["meta"]["native_window"] == [0.0, 0.0, 64.0, 64.0]


def test_resampled_mask_takes_one_native_label_per_pixel(tmp_path):
    rng = np.random.default_rng(1)
    image = rng.integers(1, 255, (3, 41, 30)).astype(np.uint8)
    mask = rng.choice(np.array([0, 3, 250], np.uint8), (41, 30))  # labels that differ inside every footprint
    write_raster(tmp_path / "img" / "t.tif", image)
    write_raster(tmp_path / "lab" / "t.tif", mask[None])
    for resample in (0.5, 0.3):
        s = RasterSegmentation("img/*.tif", "lab/*.tif", root=str(tmp_path), normalize=False, resample=resample)[0]
        out = s["mask"].numpy()
        oh, ow = scaled_size(41, 30, resample)  # 0.5: 21 x 15, footprints 1.95 x 2 native pixels
        assert out.shape == (oh, ow) and set(np.unique(out)) <= {0, 3, 250}
        for r in range(oh):  # each output label is one of the native labels under its footprint
            for c in range(ow):
                rows = slice(math.floor(r * 41 / oh), math.ceil((r + 1) * 41 / oh))
                cols = slice(math.floor(c * 30 / ow), math.ceil((c + 1) * 30 / ow))
                assert out[r, c] in mask[rows, cols]
    patches = RasterSegmentation("img/*.tif", "lab/*.tif", root=str(tmp_path), normalize=False, resample=0.5,
                                 patch_size=8)  # windows from 8 px patches agree with GDAL's whole-tile read
    with rasterio.open(tmp_path / "lab" / "t.tif") as src:
        whole = src.read(1, out_shape=(21, 15), resampling=Resampling.nearest)
    assert len(patches) == 3 * 2
    for s in patches:
        r, c, h, w = s["meta"]["window"]
        np.testing.assert_array_equal(s["mask"].numpy(), whole[r:r + h, c:c + w])


def test_patch_windows_count_output_pixels(tmp_path):
    image, mask = block_tile(tmp_path, nodata_block=False)
    kw = {"root": str(tmp_path), "normalize": False}
    half = RasterSegmentation("img/*.tif", "lab/*.tif", patch_size=16, resample=0.5, **kw)
    assert len(half) == 4 and {tuple(half[k]["image"].shape) for k in range(4)} == {(3, 16, 16)}
    assert [w.row_off for _, w in half.windows] == [0, 0, 16, 16]
    assert half[3]["meta"]["native_window"] == [32.0, 32.0, 32.0, 32.0]  # output (16, 16, 16, 16) x 2
    assert len(RasterSegmentation("img/*.tif", "lab/*.tif", patch_size=16, overlap=4, resample=0.5, **kw)) == 9
    double = RasterSegmentation("img/*.tif", "lab/*.tif", patch_size=32, resample=2.0, **kw)
    assert len(double) == 16 and double.sizes == [(128, 128)]
    up = RasterSegmentation("img/*.tif", "lab/*.tif", resample=2.0, **kw)[0]
    np.testing.assert_array_equal(up["mask"].numpy(), np.kron(mask, np.ones((2, 2), np.uint8)))  # nearest
    with rasterio.open(tmp_path / "img" / "t0.tif") as src:  # bilinear, as GDAL computes it
        want = src.read(out_shape=(3, 128, 128), resampling=Resampling.bilinear)
    np.testing.assert_array_equal(up["image"].numpy(), want.astype(np.float32))
    assert scaled_size(439, 406, 0.5) == (220, 203) and scaled_size(3, 3, 0.1) == (1, 1)


def test_statistics_and_empty_scan_use_the_resampled_pixels(tmp_path):
    rng = np.random.default_rng(2)
    image = rng.integers(1, 255, (2, 64, 64)).astype(np.uint8)
    image[:, :32, :32] = 0  # no-data quarter: one empty 16 px patch at 0.5
    write_raster(tmp_path / "img" / "t.tif", image, nodata=0)
    write_raster(tmp_path / "lab" / "t.tif", np.zeros((1, 64, 64), np.uint8))
    cache = tmp_path / "stats.json"
    kw = {"root": str(tmp_path), "stats_cache": str(cache), "patch_size": 16, "skip_empty": True}
    with pytest.warns(UserWarning, match="skipped 1 all-zero"):
        half = RasterSegmentation("img/*.tif", "lab/*.tif", resample=0.5, **kw)
    with rasterio.open(tmp_path / "img" / "t.tif") as src:
        small = src.read(out_shape=(2, 32, 32), resampling=Resampling.average).astype(np.float64)
    valid = small[:, np.any(small != 0, 0)]  # [2, n]
    np.testing.assert_allclose(half.normalization["mean"], valid.mean(1), rtol=1e-12)
    np.testing.assert_allclose(half.normalization["std"], valid.std(1), rtol=1e-9)
    native = image[:, np.any(image != 0, 0)].astype(np.float64)
    assert abs(half.normalization["std"][0] - native.std(1)[0]) > 5  # averaging 2x2 lowers the std
    assert len(half) == 3 and half.stats["empty_skipped"] == 1
    with pytest.warns(UserWarning, match="skipped 4 all-zero"):  # same cache file, resample 1: recomputed
        full = RasterSegmentation("img/*.tif", "lab/*.tif", **kw)
    np.testing.assert_allclose(full.normalization["std"], native.std(1), rtol=1e-9)
    lazy = {"root": str(tmp_path), "stats_cache": str(tmp_path / "lazy.json"), "validate": False}
    assert RasterSegmentation("img/*.tif", "lab/*.tif", resample=0.5, **lazy).lazy  # windows alike at any resample
    np.testing.assert_allclose(RasterSegmentation("img/*.tif", "lab/*.tif", **lazy).normalization["std"],
                               native.std(1), rtol=1e-9)  # the cache of the 0.5 read is not reused


def test_resample_must_be_positive(tmp_path):
    block_tile(tmp_path)
    for bad in (0, -0.5, float("nan"), "half"):
        with pytest.raises(ValueError, match=rf"resample={bad!r} must be a finite number > 0"):
            RasterSegmentation("img/*.tif", "lab/*.tif", root=str(tmp_path), resample=bad)
    make_xbd(tmp_path / "xbd", {"tier3/site_0": 1})
    with pytest.raises(ValueError, match=r"resample=0 must be"):
        XBDSegmentation(str(tmp_path / "xbd"), ["tier3"], resample=0)


def test_xbd_resample_rasterises_polygons_on_the_output_grid(tmp_path):
    root = make_xbd(tmp_path, {"tier3/site_0": 3, "tier3/site_1": 1})  # 64 px, building 8..24
    native = XBDSegmentation(str(root), ["tier3"], phase="post", tile_size=0)
    half = XBDSegmentation(str(root), ["tier3"], phase="post", tile_size=16, resample=0.5)
    assert len(half) == 8 and half.stats["tiles"] == 8
    full = half.full_mask("tier3/site_0", "post")
    want = np.zeros((32, 32), np.uint8)
    want[4:12, 4:12] = 3  # output pixel centres (c + 0.5) * 2 inside [8, 24]: c = 4..11
    np.testing.assert_array_equal(full, want)
    s = half[0]  # tile (0, 0) of site_0
    np.testing.assert_array_equal(s["mask"].numpy(), want[:16, :16])
    img = native.image("tier3/site_0", "post").astype(np.float64)  # [3, 64, 64]
    np.testing.assert_allclose(s["image"].numpy() * 255, img.reshape(3, 32, 2, 32, 2).mean((2, 4))[:, :16, :16],
                               rtol=1e-5)  # box = 2x2 mean, then / 255
    assert s["meta"]["tile"] == [0, 0, 16] and s["meta"]["polygons"] == 1 and half[3]["meta"]["polygons"] == 0
    double = XBDSegmentation(str(root), ["tier3"], phase="pre", tile_size=32, resample=2.0)
    big = double.full_mask("tier3/site_1", "pre")
    assert big.shape == (128, 128) and big.sum() == 32 * 32 and big[16:48, 16:48].all()
    assert len(double) == 2 * 16 and double[0]["image"].shape == (3, 32, 32)
    assert double.sources()[:16] == [str(root / "tier3" / "images" / "site_0_pre_disaster.png")] * 16


@pytest.mark.real_data
def test_opencities_half_resolution_patches_keep_building_fraction():
    root = shared_data() / "opencities"
    ds = RasterSegmentation(root=str(root), patch_size=128, resample=0.5, normalize=False, **OPENCITIES)
    assert len(ds) == 2 * 16 and ds.sizes == [(512, 512)] * 2
    by_tile: dict[str, list[np.ndarray]] = {}
    for k in range(len(ds)):
        s = ds[k]
        assert s["image"].shape == (3, 128, 128) and s["mask"].shape == (128, 128)
        by_tile.setdefault(s["meta"]["source"], []).append(s["mask"].numpy())
    assert sorted(len(v) for v in by_tile.values()) == [16, 16]
    for source, masks in by_tile.items():
        m = np.stack(masks)  # [16, 128, 128]
        assert set(np.unique(m)) <= {0, 1}
        with rasterio.open(root / "masks" / source.rsplit("/", 1)[1].replace(".tif", "_mask.tif")) as src:
            full = src.read(1)  # [1024, 1024] {0, 255}
        assert abs((m == 1).mean() - (full == 255).mean()) < 0.01


@pytest.mark.real_data
def test_xbd_tier3_half_resolution_and_a_split_across_datasets(tmp_path):
    root = shared_data() / "xbd"
    xbd = XBDSegmentation(str(root), ["tier3"], phase="pre", tile_size=128, resample=0.5)
    assert len(xbd) == 3 * 16 and xbd[0]["image"].shape == (3, 128, 128)
    for i in xbd.ids:
        native = burn(xbd.labels[i]["pre"])  # [1024, 1024]
        assert abs((xbd.full_mask(i, "pre") == 1).mean() - (native == 1).mean()) < 0.01
    oc = RasterSegmentation(root=str(shared_data() / "opencities"), patch_size=128, resample=0.5,
                            mean=[0, 0, 0], std=[255, 255, 255], **OPENCITIES)
    both = ConcatSources([oc, xbd])  # 2 + 3 tiles, 32 + 48 patches
    counts = {"test": 2, "few": 1, "train": "rest"}
    parts = {n: TileSplit(both, n, counts=counts, seed=0, manifest=str(tmp_path / "m.json")) for n in counts}
    assert sorted(len(p.groups) for p in parts.values()) == [1, 2, 2]
    assert sum(len(p) for p in parts.values()) == 80
    assert sorted(i for p in parts.values() for i in p.indices.tolist()) == list(range(80))
