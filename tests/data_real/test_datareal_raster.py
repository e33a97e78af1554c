"""RasterSegmentation on SpaceNet-1 Rio (CC BY-SA 4.0), Open Cities AI (CC BY 4.0), the Sentinel-2
cloud chips (CC BY 4.0) and generated GeoTIFF / ENVI fixtures, including bad inputs."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
import rasterio
from datareal_fixtures import multiband_uint16, shared_data, write_raster

import noisyseg.data.raster as raster_mod
from noisyseg.data.grid import patch_starts
from noisyseg.data.raster import RasterSegmentation
from noisyseg.data.loading import IGNORE_INDEX, remap_mask

S2_BANDS = ["B02.tif", "B03.tif", "B04.tif", "B08.tif"]


@pytest.mark.real_data
def test_spacenet_empty_tile_and_one_pixel_sizes():
    root = str(shared_data() / "spacenet-rio")
    with pytest.warns(UserWarning, match=r"all-zero/no-data.*img58"):
        ds = RasterSegmentation("images/*.tif", "masks/*.tif", root=root, remap={255: 1}, patch_size=256)
    assert ds.stats["images"] == 15 and ds.stats["empty_skipped"] >= 4  # all of img58's 4 patches
    assert not any("img58" in ds.images[i][0] for i, _ in ds.windows)
    assert {w for _, w in ds.sizes} == {438, 439}  # the 1-pixel width difference between tiles
    for k in range(0, len(ds), 7):
        s = ds[k]
        assert s["image"].shape == (3, 256, 256) and set(np.unique(s["mask"].numpy())) <= {0, 1}
    kept = RasterSegmentation("images/*img58.tif", "masks/*img58.tif", root=root, remap={255: 1},
                              normalize=False, skip_empty=False)
    assert len(kept) == 1 and float(kept[0]["image"].abs().sum()) == 0.0
    assert kept.stats["empty_skipped"] == 0


@pytest.mark.real_data
def test_s2_bands_read_one_file_per_band():
    root = shared_data() / "s2-cloud"
    ds = RasterSegmentation("train_features/*", "train_labels/*.tif", root=str(root), bands=S2_BANDS,
                            normalize=False)
    assert len(ds) == 2
    for k, chip in enumerate(["adwp", "aeey"]):
        s = ds[k]
        assert s["image"].shape == (4, 512, 512) and s["meta"]["source"].endswith(chip)
        for b, name in enumerate(S2_BANDS):
            with rasterio.open(root / "train_features" / chip / name) as src:
                assert src.dtypes[0] == "uint16"
                want = src.read(1)
            np.testing.assert_array_equal(s["image"][b].numpy(), want.astype(np.float32))  # order kept
        with rasterio.open(root / "train_labels" / f"{chip}.tif") as src:
            np.testing.assert_array_equal(s["mask"].numpy(), src.read(1))
    norm = RasterSegmentation("train_features/*", "train_labels/*.tif", root=str(root), bands=S2_BANDS)
    assert len(norm.normalization["mean"]) == 4 and abs(float(norm[0]["image"].mean())) < 2


@pytest.mark.real_data
def test_opencities_mask_suffix_and_band_subset():
    ds = RasterSegmentation("images/*.tif", "masks/*.tif", root=str(shared_data() / "opencities"),
                            mask_suffix="_mask", band_indexes=[1, 2, 3], remap={255: 1}, patch_size=512)
    assert len(ds) == 8 and ds[5]["image"].shape == (3, 512, 512)
    assert ds[5]["meta"]["mask_source"].endswith("_mask.tif")


def test_uint16_nodata_stats_and_cache(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    arrays = [multiband_uint16(rng) for _ in range(2)]
    for i, a in enumerate(arrays):
        write_raster(tmp_path / "img" / f"t{i}.tif", a, nodata=0)
        write_raster(tmp_path / "lab" / f"t{i}.tif", rng.integers(0, 3, (1,) + a.shape[1:]).astype(np.uint8))
    cache = tmp_path / "cache" / "stats.json"
    ds = RasterSegmentation("img/*.tif", "lab/*.tif", root=str(tmp_path), stats_cache=str(cache))
    valid = np.concatenate([a[:, ~np.all(a == 0, 0)] for a in arrays], 1).astype(np.float64)  # [C, n]
    np.testing.assert_allclose(ds.normalization["mean"], valid.mean(1), rtol=1e-9)
    np.testing.assert_allclose(ds.normalization["std"], valid.std(1), rtol=1e-6)
    s = ds[0]
    assert (s["mask"][:20, :30] == IGNORE_INDEX).all() and (s["image"][:, :20, :30] == 0).all()
    assert (s["mask"][20:] != IGNORE_INDEX).all()
    assert json.loads(cache.read_text())["mean"] == ds.normalization["mean"]
    monkeypatch.setattr(raster_mod, "band_statistics", lambda *a, **k: pytest.fail("cache not reused"))
    again = RasterSegmentation("img/*.tif", "lab/*.tif", root=str(tmp_path), stats_cache=str(cache))
    assert again.normalization == ds.normalization
    other = RasterSegmentation("img/t0.tif", root=str(tmp_path), normalization_from=str(cache))
    assert other.normalization == ds.normalization and "mask" not in other[0]


def test_envi_and_windowed_patches_with_overlap(tmp_path):
    rng = np.random.default_rng(1)
    big = rng.integers(1, 255, (6, 300, 500)).astype(np.uint8)
    write_raster(tmp_path / "scene", big, driver="ENVI")  # scene + scene.hdr
    lab = rng.integers(0, 4, (1, 300, 500)).astype(np.uint8)
    write_raster(tmp_path / "scene_label.tif", lab)
    ds = RasterSegmentation(["scene"], ["scene_label.tif"], root=str(tmp_path), patch_size=128, overlap=32,
                            normalize=False, skip_empty=False)
    rows, cols = patch_starts(300, 128, 32), patch_starts(500, 128, 32)
    assert rows == [0, 96, 172] and cols == [0, 96, 192, 288, 372]
    assert len(ds) == len(rows) * len(cols)
    recon = np.zeros_like(big, dtype=np.float32)
    for k in range(len(ds)):
        s = ds[k]
        r, c, h, w = s["meta"]["window"]
        assert s["image"].shape == (6, 128, 128) and (h, w) == (128, 128)
        recon[:, r:r + 128, c:c + 128] = s["image"].numpy()
        np.testing.assert_array_equal(s["mask"].numpy(), lab[0, r:r + 128, c:c + 128])
    np.testing.assert_array_equal(recon, big)
    small = RasterSegmentation(["scene"], root=str(tmp_path), patch_size=512, normalize=False, skip_empty=False)
    assert small[0]["image"].shape == (6, 512, 512)  # padded, not resampled


def test_remap_and_unlabelled():
    raw = np.array([[0, 255, 7], [3, 1, 2]])
    out = remap_mask(raw, {255: 1, "2": "ignore", 1: 2}, unlabelled=7)
    np.testing.assert_array_equal(out, [[0, 1, IGNORE_INDEX], [3, 2, IGNORE_INDEX]])
    with pytest.raises(ValueError, match="'x'"):
        remap_mask(raw, {1: "x"})


def test_bad_inputs(tmp_path):
    rng = np.random.default_rng(2)
    write_raster(tmp_path / "img" / "a.tif", rng.integers(1, 9, (3, 40, 41)).astype(np.uint8))
    write_raster(tmp_path / "lab" / "a.tif", np.zeros((1, 40, 40), np.uint8))
    with pytest.raises(ValueError, match=r"img/a.tif is 40x41 but mask .*lab/a.tif is 40x40"):
        RasterSegmentation("img/*.tif", "lab/*.tif", root=str(tmp_path))
    ds = RasterSegmentation("img/*.tif", "lab/*.tif", root=str(tmp_path), size_mismatch="crop")
    assert ds.stats["size_cropped"] == 1 and ds[0]["image"].shape == (3, 40, 40)
    with pytest.raises(FileNotFoundError, match=r"glob '.*nothing/\*.tif' matches no files"):
        RasterSegmentation("nothing/*.tif", root=str(tmp_path))
    (tmp_path / "img" / "b.tif").write_bytes(b"not a tiff at all")
    with pytest.raises(OSError, match=r"cannot read raster file .*img/b.tif"):
        RasterSegmentation("img/*.tif", root=str(tmp_path))
    (tmp_path / "img" / "b.tif").unlink()
    write_raster(tmp_path / "img" / "c.tif", np.ones((3, 8, 8), np.uint8))
    with pytest.raises(FileNotFoundError, match=r"image .*c.tif has no mask.*'c'"):
        RasterSegmentation("img/*.tif", "lab/*.tif", root=str(tmp_path), size_mismatch="crop")
    with pytest.raises(ValueError, match="size_mismatch='pad'"):
        RasterSegmentation("img/*.tif", root=str(tmp_path), size_mismatch="pad")
    with pytest.raises(ValueError, match="overlap 64"):
        RasterSegmentation("img/*.tif", root=str(tmp_path), patch_size=64, overlap=64)
    write_raster(tmp_path / "zero" / "z.tif", np.zeros((3, 16, 16), np.uint8))
    write_raster(tmp_path / "zero" / "y.tif", np.ones((3, 16, 16), np.uint8))
    with pytest.warns(UserWarning, match=r"skipped 1 all-zero.*z.tif"):
        ds = RasterSegmentation("zero/*.tif", root=str(tmp_path))
    assert ds.stats["empty_skipped"] == 1 and len(ds) == 1


# ------------------------------------------------------------------------------ lazy indexing
def tile_pairs(root, n=3, size=(16, 16), mask_size=None, dtype=np.uint8):
    """``root/img/tK.tif`` (3 bands, values 1..8) + ``root/lab/tK.tif``; returns the image arrays."""
    rng = np.random.default_rng(3)
    out = []
    for k in range(n):
        a = rng.integers(1, 9, (3, *size)).astype(dtype)
        write_raster(root / "img" / f"t{k}.tif", a)
        write_raster(root / "lab" / f"t{k}.tif", rng.integers(0, 2, (1, *(mask_size or size))).astype(np.uint8))
        out.append(a)
    return out


def test_lazy_index_opens_no_raster_and_reads_the_same_samples(tmp_path, monkeypatch):
    arrays = tile_pairs(tmp_path)
    eager = RasterSegmentation("img/*.tif", "lab/*.tif", root=str(tmp_path), normalize=False)
    assert not eager.lazy and eager.sizes == [(16, 16)] * 3
    opened = []
    real_open = raster_mod.open_raster
    monkeypatch.setattr(raster_mod, "open_raster", lambda p: opened.append(p) or real_open(p))
    lazy = RasterSegmentation("img/*.tif", "lab/*.tif", root=str(tmp_path), normalize=False, validate=False)
    assert opened == [] and lazy.lazy and len(lazy) == 3 and lazy.nodata is None and lazy.sizes == [None] * 3
    for k in range(3):
        b, n_before = eager[k], len(opened)
        a = lazy[k]
        assert len(opened) - n_before == 2  # one open per file per sample: image + mask
        np.testing.assert_array_equal(a["image"].numpy(), arrays[k].astype(np.float32))
        np.testing.assert_array_equal(a["mask"].numpy(), b["mask"].numpy())
        assert a["meta"] == b["meta"] and a["meta"]["window"] == [0, 0, 16, 16]


def test_validate_defaults_on_for_small_folders_only(tmp_path, monkeypatch):
    tile_pairs(tmp_path)
    write_raster(tmp_path / "img" / "z.tif", np.zeros((3, 16, 16), np.uint8))  # all zero
    write_raster(tmp_path / "lab" / "z.tif", np.zeros((1, 16, 16), np.uint8))
    with pytest.warns(UserWarning, match=r"skipped 1 all-zero.*z\.tif"):
        small = RasterSegmentation("img/*.tif", "lab/*.tif", root=str(tmp_path), normalize=False)
    assert not small.lazy and len(small) == 3
    monkeypatch.setattr(raster_mod, "VALIDATE_MAX_IMAGES", 3)  # 4 images: "large"
    big = RasterSegmentation("img/*.tif", "lab/*.tif", root=str(tmp_path), normalize=False)
    assert big.lazy and len(big) == 4 and big.stats["empty_skipped"] == 0  # no scan by default
    with pytest.warns(UserWarning, match=r"skipped 1 all-zero.*z\.tif"):
        asked = RasterSegmentation("img/*.tif", "lab/*.tif", root=str(tmp_path), normalize=False, skip_empty=True)
    assert asked.lazy and len(asked) == 3 and asked.stats["empty_skipped"] == 1
    checked = RasterSegmentation("img/*.tif", "lab/*.tif", root=str(tmp_path), normalize=False, validate=True,
                                 skip_empty=False)
    assert not checked.lazy and len(checked) == 4


def test_lazy_checks_run_at_read_time_and_name_the_files(tmp_path):
    tile_pairs(tmp_path, n=1, size=(40, 41), mask_size=(40, 40))
    lazy = RasterSegmentation("img/*.tif", "lab/*.tif", root=str(tmp_path), validate=False)  # stats read pixels only
    with pytest.raises(ValueError, match=r"img/t0.tif is 40x41 but mask .*lab/t0.tif is 40x40.*size_mismatch"):
        lazy[0]
    crop = RasterSegmentation("img/*.tif", "lab/*.tif", root=str(tmp_path), validate=False, size_mismatch="crop")
    s = crop[0]
    assert s["image"].shape == (3, 40, 40) and s["mask"].shape == (40, 40) and crop.stats["size_cropped"] == 1
    write_raster(tmp_path / "cx" / "c.tif", (np.ones((3, 8, 8)) + 1j).astype(np.complex64))
    cx = RasterSegmentation("cx/*.tif", root=str(tmp_path), validate=False, normalize=False)
    with pytest.raises(ValueError, match=r"image .*cx/c.tif has dtype complex64"):
        cx[0]
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "b.tif").write_bytes(b"not a tiff")
    bad = RasterSegmentation("bad/*.tif", root=str(tmp_path), validate=False, normalize=False)
    with pytest.raises(OSError, match=r"cannot read raster file .*bad/b.tif"):
        bad[0]


def test_lazy_stats_cache_fingerprints_folders_not_files(tmp_path, monkeypatch):
    tile_pairs(tmp_path)
    cache = tmp_path / "stats.json"
    first = RasterSegmentation("img/*.tif", "lab/*.tif", root=str(tmp_path), validate=False, stats_cache=str(cache))
    stat_calls = []
    real_stat = raster_mod.os.stat
    monkeypatch.setattr(raster_mod.os, "stat", lambda p, *a, **k: stat_calls.append(p) or real_stat(p, *a, **k))
    monkeypatch.setattr(raster_mod, "band_statistics", lambda *a, **k: pytest.fail("cache not reused"))
    again = RasterSegmentation("img/*.tif", "lab/*.tif", root=str(tmp_path), validate=False, stats_cache=str(cache))
    assert again.normalization == first.normalization
    stated = sorted(os.fsdecode(p) for p in stat_calls if os.fsdecode(p) != str(cache))
    assert stated == [str(tmp_path / "img"), str(tmp_path / "lab")]  # one stat per folder, none per tile
    monkeypatch.undo()
    time.sleep(0.01)
    tile_pairs(tmp_path, n=4)  # adds t3: its folders' mtimes change, the cache is recomputed
    os.utime(tmp_path / "img")
    called = []
    monkeypatch.setattr(raster_mod, "band_statistics", lambda *a, **k: called.append(1) or {"mean": [0.0] * 3,
                                                                                          "std": [1.0] * 3, "count": 1})
    RasterSegmentation("img/*.tif", "lab/*.tif", root=str(tmp_path), validate=False, stats_cache=str(cache))
    assert called == [1]


def test_manifest_indexes_with_tile_index(tmp_path):
    tile_pairs(tmp_path / "data")
    (tmp_path / "data" / "img" / "t0.tif.aux.xml").write_text("<PAMDataset/>")  # sidecar, never an image
    manifest = tmp_path / "cache" / "pairs.json"
    kw = dict(root=str(tmp_path / "data"), normalize=False, manifest=str(manifest))
    ds = RasterSegmentation("img/*", "lab/*.tif", **kw)
    assert manifest.is_file() and len(ds) == 3
    globbed = RasterSegmentation("img/*.tif", "lab/*.tif", root=str(tmp_path / "data"), normalize=False)
    assert list(ds.images) == list(globbed.images) and list(ds.masks) == list(globbed.masks)
    assert json.loads(manifest.read_text())["images"] == ["img/t0.tif", "img/t1.tif", "img/t2.tif"]
    again = RasterSegmentation("img/*", "lab/*.tif", **kw)
    np.testing.assert_array_equal(again[2]["image"].numpy(), ds[2]["image"].numpy())
    with pytest.raises(ValueError, match=r"manifest=.*needs images and masks as patterns"):
        RasterSegmentation(["img/t0.tif"], **kw)
