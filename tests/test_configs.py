"""A tiny twin of every config in configs/pretrain and configs/finetune, run through the CLI.

The twin is made here from the real file (so it can never drift from it): one or two steps,
8 VTS images of 32 px or 2 real tiles, outputs redirected to tmp_path. Real-data configs read
../shared/data and skip when it is absent.
"""

from pathlib import Path

import pytest
import yaml

from noisyseg.cli import main
from noisyseg.models.networks import build_encoder
from noisyseg.runfiles import read_encoder, save_encoder

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
CONFIGS = sorted((ROOT / "configs" / "pretrain").glob("*.yaml")) + sorted((ROOT / "configs" / "finetune").glob("*.yaml"))


def _shrink_dataset(node: dict, tmp: Path) -> None:
    args = node.setdefault("init_args", {})
    cls = node["class_path"].rsplit(".", 1)[-1]
    if cls.startswith("VTS"):
        args.update(length=8, size=32)
    if "dataset" in args:
        _shrink_dataset(args["dataset"], tmp)
    if "tile_size" in args:
        args["tile_size"] = 256
    if "patch_size" in args and args["patch_size"]:
        args["patch_size"] = min(int(args["patch_size"]), 128)
    for key in ("stats_cache", "manifest"):
        if args.get(key):
            args[key] = str(tmp / "data" / Path(args[key]).name)


def tiny_twin(cfg: dict, tmp: Path) -> dict:
    cfg["trainer"] = {
        "max_epochs": 1, "max_steps": 2, "limit_val_batches": 1, "limit_test_batches": 1,
        "num_sanity_val_steps": 0, "log_every_n_steps": 1, "enable_progress_bar": False,
        "default_root_dir": str(tmp / "run"),
    }
    m = cfg["model"]["init_args"]
    if "encoder_out" in m:
        m["encoder_out"] = str(tmp / "encoder.safetensors")
    if m.get("encoder_path"):
        arch, bands = m.get("arch", "resnet18"), m.get("in_channels", 3)
        m["encoder_path"] = str(save_encoder(tmp / "given.safetensors", build_encoder(arch, bands), arch))
    if cfg["model"]["class_path"].endswith("DINOTask"):
        m.update(out_dim=256, n_local_crops=1)
    d = cfg["data"]["init_args"]
    d["batch_size"] = 2 if any("shared/data" in str(v) for v in _leaves(d)) else 4
    for split in ("train", "val", "test"):
        if d.get(split):
            _shrink_dataset(d[split], tmp)
    return cfg


def _leaves(node):
    if isinstance(node, dict):
        for v in node.values():
            yield from _leaves(v)
    elif isinstance(node, list):
        for v in node:
            yield from _leaves(v)
    else:
        yield node


@pytest.mark.parametrize("config", CONFIGS, ids=[f"{c.parent.name}/{c.stem}" for c in CONFIGS])
def test_tiny_twin_through_cli(config, tmp_path, monkeypatch):
    cfg = yaml.safe_load(config.read_text())
    if any("shared/data" in str(v) for v in _leaves(cfg)) and not SHARED.is_dir():
        pytest.skip("../shared/data not present: real-data configs need it")
    monkeypatch.chdir(ROOT)  # configs name ../shared/data relative to the repository root
    twin = tiny_twin(cfg, tmp_path)
    path = tmp_path / "twin.yaml"
    path.write_text(yaml.safe_dump(twin))
    assert main(["fit", "--config", str(path)]) == 0
    m = twin["model"]["init_args"]
    if "encoder_out" in m:
        state, meta = read_encoder(m["encoder_out"])
        assert meta["trained"]["steps"] == 2
        assert meta["in_channels"] == m.get("in_channels", 3)
    if twin["data"]["init_args"].get("test"):
        assert main(["test", "--config", str(path)]) == 0
        import json

        scores = json.loads((tmp_path / "run" / "results.json").read_text())["test"]
        assert 0.0 <= scores["accuracy"] <= 1.0 and "miou" in scores
