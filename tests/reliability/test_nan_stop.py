"""The NaN stop says what the last checkpoint really holds: it is read, not assumed good.

BatchNorm running statistics can overflow (to Inf, then NaN) a few steps before the loss does, so
a ``last.ckpt`` written before the NaN loss is not necessarily a good one.
"""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_config, write_config


def broken(start: int) -> dict:
    """Finite 3e38 pixels from sample ``start`` on: they overflow to Inf/NaN inside the network."""
    return {"class_path": "bad_datasets.Broken", "init_args": {"kind": "huge", "start": start}}


@pytest.mark.parametrize("overflowed_bn", [True, False])
def test_nan_stop_reports_what_last_ckpt_holds(run_cli, tmp_path, one_thread, overflowed_bn):
    run = tmp_path / "run"
    cfg = write_config(tmp_path / "cfg.yaml", tiny_config(run, broken(1000), max_steps=2, every=2, batch_size=2))
    code, err = run_cli(["fit", "--config", cfg])
    assert code == 0, err
    last = run / "checkpoints" / "last.ckpt"
    if overflowed_bn:  # what a checkpoint written after BN statistics overflowed holds
        ckpt = torch.load(last, weights_only=True)
        key = next(k for k in ckpt["state_dict"] if k.endswith("running_var"))
        ckpt["state_dict"][key][0] = float("inf")
        torch.save(ckpt, last)

    cfg = write_config(tmp_path / "cfg.yaml", tiny_config(run, broken(0), max_steps=4, every=2, batch_size=2))
    code, err = run_cli(["fit", "--config", cfg, "--resume"])
    assert code == 2 and "loss became nan at global step 2" in err, err
    if overflowed_bn:
        assert f"the last saved checkpoint {last} (global step 2) is NOT a good one: " in err, err
        assert f"tensor(s) hold NaN/Inf, such as ['{key}'" in err, err  # (the encoder is also stored by its alias)
        assert "is the last good one" not in err
    else:
        assert f"the last saved checkpoint is the last good one ({last}, global step 2: weights and BatchNorm " \
               "statistics all finite)" in err, err


def test_nan_stop_without_any_checkpoint_says_so(run_cli, tmp_path, one_thread):
    cfg = write_config(tmp_path / "cfg.yaml", tiny_config(tmp_path / "run", broken(0), max_steps=2, batch_size=2))
    code, err = run_cli(["fit", "--config", cfg])
    assert code == 2 and "loss became nan at global step 0" in err, err
    assert "the run stopped and no checkpoint of this run was saved before it" in err, err


@pytest.mark.parametrize("where", ["saved by this process", "resumed from"])
def test_note_reads_the_checkpoint_the_trainer_knows(tmp_path, where):
    from types import SimpleNamespace

    from noisyseg.tasks import SegmentationTask

    task = SegmentationTask(decoder="fcn", num_classes=2)
    path = tmp_path / "some.ckpt"
    state = {k: v.clone() for k, v in task.state_dict().items()}
    state["encoder.bn1.running_mean"][:] = float("nan")
    torch.save({"state_dict": state, "global_step": 7}, path)
    saved = str(path) if where == "saved by this process" else ""
    task._trainer = SimpleNamespace(ckpt_path=None if saved else str(path),
                                    checkpoint_callbacks=[SimpleNamespace(last_model_path=saved)])
    note = task.last_checkpoint_note()
    assert note.startswith(f"the last saved checkpoint {path} (global step 7) is NOT a good one"), note
    assert "encoder.bn1.running_mean" in note
