"""Bad input, tried and tabulated (docs/reliability.md): one test per case.

Each case either ends in a clear error that names the file or value, with a non-zero exit of
``noisyseg fit`` (run in-process through :func:`noisyseg.cli.main`), or in a documented skip with
a warning and a count. Fixtures are written here, seeded, a few KiB each.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from conftest import tiny_config, vts, write_config
from noisyseg.data import XBDSegmentation
from noisyseg.data.raster import RasterSegmentation
from noisyseg.data.loading import IGNORE_INDEX, MASK
from noisyseg.losses.segmentation import CEDiceLoss
from noisyseg.models.networks import build_encoder
from noisyseg.runfiles import EncoderFileError, save_encoder

RNG = np.random.default_rng(0)


def write_tif(path: Path, arr: np.ndarray) -> Path:
    """``arr`` ``[C, H, W]`` (or ``[H, W]``) as a GeoTIFF without georeferencing."""
    arr = arr if arr.ndim == 3 else arr[None]
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=arr.shape[2], height=arr.shape[1], count=arr.shape[0],
                       dtype=arr.dtype) as dst:
        dst.write(arr)
    return path


def raster_pair(tmp: Path, image: np.ndarray | None = None, mask: np.ndarray | None = None, name="a") -> Path:
    """``tmp/img/<name>.tif`` + ``tmp/msk/<name>.tif``; returns ``tmp``."""
    image = RNG.integers(1, 255, (3, 32, 32), dtype=np.uint8) if image is None else image
    mask = (RNG.random((32, 32)) > 0.5).astype(np.uint8) if mask is None else mask
    write_tif(tmp / "img" / f"{name}.tif", image)
    write_tif(tmp / "msk" / f"{name}.tif", mask)
    return tmp


def raster_data(tmp: Path, **kw) -> dict:
    return {"class_path": "noisyseg.data.RasterSegmentation",
            "init_args": {"images": "img/*.tif", "masks": "msk/*.tif", "root": str(tmp), **kw}}


def fit(run_cli, tmp: Path, train: dict, **model) -> tuple[int, str]:
    cfg = write_config(tmp / "cfg.yaml", tiny_config(tmp / "run", train, model, batch_size=2))
    return run_cli(["fit", "--config", cfg])


def assert_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err, err
    for n in needles:
        assert n in err, f"{n!r} not in: {err}"


# ------------------------------------------------------------------------------------ images
def test_corrupt_image_file(run_cli, tmp_path):
    raster_pair(tmp_path)
    (tmp_path / "img" / "a.tif").write_bytes(b"II*\x00 this is not a tiff")
    code, err = fit(run_cli, tmp_path, raster_data(tmp_path))
    assert_error(code, err, "cannot read raster file", "a.tif")


def test_truncated_image_file(run_cli, tmp_path):
    raster_pair(tmp_path, image=RNG.integers(1, 255, (3, 64, 64), dtype=np.uint8),
                mask=np.zeros((64, 64), np.uint8))
    p = tmp_path / "img" / "a.tif"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])  # pixel data cut off, header intact
    code, err = fit(run_cli, tmp_path, raster_data(tmp_path))
    assert_error(code, err, "a.tif")


def test_nan_pixels_in_raster_become_nodata_with_warning_and_count(tmp_path):
    img = RNG.random((3, 32, 32)).astype(np.float32)
    img[1, 4:6, 4:7] = np.nan  # one band NaN in 6 pixels
    raster_pair(tmp_path, image=img, mask=np.ones((32, 32), np.uint8))
    ds = RasterSegmentation("img/*.tif", "msk/*.tif", root=str(tmp_path))
    assert np.isfinite(ds.normalization["mean"]).all()  # statistics skip the NaN pixels
    with pytest.warns(UserWarning, match=r"a\.tif: 6 pixel\(s\) with NaN/Inf bands"):
        s = ds[0]
    assert torch.isfinite(s["image"]).all()
    assert (s[MASK] == IGNORE_INDEX).sum() == 6 and (s["image"][:, 4:6, 4:7] == 0).all()


def test_nan_pixels_from_a_dataset_stop_with_the_source(run_cli, tmp_path):
    train = {"class_path": "bad_datasets.Broken", "init_args": {"kind": "nan", "start": 2}}
    code, err = fit(run_cli, tmp_path, train)
    assert_error(code, err, "NaN/Inf pixels", "broken-nan-")


def test_complex_image_dtype(run_cli, tmp_path):
    raster_pair(tmp_path, image=(RNG.random((3, 32, 32)) + 1j).astype(np.complex64))
    code, err = fit(run_cli, tmp_path, raster_data(tmp_path, normalize=False, skip_empty=False))
    assert_error(code, err, "has dtype complex64", "a.tif")


def test_band_count_mismatch_between_data_and_model(run_cli, tmp_path):
    raster_pair(tmp_path, image=RNG.integers(1, 255, (4, 32, 32), dtype=np.uint8))
    code, err = fit(run_cli, tmp_path, raster_data(tmp_path), in_channels=3)
    assert_error(code, err, "has 4 bands but the model's encoder takes 3", "a.tif")


def test_band_count_differs_between_images(run_cli, tmp_path):
    raster_pair(tmp_path, name="a")
    raster_pair(tmp_path, image=RNG.integers(1, 255, (4, 32, 32), dtype=np.uint8), name="b")
    code, err = fit(run_cli, tmp_path, raster_data(tmp_path))
    assert_error(code, err, "b.tif has 4 bands, earlier images 3")


# ------------------------------------------------------------------------------------- masks
def test_out_of_range_class_id(run_cli, tmp_path):
    mask = np.zeros((32, 32), np.uint8)
    mask[3, 3] = 7
    raster_pair(tmp_path, mask=mask)
    code, err = fit(run_cli, tmp_path, raster_data(tmp_path))
    assert_error(code, err, "class id(s) [7] but num_classes=2", "0..1", "ignore_index=255", "a.tif")


def test_float_mask_with_fractions(run_cli, tmp_path):
    raster_pair(tmp_path, mask=(RNG.random((32, 32)) * 0.9).astype(np.float32))
    code, err = fit(run_cli, tmp_path, raster_data(tmp_path))
    assert_error(code, err, "non-integer values", "a.tif")


def test_float_mask_from_a_dataset(run_cli, tmp_path):
    code, err = fit(run_cli, tmp_path, {"class_path": "bad_datasets.Broken", "init_args": {"kind": "float_mask"}})
    assert_error(code, err, "torch.float32", "integer class ids", "broken-float_mask-")


def test_empty_mask_gives_zero_loss_with_gradient_not_nan():
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    loss = CEDiceLoss()(logits, torch.full((2, 8, 8), IGNORE_INDEX))
    loss.backward()
    assert loss.item() == 0.0 and logits.grad is not None and torch.isfinite(logits.grad).all()


def test_empty_masks_train_without_nan(run_cli, tmp_path):
    cfg = tiny_config(tmp_path / "run", {"class_path": "bad_datasets.Broken", "init_args": {"kind": "empty"}},
                      max_steps=1, batch_size=4)
    code, err = run_cli(["fit", "--config", write_config(tmp_path / "cfg.yaml", cfg)])
    assert code == 0, err


def test_image_and_mask_sizes_differ(run_cli, tmp_path):
    raster_pair(tmp_path, mask=np.zeros((30, 32), np.uint8))
    code, err = fit(run_cli, tmp_path, raster_data(tmp_path))
    assert_error(code, err, "is 32x32 but mask", "a.tif is 30x32", "size_mismatch")


def test_image_without_mask_partner(run_cli, tmp_path):
    raster_pair(tmp_path)
    (tmp_path / "msk" / "a.tif").rename(tmp_path / "msk" / "zz.tif")
    code, err = fit(run_cli, tmp_path, raster_data(tmp_path))
    assert_error(code, err, "has no mask", "a.tif")


def test_all_zero_patch_skipped_with_warning_and_count(tmp_path):
    raster_pair(tmp_path, name="a")
    raster_pair(tmp_path, image=np.zeros((3, 32, 32), np.uint8), name="b")
    with pytest.warns(UserWarning, match=r"skipped 1 all-zero/no-data patch"):
        ds = RasterSegmentation("img/*.tif", "msk/*.tif", root=str(tmp_path))
    assert ds.stats["empty_skipped"] == 1 and len(ds) == 1


# --------------------------------------------------------------------------------------- xBD
def xbd(tmp: Path, post_label: str | None = None, post_image: bool = True) -> Path:
    from PIL import Image

    name = "site_00000000"
    for ph in ("pre", "post"):
        (tmp / "tier3" / "images").mkdir(parents=True, exist_ok=True)
        (tmp / "tier3" / "labels").mkdir(parents=True, exist_ok=True)
        if ph == "pre" or post_image:
            Image.fromarray(RNG.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
                tmp / "tier3" / "images" / f"{name}_{ph}_disaster.png")
        feat = {"wkt": "POLYGON ((1 1, 20 1, 20 20, 1 20, 1 1))",
                "properties": {"subtype": "no-damage"} if ph == "post" else {}}
        text = json.dumps({"metadata": {"height": 64, "width": 64}, "features": {"xy": [feat]}})
        if ph == "post" and post_label is not None:
            text = post_label
        (tmp / "tier3" / "labels" / f"{name}_{ph}_disaster.json").write_text(text)
    return tmp / "tier3" / "labels" / f"{name}_post_disaster.json"


def xbd_data(tmp: Path, **kw) -> dict:
    return {"class_path": "noisyseg.data.XBDSegmentation",
            "init_args": {"root": str(tmp), "splits": ["tier3"], "tile_size": 32, **kw}}


def test_xbd_truncated_json(run_cli, tmp_path):
    label = xbd(tmp_path, post_label='{"metadata": {"height": 64, "wid')
    code, err = fit(run_cli, tmp_path, xbd_data(tmp_path), num_classes=5)
    assert_error(code, err, "malformed xBD label file", str(label))


def test_xbd_truncated_json_skipped_with_warning_and_count(tmp_path):
    xbd(tmp_path, post_label="{")
    with pytest.warns(UserWarning, match="skipping xBD id site_00000000"):
        ds = XBDSegmentation(str(tmp_path), ["tier3"], tile_size=32, skip_malformed=True)
    assert ds.stats["malformed_files_skipped"] == 1 and len(ds) == 0


def test_xbd_unknown_damage_subtype(run_cli, tmp_path):
    bad = {"wkt": "POLYGON ((1 1, 9 1, 9 9, 1 1))", "properties": {"subtype": "flattened"}}
    label = xbd(tmp_path, post_label=json.dumps({"metadata": {"height": 64, "width": 64},
                                                 "features": {"xy": [bad]}}))
    code, err = fit(run_cli, tmp_path, xbd_data(tmp_path), num_classes=5)
    assert_error(code, err, str(label), "feature 0", "'flattened'", "no-damage")


def test_xbd_missing_partner_image(run_cli, tmp_path):
    xbd(tmp_path, post_image=False)
    code, err = fit(run_cli, tmp_path, xbd_data(tmp_path), num_classes=5)
    assert_error(code, err, "site_00000000", "incomplete", "post_disaster.png")


def test_xbd_missing_partner_skipped_with_warning_and_count(tmp_path):
    xbd(tmp_path, post_image=False)
    with pytest.warns(UserWarning, match="skipping incomplete xBD id site_00000000"):
        ds = XBDSegmentation(str(tmp_path), ["tier3"], tile_size=32, skip_incomplete=True)
    assert ds.stats["incomplete_skipped"] == 1


# ------------------------------------------------------------------------------------ configs
def test_unknown_config_key(run_cli, tmp_path):
    code, err = fit(run_cli, tmp_path, vts(), bogus_key=1)
    assert_error(code, err, "config error", "'bogus_key' is not accepted", "SegmentationTask")
    assert len(err.splitlines()) < 10


def test_unknown_dataset_key(run_cli, tmp_path):
    code, err = fit(run_cli, tmp_path, vts(colour="red"))
    assert_error(code, err, "'colour' is not accepted", "VTSSegmentation")


def test_config_value_of_wrong_type(run_cli, tmp_path):
    code, err = fit(run_cli, tmp_path, vts(), num_classes="two")
    assert_error(code, err, '"num_classes"', "Expected a <class 'int'>. Got value: two")


def test_missing_config_file(run_cli, tmp_path):
    code, err = run_cli(["fit", "--config", tmp_path / "nope.yaml"])
    assert_error(code, err, "nope.yaml")


# ------------------------------------------------------------------------------ encoder files
@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_encoder_file(run_cli, tmp_path, damage):
    path = save_encoder(tmp_path / "enc.safetensors", build_encoder("resnet18", 3), "resnet18")
    data = path.read_bytes()
    path.write_bytes(b"\x00" * 64 if damage == "garbage" else data[: len(data) // 2])
    code, err = fit(run_cli, tmp_path, vts(), encoder_path=str(path))
    assert_error(code, err, "enc.safetensors is not a readable safetensors file")


def test_encoder_file_of_another_architecture(run_cli, tmp_path):
    path = save_encoder(tmp_path / "r34.safetensors", build_encoder("resnet34", 3), "resnet34")
    code, err = fit(run_cli, tmp_path, vts(), encoder_path=str(path))
    assert_error(code, err, "r34.safetensors holds a resnet34 encoder but the model is resnet18")


def test_encoder_file_with_other_band_count(run_cli, tmp_path):
    path = save_encoder(tmp_path / "b4.safetensors", build_encoder("resnet18", 4), "resnet18")
    code, err = fit(run_cli, tmp_path, vts(), encoder_path=str(path))
    assert_error(code, err, "b4.safetensors was trained on 4 input bands but the model takes 3")


def test_missing_encoder_file(run_cli, tmp_path):
    code, err = fit(run_cli, tmp_path, vts(), encoder_path=str(tmp_path / "none.safetensors"))
    assert_error(code, err, "none.safetensors does not exist")
    with pytest.raises(EncoderFileError):
        from noisyseg.runfiles import read_encoder
        read_encoder(tmp_path / "none.safetensors")
