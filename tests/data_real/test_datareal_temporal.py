"""Temporal positive pairs: DSIFN-CD (Zhang et al. 2020), the Landsat Taizhou / Nanjing scenes
(Wu et al. 2014; Du et al. 2019), generated date stacks and noisy-pair under-sampling."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from datareal_fixtures import shared_data, write_raster

from noisyseg.data.grid import patch_starts
from noisyseg.data.pairing import undersample_pairs
from noisyseg.data.loading import IGNORE_INDEX
from noisyseg.data.temporal import BitemporalPairs, LandsatChange, TemporalStacks

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")  # PNG / BMP


@pytest.mark.real_data
def test_dsifn_changed_fraction_is_label_mean():
    root = shared_data() / "dsifn"
    ds = BitemporalPairs(str(root), noisy_threshold=0.1)
    assert len(ds) == 10
    for k in range(len(ds)):
        s = ds[k]
        with rasterio.open(root / "label" / f"{s['meta']['id']}.png") as src:
            label = src.read(1)
        assert s["meta"]["changed_fraction"] == pytest.approx((label > 0).mean())
        np.testing.assert_array_equal(s["change_mask"].numpy(), (label > 0).astype(np.int64))
        assert bool(s["noisy_pair"]) == ((label > 0).mean() > 0.1)
        assert s["image"].shape == s["image2"].shape == (3, 256, 256)


@pytest.mark.real_data
def test_landsat_envi_scenes_with_partial_masks():
    root = shared_data() / "landsat-change"
    ds = LandsatChange(str(root), patch_size=None, normalize=False)
    assert len(ds) == 2
    for k in range(2):
        s = ds[k]
        scene = "Nanjing" if "Nanjing" in s["meta"]["id"] else "Taizhou"
        with rasterio.open(s["meta"]["source"]) as src:
            assert src.driver == "ENVI" and src.count == 6 and src.dtypes[0] == "uint8"
            np.testing.assert_array_equal(s["image"].numpy(), src.read().astype(np.float32))
        with rasterio.open(root / scene / "change.bmp") as c, rasterio.open(root / scene / "unchanged.bmp") as u:
            ch, un = c.read(1) > 0, u.read(1) > 0
        m = s["change_mask"].numpy()
        assert (m == IGNORE_INDEX).mean() == pytest.approx(1 - (ch | un).mean())
        assert (m == 1).sum() == (ch & ~un).sum() and (m == 0).sum() == (un & ~ch).sum()
        assert s["meta"]["changed_fraction"] == pytest.approx((ch & ~un).sum() / (ch ^ un).sum())
    patched = LandsatChange(str(root), patch_size=128)
    assert len(patched) == len(patch_starts(800, 128)) ** 2 + len(patch_starts(400, 128)) ** 2 == 49 + 16
    assert patched[0]["image"].shape == (6, 128, 128)


def test_date_stacks_pairs(tmp_path):
    rng = np.random.default_rng(0)
    for loc in ("loc1", "loc2"):
        for d in ("2019", "2020", "2021"):
            write_raster(tmp_path / loc / d, rng.integers(1, 200, (2, 32, 32)).astype(np.uint8), driver="ENVI")
    ds = TemporalStacks(str(tmp_path), pairs="consecutive", patch_size=16)
    assert ds.stats["pairs"] == 4 and len(ds) == 16
    assert ds[0]["meta"]["id"] == "loc1:2019->2020" and "noisy_pair" not in ds[0]
    assert TemporalStacks(str(tmp_path), pairs="all").stats["pairs"] == 6
    with pytest.raises(ValueError, match="pairs='every'"):
        TemporalStacks(str(tmp_path), pairs="every")
    (tmp_path / "loc3").mkdir()
    write_raster(tmp_path / "loc3" / "2020", np.ones((2, 32, 32), np.uint8), driver="ENVI")
    with pytest.raises(ValueError, match=r"loc3 has 1 date raster"):
        TemporalStacks(str(tmp_path))


def test_bitemporal_missing_partner(tmp_path):
    for d in ("A", "B", "label"):
        write_raster(tmp_path / d / "x.tif", np.ones((1, 8, 8), np.uint8))
    write_raster(tmp_path / "A" / "y.tif", np.ones((1, 8, 8), np.uint8))
    with pytest.raises(FileNotFoundError, match=r"y.tif has no partner: .*B/y.tif"):
        BitemporalPairs(str(tmp_path), pattern="*.tif")


def test_undersample_pairs():
    flags = [True] * 30 + [False] * 70
    keep = undersample_pairs(flags, 0.5, seed=1)
    assert len(keep) == 60 and np.mean([flags[i] for i in keep]) == 0.5
    assert keep == undersample_pairs(flags, 0.5, seed=1) != undersample_pairs(flags, 0.5, seed=2)
    keep = undersample_pairs(flags, 0.1, seed=0)
    assert sum(flags[i] for i in keep) == 7 and len(keep) == 77  # noisy dropped to 7 of 77
    assert undersample_pairs(flags, 0.0) == list(range(30, 100))
    with pytest.raises(ValueError, match="0 noisy and 5 clean"):
        undersample_pairs([False] * 5, 0.2)
    with pytest.raises(ValueError, match="outside"):
        undersample_pairs(flags, 1.5)
    with pytest.raises(ValueError, match="not one noisy pair fits"):
        undersample_pairs([True] + [False] * 3, 0.1)
