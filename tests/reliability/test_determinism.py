"""Determinism on the CPU: the same config and seed give identical results, run twice in one process.

Precision is fixed to ``32-true``: bf16 autocast (the fast path on AMX CPUs) dispatches oneDNN
kernels whose reduction order may depend on the thread count, so only fp32 is claimed bit-exact.
DataLoader workers are seeded by ``seed_everything(workers=True)`` (:func:`run_config`).
"""

from __future__ import annotations

import torch

from conftest import tiny_config, vts
from noisyseg.cli import run_config


def _run(tmp, name, cfg):
    cfg = dict(cfg, trainer=dict(cfg["trainer"], default_root_dir=str(tmp / name)))
    return run_config({**cfg, "test_after_fit": True}, quiet=True)


def test_segmentation_fit_test_twice_identical(tmp_path):
    cfg = tiny_config(tmp_path, vts(label_noise={"flip_rate": 0.3}), {"augment": True}, max_steps=3,
                      test=vts("test", length=4), enable_checkpointing=False)
    a, b = _run(tmp_path, "a", cfg), _run(tmp_path, "b", cfg)
    assert a["test"] and a["test"] == b["test"]  # exact equality, every metric
    for (k, va), vb in zip(a["model"].state_dict().items(), b["model"].state_dict().values()):
        assert torch.equal(va, vb), k


def test_moco_fit_twice_identical_weights(tmp_path):
    cfg = tiny_config(tmp_path, max_steps=2, enable_checkpointing=False)
    cfg["model"] = {"class_path": "noisyseg.tasks.MoCoTask",
                    "init_args": {"hidden_dim": 64, "out_dim": 16, "queue_size": 16, "key_bn_chunks": 2}}
    cfg["data"]["init_args"].update(drop_last=True, train={
        "class_path": "noisyseg.data.VTSPairs", "init_args": {"split": "train", "length": 8, "size": 32}})
    runs = [run_config(dict(cfg, trainer=dict(cfg["trainer"], default_root_dir=str(tmp_path / n))),
                       quiet=True) for n in ("a", "b")]
    ma, mb = runs[0]["model"], runs[1]["model"]
    assert torch.equal(ma.trainer.callback_metrics["train/loss"], mb.trainer.callback_metrics["train/loss"])
    for (k, va), vb in zip(ma.state_dict().items(), mb.state_dict().values()):
        assert torch.equal(va, vb), k
