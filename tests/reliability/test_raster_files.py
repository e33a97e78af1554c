"""Raster folders that used to give silently wrong data: stems shared across subfolders, {0, 255}
masks without ``remap``, and glob matches that are not regular files."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

from noisyseg.data.index import TileIndex
from noisyseg.data.raster import RasterSegmentation
from noisyseg.data.loading import MASK
from test_bad_inputs import write_tif

IMAGE = np.full((3, 8, 8), 7, np.uint8)


def regions(tmp, mask_dirs=("region_a", "region_b")):
    """``img/region_{a,b}/tile1.tif``; ``msk/<d>/tile1.tif`` for each ``d`` of ``mask_dirs``
    (``""``: ``msk/tile1.tif``), the mask of region_a all 1 and of the others all 0."""
    for region in ("region_a", "region_b"):
        write_tif(tmp / "img" / region / "tile1.tif", IMAGE)
    for d in mask_dirs:
        write_tif(tmp / "msk" / d / "tile1.tif", np.full((8, 8), int(d == "region_a"), np.uint8))
    return tmp


@pytest.mark.parametrize("star", ["*", "**"])
def test_same_stem_in_two_regions_pairs_by_relative_path(tmp_path, star):
    regions(tmp_path)
    ds = RasterSegmentation(f"img/{star}/*.tif", f"msk/{star}/*.tif", root=str(tmp_path), normalize=False)
    pairs = [(ds.images[i][0].split("/")[-2], ds.masks[i].split("/")[-2]) for i in range(len(ds))]
    assert pairs == [("region_a", "region_a"), ("region_b", "region_b")]
    assert [int(ds[i][MASK].max()) for i in range(2)] == [1, 0]  # region_a's mask is all 1


def test_same_stem_pairs_by_relative_path_with_a_manifest(tmp_path):
    regions(tmp_path / "tiles")
    index = TileIndex(tmp_path / "tiles", "img/*.tif", "msk/*.tif", manifest=tmp_path / "m.json")
    assert [(i.decode(), m.decode()) for i, m in zip(index.images, index.masks)] == [
        ("img/region_a/tile1.tif", "msk/region_a/tile1.tif"), ("img/region_b/tile1.tif", "msk/region_b/tile1.tif")]


def test_two_images_one_mask_of_their_stem_is_an_error_naming_the_files(tmp_path):
    regions(tmp_path, mask_dirs=("",))  # msk/tile1.tif: whose is it?
    with pytest.raises(ValueError) as err:
        RasterSegmentation("img/*/*.tif", "msk/*.tif", root=str(tmp_path), normalize=False)
    msg = str(err.value)
    for f in ("img/region_a/tile1.tif", "img/region_b/tile1.tif", "msk/tile1.tif"):
        assert f in msg, msg
    assert "ambiguous" in msg


def test_one_image_two_masks_of_its_stem_is_an_error_naming_the_files(tmp_path):
    write_tif(tmp_path / "img" / "tile1.tif", IMAGE)
    for region in ("region_a", "region_b"):
        write_tif(tmp_path / "msk" / region / "tile1.tif", np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="ambiguous") as err:
        RasterSegmentation("img/*.tif", "msk/*/*.tif", root=str(tmp_path), normalize=False)
    assert "msk/region_a/tile1.tif" in str(err.value) and "msk/region_b/tile1.tif" in str(err.value)
    with pytest.raises(ValueError, match="ambiguous"):  # the manifest's walk pairs the same way
        TileIndex(tmp_path, "img/*.tif", "msk/*.tif")


def _masks_0_255(tmp, n=2):
    for k in range(n):
        write_tif(tmp / "img" / f"t{k}.tif", IMAGE)
        write_tif(tmp / "msk" / f"t{k}.tif", np.where(np.eye(8) > 0, 255, 0).astype(np.uint8))
    return str(tmp)


def test_0_255_masks_without_remap_warn_once_naming_the_file(tmp_path):
    ds = RasterSegmentation("img/*.tif", "msk/*.tif", root=_masks_0_255(tmp_path), normalize=False)
    with pytest.warns(UserWarning) as rec:
        ds[0], ds[1]
    msgs = [str(w.message) for w in rec if "remap" in str(w.message)]
    assert len(msgs) == 1, msgs
    assert f"mask {tmp_path / 'msk' / 't0.tif'} holds only the values 0 and 255" in msgs[0]
    assert "remap: {255: 1}" in msgs[0]


@pytest.mark.parametrize("kw", [{"remap": {255: 1}}, {"unlabelled": 255}])
def test_0_255_masks_with_remap_or_unlabelled_do_not_warn(tmp_path, kw):
    ds = RasterSegmentation("img/*.tif", "msk/*.tif", root=_masks_0_255(tmp_path), normalize=False, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mask = ds[0][MASK]
    assert int(mask.diagonal().min()) == (1 if "remap" in kw else 255)


def test_0_1_masks_do_not_warn(tmp_path):
    write_tif(tmp_path / "img" / "t.tif", IMAGE)
    write_tif(tmp_path / "msk" / "t.tif", np.eye(8, dtype=np.uint8))
    ds = RasterSegmentation("img/*.tif", "msk/*.tif", root=str(tmp_path), normalize=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds[0]


def _special_files(folder):
    os.mkfifo(folder / "fifo.tif")
    os.symlink("/dev/zero", folder / "zero.tif")
    os.symlink(folder / "missing.tif", folder / "broken.tif")


@pytest.mark.parametrize("manifest", [False, True])
def test_fifo_and_device_named_tif_are_skipped_with_a_count(tmp_path, manifest):
    write_tif(tmp_path / "img" / "a.tif", IMAGE)
    write_tif(tmp_path / "msk" / "a.tif", np.zeros((8, 8), np.uint8))
    _special_files(tmp_path / "img")
    kw = {"manifest": str(tmp_path / "m.json")} if manifest else {}
    with pytest.warns(UserWarning, match=r"skipped 3 .*not regular files") as rec:
        ds = RasterSegmentation("img/*.tif", "msk/*.tif", root=str(tmp_path), normalize=False, **kw)
    named = next(str(w.message) for w in rec if "not regular files" in str(w.message))
    assert all(n in named for n in ("broken.tif", "fifo.tif", "zero.tif")), named
    assert ds.stats["not_files_skipped"] == 3 and len(ds) == 1
