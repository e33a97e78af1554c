"""``noisyseg data preview`` on a generated fixture config: summary, PNG previews, masks, errors."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from datareal_fixtures import shared_data, write_raster
from jsonargparse import ArgumentParser
from PIL import Image

from noisyseg.data.loading import DataModule
from noisyseg.data.preview import main

REPO = Path(__file__).resolve().parents[2]


def _config(tmp_path) -> dict:
    rng = np.random.default_rng(0)
    for i in range(2):
        write_raster(tmp_path / "img" / f"t{i}.tif", rng.integers(1, 4000, (4, 48, 48)).astype(np.uint16))
        write_raster(tmp_path / "lab" / f"t{i}.tif", rng.choice([0, 255], (1, 48, 48)).astype(np.uint8))
    ds = {"class_path": "noisyseg.data.raster.RasterSegmentation",
          "init_args": {"root": str(tmp_path), "images": "img/*.tif", "masks": "lab/*.tif",
                        "remap": {255: 1}, "patch_size": 32}}
    return {"class_path": "noisyseg.data.DataModule", "init_args": {"train": ds, "val": ds, "batch_size": 2}}


def test_preview_writes_summary_previews_and_masks(tmp_path, capsys):
    cfg = tmp_path / "data.yaml"
    cfg.write_text(yaml.safe_dump({"trainer": {"max_epochs": 1}, "data": _config(tmp_path)}))  # whole-CLI form
    out = tmp_path / "out"
    assert main(["--config", str(cfg), "--out", str(out), "--write-masks", "--max-previews", "2"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    train = summary["splits"]["train"]
    assert train["samples"] == 8 and train["sources"] == 2 and len(train["bands"]["mean"]) == 4
    assert set(train["mask_class_frequency"]) == {"0", "1"}
    assert sum(train["mask_class_frequency"].values()) == pytest.approx(1.0)
    assert "## val" in (out / "summary.md").read_text()
    previews = sorted((out / "previews").glob("*.png"))
    assert len(previews) == 4 and Image.open(previews[0]).size == (32 * 2 + 4, 32)
    masks = sorted((out / "masks" / "train").glob("*.png"))
    assert len(masks) == 8 and masks[0].name == "t0_r0_c0.png"
    assert set(np.unique(np.asarray(Image.open(masks[0])))) <= {0, 1}
    (tmp_path / "section.yaml").write_text(yaml.safe_dump(_config(tmp_path)))  # data-section form
    assert main(["--config", str(tmp_path / "section.yaml"), "--out", str(tmp_path / "o2")]) == 0


def test_preview_errors_are_one_line(tmp_path, capsys):
    assert main(["--config", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "config file not found" in err and "missing.yaml" in err and len(err.splitlines()) == 1
    bad = _config(tmp_path)
    bad["init_args"]["train"]["class_path"] = "noisyseg.data.raster.NoSuchDataset"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    assert main(["--config", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "NoSuchDataset" in err and len(err.splitlines()) == 1
    bad["init_args"]["train"]["class_path"] = "noisyseg.data.raster.RasterSegmentation"
    bad["init_args"]["train"]["init_args"]["images"] = "nothing/*.tif"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    assert main(["--config", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "nothing/*.tif" in err and len(err.splitlines()) == 1


@pytest.mark.real_data
@pytest.mark.parametrize("name", ["xbd_shared", "spacenet_rio", "opencities", "s2_cloud", "dsifn_pairs",
                                  "landsat_change"])
def test_data_configs_instantiate_through_jsonargparse(name, tmp_path, monkeypatch):
    """Each configs/data YAML builds through jsonargparse, as LightningCLI does, from the repo root."""
    shared = shared_data()
    (tmp_path / "shared").symlink_to(shared.parent)  # <cwd>/../shared/data, caches land in tmp_path
    (tmp_path / "repo").mkdir()
    monkeypatch.chdir(tmp_path / "repo")
    parser = ArgumentParser()
    parser.add_subclass_arguments(DataModule, "data")
    cfg = yaml.safe_load((REPO / "configs" / "data" / f"{name}.yaml").read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # SpaceNet's empty-tile report
        dm = parser.instantiate_classes(parser.parse_object(cfg)).data
        assert main(["--config", str(REPO / "configs" / "data" / f"{name}.yaml"), "--out", "prev",
                     "--max-previews", "1", "--max-samples", "2"]) == 0
    sample = dm.train_set[0]
    assert len(dm.train_set) > 0 and sample["image"].ndim == 3
