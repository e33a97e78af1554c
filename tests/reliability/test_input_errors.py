"""Bad input that used to end in a traceback or a page of text, now one line naming the file.

Tiles of different sizes in one batch, a checkpoint of another model, truncated PNGs and
checkpoints, a YAML file with a tab, and an error raised while jsonargparse builds a dataset
(docs/reliability.md, "Bad input").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_config, vts, write_config
from noisyseg.config import load_config
from noisyseg.data.io import png_complete
from noisyseg.data.raster import RasterSegmentation
from noisyseg.data.loading import collate, make_sample
from test_bad_inputs import assert_error, fit, raster_data, write_tif, xbd, xbd_data

RNG = np.random.default_rng(1)


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if "error" in ln]
    assert len(lines) == 1, err
    return lines[0]


# -------------------------------------------------------------------- tiles of two sizes
def test_tiles_one_pixel_apart_name_both_files(run_cli, tmp_path, one_thread):
    for name, width in (("a", 32), ("b", 33)):  # SpaceNet: 406x438 and 406x439
        write_tif(tmp_path / "img" / f"{name}.tif", RNG.integers(1, 255, (3, 30, width), dtype=np.uint8))
        write_tif(tmp_path / "msk" / f"{name}.tif", np.zeros((30, width), np.uint8))
    code, err = fit(run_cli, tmp_path, raster_data(tmp_path))
    assert_error(code, err, "samples of one batch differ in size", f"{tmp_path / 'img' / 'a.tif'} is 30x32",
                 f"{tmp_path / 'img' / 'b.tif'} is 30x33", "patch_size", "batch_size: 1")
    assert "stack expects" not in err
    ds = RasterSegmentation("img/*.tif", "msk/*.tif", root=str(tmp_path), patch_size=32)  # the fix it names
    batch = collate([ds[i] for i in range(len(ds))])
    assert batch["image"].shape == (3, 3, 32, 32) and batch["mask"].shape == (3, 32, 32)


def test_collate_names_samples_without_a_source():
    samples = [make_sample(torch.zeros(2, 4, 4)), make_sample(torch.zeros(2, 4, 5))]
    with pytest.raises(ValueError, match=r"sample 0 is 4x4 \(image \[2, 4, 4\]\) but sample 1 is 4x5 \(image "
                                         r"\[2, 4, 5\]\)"):
        collate(samples)
    same = [make_sample(torch.full((2, 4, 4), float(i)), torch.zeros(4, 4)) for i in range(3)]
    assert collate(same)["image"][:, 0, 0, 0].tolist() == [0.0, 1.0, 2.0]


# --------------------------------------------------------------- checkpoint of another model
@pytest.fixture(scope="module")
def fcn_ckpt(tmp_path_factory):
    """A real one-step checkpoint of a two-class FCN."""
    from noisyseg.cli import main

    tmp = tmp_path_factory.mktemp("fcn")
    cfg = write_config(tmp / "cfg.yaml", tiny_config(tmp / "run", max_steps=1, batch_size=2))
    assert main(["fit", "--config", str(cfg)]) == 0
    return tmp / "run" / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize("model,needles", [
    ({"decoder": "unet"}, ["key(s) of the model missing from the file such as ['model.decoder.",
                           "unexpected key(s) such as ['model.head."]),
    ({"num_classes": 3}, ["2 tensor(s) of another shape such as ['model.head.4.weight: (2, 256, 1, 1) in the "
                          "file, (3, 256, 1, 1) in the model'"]),
], ids=["unet", "three_classes"])
def test_resume_of_another_model_names_checkpoint_and_keys(run_cli, tmp_path, fcn_ckpt, one_thread, model, needles):
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    last.symlink_to(fcn_ckpt)
    cfg = write_config(tmp_path / "cfg.yaml", tiny_config(tmp_path / "run", model=model, batch_size=2))
    code, err = run_cli(["fit", "--config", cfg, "--resume"])
    line = one_error_line(err)
    assert_error(code, line, f"checkpoint {last} holds another model than the config's SegmentationTask", *needles)
    assert "Error(s) in loading state_dict" not in err


# ------------------------------------------------------------------------- truncated files
def test_truncated_checkpoint_as_ckpt_path_is_named(run_cli, tmp_path, fcn_ckpt, one_thread):
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(fcn_ckpt.read_bytes()[:5000])
    with pytest.raises(OSError, match=r"\[Errno 22\] Invalid argument"):  # what torch says, without the file
        torch.load(cut, weights_only=True)
    cfg = write_config(tmp_path / "cfg.yaml", tiny_config(tmp_path / "run", batch_size=2))
    code, err = run_cli(["fit", "--config", cfg, "--ckpt_path", cut])
    assert_error(code, err, f"checkpoint {cut} is truncated or not a torch checkpoint")


def png_pair(tmp: Path, size: int = 64) -> Path:
    (tmp / "img").mkdir(parents=True)
    (tmp / "msk").mkdir()
    Image.fromarray(RNG.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(tmp / "img" / "a.png")
    Image.fromarray(np.zeros((size, size), np.uint8)).save(tmp / "msk" / "a.png")
    return tmp / "img" / "a.png"


def test_truncated_png_raster_is_named(run_cli, tmp_path, one_thread):
    png = png_pair(tmp_path)
    png.write_bytes(png.read_bytes()[: png.stat().st_size // 2])  # GDAL reads it without an error
    code, err = fit(run_cli, tmp_path, raster_data(tmp_path, images="img/*.png", masks="msk/*.png"))
    assert_error(code, err, f"cannot read raster file {png}: the PNG file is truncated")


def test_complete_png_reads_and_may_carry_bytes_after_iend(tmp_path):
    png = png_pair(tmp_path, size=8)
    assert png_complete(png)
    png.write_bytes(png.read_bytes() + b"trailing data some writers append")
    assert png_complete(png)
    ds = RasterSegmentation("img/*.png", "msk/*.png", root=str(tmp_path), normalize=False)
    assert (ds[0]["image"].numpy().transpose(1, 2, 0) == np.asarray(Image.open(png))).all()
    png.write_bytes(png.read_bytes()[:-40])
    assert not png_complete(png)


def test_truncated_xbd_png_is_named(run_cli, tmp_path, one_thread):
    xbd(tmp_path)
    png = tmp_path / "tier3" / "images" / "site_00000000_pre_disaster.png"
    png.write_bytes(png.read_bytes()[: png.stat().st_size // 2])
    code, err = fit(run_cli, tmp_path, xbd_data(tmp_path, phase="pre"), num_classes=5)
    assert_error(code, err, f"cannot read xBD image {png}: image file is truncated")


# -------------------------------------------------------------------------------- configs
def tabbed_config(tmp: Path) -> tuple[Path, int]:
    """A valid tiny config with one line indented by a tab; returns the file and that line (1-based)."""
    cfg = write_config(tmp / "cfg.yaml", tiny_config(tmp / "run"))
    lines = cfg.read_text().splitlines()
    k = next(i for i, ln in enumerate(lines) if ln.strip().startswith("max_epochs"))
    lines[k] = "\t" + lines[k].lstrip()
    cfg.write_text("\n".join(lines) + "\n")
    return cfg, k + 1


def test_yaml_tab_names_file_and_line_in_the_cli(run_cli, tmp_path):
    cfg, line = tabbed_config(tmp_path)
    code, err = run_cli(["fit", "--config", cfg])
    assert_error(code, err, f"config file {cfg} is not valid YAML at line {line}, column 1",
                 "YAML indents with spaces, never tabs")
    assert len(err.strip().splitlines()) == 1, err


def test_yaml_tab_names_file_and_line_in_load_config(tmp_path):
    cfg, line = tabbed_config(tmp_path)
    with pytest.raises(ValueError, match=rf"^config file {cfg} is not valid YAML at line {line}, column 1: found "
                                         r"character '\\t' that cannot start any token") as info:
        load_config(cfg)
    assert "\n" not in str(info.value)


def test_error_while_a_dataset_is_built_is_its_own_line(run_cli, tmp_path, one_thread):
    code, err = fit(run_cli, tmp_path, raster_data(tmp_path, size_mismatch="bogus"))
    assert one_error_line(err) == "noisyseg fit: error: size_mismatch='bogus'; valid: 'error', 'crop'"
    assert code == 2 and "Union" not in err and "Namespace(" not in err


def test_missing_files_while_a_dataset_is_built_keep_their_type(run_cli, tmp_path, one_thread):
    from noisyseg.cli import run_lightning_cli

    code, err = fit(run_cli, tmp_path, raster_data(tmp_path))  # no img/ folder at all
    message = f"the image glob '{tmp_path / 'img' / '*.tif'}' matches no files"
    assert one_error_line(err) == f"noisyseg fit: error: {message}"
    assert code == 2 and "Union" not in err and "Namespace(" not in err
    with pytest.raises(FileNotFoundError) as info:  # the dataset's own exception, not jsonargparse's ValueError
        run_lightning_cli(["fit", "--config", str(tmp_path / "cfg.yaml")])
    assert str(info.value) == message


def test_other_config_errors_keep_their_message(run_cli, tmp_path):
    code, err = fit(run_cli, tmp_path, vts(colour="red"))
    assert_error(code, err, "'colour' is not accepted", "VTSSegmentation")
