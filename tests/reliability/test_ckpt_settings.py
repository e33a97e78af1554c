"""A checkpoint given to ``--ckpt_path`` cannot choose where the run writes.

LightningCLI merges a checkpoint's ``hyper_parameters`` over the ``model:`` section of the user's
config. noisyseg keeps the user's values for output paths (``encoder_out``, any ``*_out`` /
``*_dir``), so a checkpoint whose ``encoder_out`` names another file does not overwrite it.
"""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_config, write_config


@pytest.fixture(scope="module")
def crafted_ckpt(tmp_path_factory):
    """A real one-step checkpoint whose hyper_parameters point ``encoder_out`` at ``victim``."""
    from noisyseg.cli import main

    tmp_path = tmp_path_factory.mktemp("ckpt")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    cfg = write_config(tmp_path / "first.yaml", tiny_config(tmp_path / "first", max_steps=1, batch_size=2))
    assert main(["fit", "--config", str(cfg)]) == 0
    ckpt = torch.load(tmp_path / "first" / "checkpoints" / "last.ckpt", weights_only=True)
    ckpt["hyper_parameters"]["encoder_out"] = str(victim)
    path = tmp_path / "crafted.ckpt"
    torch.save(ckpt, path)
    return path, victim


@pytest.mark.parametrize("own_out", [True, False])
def test_ckpt_hyper_parameters_do_not_choose_encoder_out(run_cli, tmp_path, crafted_ckpt, one_thread, own_out):
    path, victim = crafted_ckpt
    mine = tmp_path / "mine.safetensors"
    model = {"encoder_out": str(mine)} if own_out else {}
    cfg = write_config(tmp_path / "second.yaml", tiny_config(tmp_path / "second", model=model,
                                                               max_steps=2, batch_size=2))
    code, err = run_cli(["fit", "--config", cfg, "--ckpt_path", path])
    assert code == 0, err
    assert victim.read_text() == "precious", "the checkpoint's encoder_out was written"  # the checkpoint's encoder_out was not written
    assert mine.is_file() == own_out  # the user's encoder_out (or none) is what the run used
    record = (tmp_path / "second" / "config.yaml").read_text()
    assert str(victim) not in record  # nor recorded as the run's setting


def test_crafted_explicit_ckpt_path_is_one_line_and_unrun(run_cli, tmp_path, monkeypatch):
    """An explicit ``--ckpt_path`` file is read for its hyper_parameters before anything else."""
    from test_untrusted import _Evil

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "ran.txt"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"lr": _Evil(str(marker))}}, path)
    cfg = write_config(tmp_path / "cfg.yaml", tiny_config(tmp_path / "run"))
    code, err = run_cli(["fit", "--config", cfg, "--ckpt_path", path])
    assert code == 2 and "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"noisyseg fit: error: checkpoint {path} was refused") and "exec" in line, err
    assert not marker.exists()
