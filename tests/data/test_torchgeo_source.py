"""torchgeo datasets through TorchGeoSource: the sample contract, pixel for pixel.

The geo path reads GeoTIFFs the test writes with a torchgeo ``RasterDataset`` (images) intersected
with a mask ``RasterDataset`` under a ``GridGeoSampler``, and checks every sample against a direct
rasterio window read at the sample's bounds; the non-geo path uses a ``NonGeoDataset`` subclass
defined here. Both are also built from a YAML-style config (the class-kind check accepts
torchgeo classes) and packed into shards.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import yaml
from affine import Affine

from noisyseg import config
from noisyseg.cli import main as cli_main
from noisyseg.data import IGNORE_INDEX, StreamingShards, TorchGeoSource
from noisyseg.data.shards import pack
from noisyseg.runfiles import read_encoder

pytest.importorskip("torchgeo")
from torchgeo.datasets import IntersectionDataset, NonGeoDataset, RasterDataset  # noqa: E402
from torchgeo.samplers import GridGeoSampler  # noqa: E402

SIZE, PATCH, X0, Y0, RES = 16, 8, 500000.0, 4000000.0, 10.0


class MaskRasters(RasterDataset):
    """Mask GeoTIFFs: torchgeo returns them under ``mask`` as int64 ``[H, W]``."""

    is_image = False


class Scenes(NonGeoDataset):
    """LoveDA-like samples: uint8 ``image`` ``[3, H, W]``, ``mask`` ``[1, H, W]`` with 0 = no data."""

    def __len__(self) -> int:
        return 5

    def __getitem__(self, i: int) -> dict:
        g = np.random.default_rng(i)
        return {"image": torch.tensor(g.integers(0, 256, (3, 6, 6), dtype=np.uint8)),
                "mask": torch.tensor(g.integers(0, 4, (1, 6, 6))), "name": f"scene{i}"}


def write_tiles(root: Path, size: int = SIZE) -> dict[str, list[np.ndarray]]:
    """Two ``size`` px tiles side by side (4-band uint16 images, uint8 masks with 9 = unlabelled)."""
    arrays: dict[str, list[np.ndarray]] = {"img": [], "msk": []}
    for k in range(2):
        g = np.random.default_rng(k)
        for sub, arr in (("img", g.integers(0, 60000, (4, size, size)).astype(np.uint16)),
                         ("msk", np.where(g.random((1, size, size)) < 0.2, 9, g.integers(0, 3, (1, size, size)))
                          .astype(np.uint8))):
            (root / sub).mkdir(parents=True, exist_ok=True)
            with rasterio.open(root / sub / f"t{k}.tif", "w", driver="GTiff", width=size, height=size,
                               count=arr.shape[0], dtype=arr.dtype.name, crs="EPSG:32633",
                               transform=Affine(RES, 0, X0 + k * size * RES, 0, -RES, Y0)) as dst:
                dst.write(arr)
            arrays[sub].append(arr)
    return arrays


def window(arrays: list[np.ndarray], bounds: list[list[float]]) -> np.ndarray:
    """The ``[C, h, w]`` pixels of ``bounds`` ([[xmin, xmax], [ymin, ymax], ...]) from the tiles in a row."""
    row = np.concatenate(arrays, axis=2)  # [C, SIZE, 2 * SIZE]
    (x0, x1), (y0, y1) = bounds[0], bounds[1]
    r0, c0 = round((Y0 - y1) / RES), round((x0 - X0) / RES)
    return row[:, r0 : r0 + round((y1 - y0) / RES), c0 : c0 + round((x1 - x0) / RES)]


def test_geo_dataset_with_grid_sampler_gives_the_pixels_of_each_window(tmp_path: Path) -> None:
    arrays = write_tiles(tmp_path)
    ds = IntersectionDataset(RasterDataset(paths=str(tmp_path / "img")), MaskRasters(paths=str(tmp_path / "msk")))
    src = TorchGeoSource(ds, sampler="torchgeo.samplers.GridGeoSampler", sampler_args={"size": PATCH},
                         unlabelled=9, remap={2: 1, 1: 2})
    assert len(src) == (SIZE // PATCH) * (2 * SIZE // PATCH) == 8
    corners = set()
    for i in range(len(src)):
        s = src[i]
        bounds = s["meta"]["bounds"]
        corners.add((bounds[0][0], bounds[1][0]))
        assert s["image"].dtype == torch.float32 and s["image"].shape == (4, PATCH, PATCH)
        assert torch.equal(s["image"], torch.tensor(window(arrays["img"], bounds).astype(np.float32)))
        raw = window(arrays["msk"], bounds)[0].astype(np.int64)
        want = np.select([raw == 9, raw == 2, raw == 1], [IGNORE_INDEX, 1, 2], raw)
        assert s["mask"].dtype == torch.int64 and torch.equal(s["mask"], torch.tensor(want))
        assert s["meta"]["crs"].endswith("32633") and s["meta"]["source"] == "IntersectionDataset"
    assert len(corners) == 8  # every window once
    sampler = GridGeoSampler(ds, size=PATCH)
    assert torch.equal(TorchGeoSource(ds, sampler=sampler)[3]["image"], src[3]["image"])


def test_non_geo_dataset_sample_contract_and_ignore_mapping() -> None:
    src = TorchGeoSource(Scenes(), unlabelled=0, mean=[100.0, 110.0, 120.0], std=[50.0, 60.0, 70.0])
    raw = Scenes()[2]
    s = src[2]
    assert len(src) == 5 and sorted(s) == ["image", "mask", "meta"]
    want = (raw["image"].float() - torch.tensor([100.0, 110.0, 120.0])[:, None, None]) / \
        torch.tensor([50.0, 60.0, 70.0])[:, None, None]
    assert torch.allclose(s["image"], want, atol=0, rtol=1e-6)
    m = raw["mask"][0]
    assert torch.equal(s["mask"], torch.where(m == 0, IGNORE_INDEX, m))
    assert s["meta"] == {"index": 2, "source": "Scenes"}
    assert TorchGeoSource(Scenes(), mask_key=None)[0].keys() == {"image", "meta"}
    with pytest.raises(ValueError, match="not a torchgeo GeoDataset"):
        TorchGeoSource(Scenes(), sampler="torchgeo.samplers.GridGeoSampler")
    with pytest.raises(IndexError):
        src[5]


def test_yaml_config_builds_torchgeo_datasets_and_refuses_other_samplers(tmp_path: Path) -> None:
    write_tiles(tmp_path)
    node = {"class_path": "noisyseg.data.TorchGeoSource", "init_args": {
        "dataset": {"class_path": "torchgeo.datasets.IntersectionDataset", "init_args": {
            "dataset1": {"class_path": "torchgeo.datasets.RasterDataset", "init_args": {"paths": str(tmp_path / "img")}},
            "dataset2": {"class_path": f"{__name__}.MaskRasters", "init_args": {"paths": str(tmp_path / "msk")}}}},
        "sampler": "torchgeo.samplers.GridGeoSampler", "sampler_args": {"size": PATCH, "stride": PATCH}}}
    src = config.instantiate(node)
    assert isinstance(src, TorchGeoSource) and len(src) == 8
    node["init_args"]["sampler"] = "subprocess.Popen"
    with pytest.raises(ValueError, match="'subprocess.Popen' is refused"):
        config.instantiate(node)
    node["init_args"].pop("sampler")
    with pytest.raises(ValueError, match="give a sampler"):
        config.instantiate(node)


def test_torchgeo_source_packs_into_shards(tmp_path: Path) -> None:
    write_tiles(tmp_path)
    ds = IntersectionDataset(RasterDataset(paths=str(tmp_path / "img")), MaskRasters(paths=str(tmp_path / "msk")))
    src = TorchGeoSource(ds, sampler=GridGeoSampler(ds, size=PATCH), unlabelled=9)
    pack(src, tmp_path / "p", chunk_bytes="2KB", num_workers=1, progress=False)
    shards = StreamingShards(str(tmp_path / "p"), shuffle=False)
    for i in range(len(src)):
        a, b = src[i], shards[i]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"]) and a["meta"] == b["meta"]


def test_config_naming_torchgeo_datasets_pretrains_through_noisyseg_fit(tmp_path: Path, one_thread) -> None:
    write_tiles(tmp_path, size=64)
    source = {"class_path": "noisyseg.data.TorchGeoSource", "init_args": {
        "dataset": {"class_path": "torchgeo.datasets.IntersectionDataset", "init_args": {
            "dataset1": {"class_path": "torchgeo.datasets.RasterDataset", "init_args": {"paths": str(tmp_path / "img")}},
            "dataset2": {"class_path": f"{__name__}.MaskRasters", "init_args": {"paths": str(tmp_path / "msk")}}}},
        "sampler": "torchgeo.samplers.GridGeoSampler", "sampler_args": {"size": 32, "stride": 32},
        "unlabelled": 9, "num_classes": 3, "mean": [30000.0] * 4, "std": [17000.0] * 4}}
    cfg = {"seed_everything": 0,
           "trainer": {"max_epochs": 1, "default_root_dir": str(tmp_path / "run"), "logger": False,
                       "enable_progress_bar": False},
           "model": {"class_path": "noisyseg.tasks.SegmentationTask", "init_args": {
               "decoder": "unet", "arch": "resnet18", "in_channels": 4, "num_classes": 3,
               "encoder_out": str(tmp_path / "encoder.safetensors")}},
           "data": {"class_path": "noisyseg.data.DataModule", "init_args": {"batch_size": 2, "train": source}}}
    (tmp_path / "fit.yaml").write_text(yaml.safe_dump(cfg))
    assert cli_main(["fit", "--config", str(tmp_path / "fit.yaml")]) == 0
    _, meta = read_encoder(tmp_path / "encoder.safetensors")
    assert meta["trained"]["steps"] == 4  # two 64 px tiles: 8 windows of 32 px, batches of 2
    assert meta["normalization"] == {"mean": [30000.0] * 4, "std": [17000.0] * 4}


def test_sampler_without_torchgeo_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "torchgeo" or m.startswith("torchgeo.")]:
        monkeypatch.setitem(sys.modules, name, None)  # import torchgeo... raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'noisyseg\[torchgeo\]'"):
        TorchGeoSource(Scenes(), sampler="torchgeo.samplers.GridGeoSampler")
    assert len(TorchGeoSource(Scenes())) == 5  # the non-geo path needs no torchgeo
