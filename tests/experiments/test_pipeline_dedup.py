"""Two downstreams of a run that are one training (e.g. ``finetune`` and ``finetune_encoder`` from a
file without a decoder, or both from random init) are trained once and reported under both names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from noisyseg.experiments import pipeline, sweep
from noisyseg.experiments.pipeline import same_run_key
from noisyseg.experiments.table import read_rows
from noisyseg.models.networks import build_encoder
from noisyseg.runfiles import save_encoder

from test_sweep import write_spec  # noqa: E402  (tests/experiments is on the path: pytest prepend mode)

pytestmark = pytest.mark.usefixtures("one_thread")


class Fits:
    """Fake run_config: records each fit's root dir; a pretraining writes a real encoder file without decoder."""

    def __init__(self) -> None:
        self.roots: list[str] = []

    def __call__(self, cfg, quiet=False):
        root = Path(cfg["trainer"]["default_root_dir"])
        self.roots.append(root.name)
        enc = cfg["model"]["init_args"].get("encoder_out")
        if enc:
            save_encoder(enc, build_encoder("resnet18", 3), "resnet18", None, {"method": "moco"})
        transfer = cfg["model"]["init_args"].get("transfer", "auto")
        res = {"val": {}, "test": {"miou": 0.4 if transfer == "encoder" else 0.5}, "seconds": {"fit": 0.1, "test": 0.1},
               "encoder": enc}
        root.mkdir(parents=True, exist_ok=True)
        (root / "results.json").write_text(json.dumps(res))
        return res


def test_identical_downstreams_train_once(tmp_path, monkeypatch):
    fits = Fits()
    monkeypatch.setattr(pipeline, "run_config", fits)
    spec = write_spec(tmp_path, downstream=[
        {"name": "ft", "config": str(tmp_path / "down.yaml"),
         "overrides": {"model.init_args.decoder": "unet", "model.init_args.freeze_encoder": False}},
        {"name": "ft_enc", "config": str(tmp_path / "down.yaml"),
         "overrides": {"model.init_args.decoder": "unet", "model.init_args.freeze_encoder": False,
                       "model.init_args.transfer": "encoder"}},
    ], grid={"pretrain": ["sup", "random"]}, seeds=[0])
    assert sweep.main([str(spec), "--out", str(tmp_path / "out")]) == 0
    # sup: its file has no decoder, so auto means encoder: ft and ft_enc are one training; random: the same
    assert sorted(fits.roots) == ["downstream-ft", "downstream-ft", "pretrain"]
    rows = [r for r in read_rows(tmp_path / "out" / "results.csv") if r["metric"] == "miou"]
    got = {(r["method"], r["downstream"]): float(r["value"]) for r in rows}
    assert got[("sup", "ft")] == got[("sup", "ft_enc")] == 0.5  # the merged run's scores under both names
    assert got[("random", "ft")] == got[("random", "ft_enc")]


def test_same_run_key_keeps_what_differs(tmp_path):
    base = {"trainer": {"default_root_dir": "a", "max_steps": 3},
            "model": {"init_args": {"encoder_path": None, "transfer": "auto", "lr": 0.1}}}
    moved = {**base, "trainer": {"default_root_dir": "b", "max_steps": 3}}
    assert same_run_key(base) == same_run_key(moved)  # the output folder does not decide the result
    other = {**base, "model": {"init_args": {"encoder_path": None, "transfer": "encoder", "lr": 0.2}}}
    assert same_run_key(base) != same_run_key(other)  # the lr does
    broken = tmp_path / "x.safetensors"
    broken.write_text("not weights")
    assert same_run_key({**base, "model": {"init_args": {"encoder_path": str(broken)}}}) is None
