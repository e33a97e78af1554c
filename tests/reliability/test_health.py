"""Training health: a NaN/Inf loss stops the run and keeps the last good checkpoint; the collapse
monitor's statistics on embeddings with known values, and its warning in a collapsing MoCo run."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from conftest import tiny_config, write_config
from noisyseg.cli import run_config
from noisyseg.tasks import MoCoTask
from noisyseg.tasks.base import RepresentationHealth, effective_rank, embedding_std, is_collapsed
from noisyseg.tasks.moco import EncoderWithHead


# --------------------------------------------------------------------------------- statistics
def test_collapsed_embeddings_score_zero_std_and_rank_one():
    z = torch.randn(1, 16).repeat(8, 1)  # 8 identical embeddings
    assert embedding_std(z) == pytest.approx(0.0, abs=1e-6)
    assert effective_rank(z) == pytest.approx(1.0, abs=1e-5)
    assert is_collapsed(embedding_std(z), effective_rank(z))


def test_spread_embeddings_known_values():
    # rows e_1..e_8: per-dimension std (unbiased) of a column with one 1 and seven 0 is sqrt(1/8),
    # times sqrt(D=8) -> exactly 1; centring I leaves 7 equal singular values and one 0 -> rank 7
    z = 3.0 * torch.eye(8)
    assert embedding_std(z) == pytest.approx(1.0, rel=1e-6)
    assert effective_rank(z) == pytest.approx(7.0, rel=1e-4)
    assert not is_collapsed(embedding_std(z), effective_rank(z))


def test_rank_two_embeddings():
    # two groups of 4 identical points: the centred matrix has rank 1 -> effective rank 1
    a, b = torch.zeros(16), torch.zeros(16)
    a[0], b[1] = 1.0, 1.0
    z = torch.stack([a] * 4 + [b] * 4)
    assert effective_rank(z) == pytest.approx(1.0, abs=1e-4)
    # 2 of 16 dims vary, each with unbiased std sqrt(8 * 0.25 / 7) = sqrt(2/7): mean sqrt(2/7) / 8, x sqrt(16)
    assert embedding_std(z) == pytest.approx(math.sqrt(2 / 7) / 2, rel=1e-5)


# ----------------------------------------------------------------------------- NaN/Inf loss
def test_nan_loss_stops_run_and_keeps_last_good_checkpoint(run_cli, tmp_path):
    run = tmp_path / "run"
    good_data = {"class_path": "bad_datasets.Broken", "init_args": {"kind": "huge", "start": 1000}}
    path = write_config(tmp_path / "cfg.yaml", tiny_config(run, good_data, max_steps=2, every=2))
    code, err = run_cli(["fit", "--config", path])
    assert code == 0, err
    last = run / "checkpoints" / "last.ckpt"
    good = last.read_bytes()

    # the same run continued on data whose finite 3e38 pixels overflow to Inf/NaN in the network
    bad_data = {"class_path": "bad_datasets.Broken", "init_args": {"kind": "huge", "start": 0}}
    path = write_config(tmp_path / "cfg.yaml", tiny_config(run, bad_data, max_steps=4, every=2))
    code, err = run_cli(["fit", "--config", path, "--resume"])
    assert code == 2
    assert "loss became nan at global step 2" in err and "the last saved checkpoint is the last good one" in err, err
    assert last.read_bytes() == good  # untouched
    ckpt = torch.load(last, weights_only=True)  # intact and loadable
    assert ckpt["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


# ---------------------------------------------------------------------------------- collapse
def test_collapse_warning_fires_in_a_moco_run(tmp_path, monkeypatch):
    # every embedding the same vector (times 0 keeps a gradient path, so training runs on)
    monkeypatch.setattr(EncoderWithHead, "forward",
                        lambda self, x: self.head(self.encoder(x)[-1]) * 0 + torch.ones(1, device=x.device))
    monkeypatch.setattr(MoCoTask, "log_health", functools.partialmethod(RepresentationHealth.log_health, every=1))
    cfg = tiny_config(tmp_path / "run", max_steps=2, enable_checkpointing=False)
    cfg["model"] = {"class_path": "noisyseg.tasks.MoCoTask",
                    "init_args": {"hidden_dim": 64, "out_dim": 16, "queue_size": 16, "key_bn_chunks": 1}}
    cfg["data"]["init_args"].update(drop_last=True, train={
        "class_path": "noisyseg.data.VTSPairs", "init_args": {"split": "train", "length": 8, "size": 32}})
    with pytest.warns(UserWarning, match=r"representation collapse at step 1: .* effective rank = 1\.00"):
        run_config(cfg, quiet=True)
