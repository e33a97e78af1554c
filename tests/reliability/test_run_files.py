"""The files a run writes: checked before training, a failed write named, leftovers removed.

* an ``encoder_out`` that is a folder or lies under a file, or a checkpoint folder without room
  for one checkpoint, stops ``fit`` before its first step (exit 2, one line);
* a disk that fills while a checkpoint or the encoder file is written gives one ``OSError``
  naming the file and the free space; the temp file is gone and an earlier file is unchanged;
* temp files of atomic writes that a kill interrupted are removed at the next ``fit``, and only
  those (names made by ``tempfile.mkstemp`` exactly as the writers make them);
* ``last.ckpt`` is written on the clock too (``save_every_minutes``), inside the first epoch.
"""

from __future__ import annotations

import errno
import os
import tempfile
from datetime import timedelta
from pathlib import Path

import lightning as L
import pytest
import torch
from safetensors import SafetensorError

from conftest import tiny_config, vts, write_config
from noisyseg import runfiles
from noisyseg.data import DataModule, VTSSegmentation
from noisyseg.models.networks import build_encoder
from noisyseg.runfiles import RunCheckpoint, SafeCheckpointIO, checkpoint_estimate, read_encoder, save_encoder
from noisyseg.tasks import SegmentationTask


def fit(run_cli, tmp: Path, model: dict | None = None, **kw) -> tuple[int, str]:
    cfg = write_config(tmp / "cfg.yaml", tiny_config(tmp / "run", model=model, batch_size=2, **kw))
    return run_cli(["fit", "--config", cfg])


def one_line(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err, err
    for n in needles:
        assert n in err, f"{n!r} not in: {err}"


def mkstemp_name(folder: Path, target: str) -> Path:
    """A temp file named exactly as the atomic writers name theirs, left as a kill leaves it."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{target}.", suffix=".tmp")
    os.write(fd, b"x" * 1000)
    os.close(fd)
    return Path(tmp)


# ------------------------------------------------------------------ checks before training
def test_encoder_out_that_is_a_folder_stops_before_training(run_cli, tmp_path, one_thread):
    folder = tmp_path / "encoders"
    folder.mkdir()
    code, err = fit(run_cli, tmp_path, {"encoder_out": str(folder)})
    one_line(code, err, f"encoder_out {folder} is a folder", "encoder.safetensors")
    assert not (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()  # no step was trained


def test_encoder_out_under_a_file_stops_before_training(run_cli, tmp_path, one_thread):
    (tmp_path / "notes").write_text("a file, not a folder")
    code, err = fit(run_cli, tmp_path, {"encoder_out": str(tmp_path / "notes" / "enc.safetensors")})
    one_line(code, err, f"encoder_out {tmp_path / 'notes' / 'enc.safetensors'} cannot be written: "
                        f"{tmp_path / 'notes'} is a file, not a folder")
    assert not (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()


def test_too_little_free_space_for_a_checkpoint_stops_before_training(run_cli, tmp_path, one_thread, monkeypatch):
    monkeypatch.setattr(runfiles, "free_space", lambda folder: 1000)
    code, err = fit(run_cli, tmp_path)
    one_line(code, err, f"checkpoint folder {tmp_path / 'run' / 'checkpoints'} cannot be written:",
             "has 1000 B free but it needs about", "MiB (weights and 2 optimiser moment(s) per parameter)")
    assert not (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()


def test_checkpoint_estimate_is_the_size_of_a_real_checkpoint(run_cli, tmp_path, one_thread):
    code, err = fit(run_cli, tmp_path, max_steps=1)
    assert code == 0, err
    size = (tmp_path / "run" / "checkpoints" / "last.ckpt").stat().st_size
    task = SegmentationTask(decoder="fcn", num_classes=2, augment=False)
    estimate, note = checkpoint_estimate(task)
    params = sum(p.numel() * 4 for p in task.parameters())
    assert estimate == 3 * params + sum(b.numel() * b.element_size() for b in task.buffers())
    assert 0.97 * size < estimate < size  # weights + two AdamW moments; the rest is pickle and metadata
    assert "2 optimiser moment" in note


def test_output_folder_probe_finds_an_unwritable_folder(tmp_path, monkeypatch):
    def refuse(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(runfiles.tempfile, "mkstemp", refuse)  # root passes every permission check
    with pytest.raises(ValueError, match=rf"encoder_out {tmp_path / 'out' / 'enc.safetensors'} cannot be "
                                         rf"written: creating a file in {tmp_path} failed \(Permission denied\)"):
        runfiles.check_output_file(tmp_path / "out" / "enc.safetensors", "encoder_out")


# ----------------------------------------------------------------------- disk full on write
ENOSPC = OSError(errno.ENOSPC, "No space left on device")
TORCH_FULL = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
SAFETENSORS_FULL = SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                                   'message: "No space left on device" })')


def partial_then(err: BaseException):
    """A writer that puts some bytes in its temp file, then fails as a full disk does."""
    def write(obj, path, *a, **k):
        Path(path).write_bytes(b"partial" * 100)
        raise err
    return write


@pytest.mark.parametrize("err", [ENOSPC, TORCH_FULL], ids=["ENOSPC", "inline_container"])
def test_disk_full_while_writing_a_checkpoint(tmp_path, monkeypatch, err):
    path = tmp_path / "checkpoints" / "last.ckpt"
    io = SafeCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)
    before = path.read_bytes()
    monkeypatch.setattr(torch, "save", partial_then(err))
    with pytest.raises(OSError, match=rf"cannot write {path}: .* free in {path.parent}; the partial file was "
                                      r"removed and any earlier last.ckpt is unchanged") as info:
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, path)
    assert info.value.errno == (errno.ENOSPC if isinstance(err, OSError) else errno.EIO)
    assert ("the disk is full" in str(info.value)) == isinstance(err, OSError)
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # temp file removed
    assert path.read_bytes() == before


@pytest.mark.parametrize("err", [ENOSPC, SAFETENSORS_FULL], ids=["ENOSPC", "SafetensorError"])
def test_disk_full_while_writing_the_encoder_file(tmp_path, monkeypatch, err):
    path = tmp_path / "enc.safetensors"
    enc = build_encoder("resnet18", 3)
    save_encoder(path, enc, "resnet18")
    before = path.read_bytes()
    monkeypatch.setattr("noisyseg.runfiles.save_file", partial_then(err))
    with pytest.raises(OSError, match=rf"cannot write {path}: .*No space left on device.* free in {tmp_path}.*"
                                      r"the disk is full"):
        save_encoder(path, enc, "resnet18")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enc.safetensors"]
    assert path.read_bytes() == before and read_encoder(path)[1]["arch"] == "resnet18"


def test_other_errors_of_a_writer_pass_unchanged(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "save", partial_then(RuntimeError("a bug, not the disk")))
    with pytest.raises(RuntimeError, match="^a bug, not the disk$"):
        SafeCheckpointIO().save_checkpoint({"state_dict": {}}, tmp_path / "last.ckpt")
    assert list(tmp_path.iterdir()) == []


def test_disk_full_at_the_end_of_fit_is_one_line(run_cli, tmp_path, one_thread, monkeypatch):
    monkeypatch.setattr(torch, "save", partial_then(TORCH_FULL))
    code, err = fit(run_cli, tmp_path, max_steps=1)
    one_line(code, err, f"cannot write {tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}", "inline_container")
    assert list((tmp_path / "run" / "checkpoints").iterdir()) == []


# --------------------------------------------------------------------------------- leftovers
def test_stale_temp_files_are_removed_at_the_next_fit(run_cli, tmp_path, one_thread):
    ckpts, encs = tmp_path / "run" / "checkpoints", tmp_path / "encoders"
    ckpts.mkdir(parents=True)
    encs.mkdir()
    stale = [mkstemp_name(ckpts, "last.ckpt"), mkstemp_name(ckpts, "epoch=0-step=7.ckpt"),
             mkstemp_name(encs, "enc.safetensors")]
    kept = [mkstemp_name(encs, "other.safetensors"),  # another file's write, maybe running now
            ckpts / ".last.ckpt.tmp", ckpts / "notes.tmp", ckpts / ".last.ckpt.ABCDEFGH.tmp"]
    for p in kept[1:]:
        p.write_text("not an atomic writer's name")
    code, err = fit(run_cli, tmp_path, {"encoder_out": str(encs / "enc.safetensors")}, max_steps=1)
    assert code == 0, err
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in kept)
    assert sorted(p.name for p in ckpts.iterdir() if not p.name.endswith(".tmp")) == ["last.ckpt"]


def test_temp_name_matches_what_the_writers_make(tmp_path):
    made = [mkstemp_name(tmp_path, "last.ckpt") for _ in range(20)]
    assert all(runfiles.TEMP_NAME.match(p.name).group("target") == "last.ckpt" for p in made)
    assert runfiles.remove_stale_temp(tmp_path, ["other.ckpt"]) == []
    assert sorted(runfiles.remove_stale_temp(tmp_path)) == sorted(made)


class StepProbe(L.Callback):
    """Before each batch: the global step and whether ``last.ckpt`` exists yet."""

    def __init__(self, path: Path) -> None:
        self.path, self.seen = path, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        step = torch.load(self.path, weights_only=True)["global_step"] if self.path.exists() else None
        self.seen.append((trainer.global_step, step))


@pytest.mark.parametrize("minutes", [0.0, None])
def test_last_ckpt_on_the_clock_inside_the_first_epoch(tmp_path, one_thread, minutes):
    probe = StepProbe(tmp_path / "checkpoints" / "last.ckpt")
    trainer = L.Trainer(max_steps=3, default_root_dir=tmp_path, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                        callbacks=[RunCheckpoint(save_every_minutes=minutes), probe])
    data = DataModule(VTSSegmentation(split="train", length=16, size=32), batch_size=2)  # 8 steps an epoch
    trainer.fit(SegmentationTask(decoder="fcn", num_classes=2, augment=False), data)
    if minutes is None:  # the epoch trigger alone: nothing before the epoch ends
        assert probe.seen == [(0, None), (1, None), (2, None)]
    else:  # interval 0: a save after every step
        assert probe.seen == [(0, None), (1, 1), (2, 2)]


def test_clock_checkpoint_is_on_by_default_and_keeps_the_state_key():
    assert RunCheckpoint()._train_time_interval == timedelta(minutes=10)
    # jsonargparse passes every ModelCheckpoint default, train_time_interval=None among them
    assert RunCheckpoint(train_time_interval=None, every_n_train_steps=5)._train_time_interval == timedelta(minutes=10)
    assert RunCheckpoint(train_time_interval=timedelta(seconds=30))._train_time_interval == timedelta(seconds=30)
    assert RunCheckpoint(save_every_minutes=None)._train_time_interval is None
    assert RunCheckpoint().state_key == RunCheckpoint(save_every_minutes=None).state_key
    with pytest.raises(ValueError, match=r"save_every_minutes=-1 must be >= 0"):
        RunCheckpoint(save_every_minutes=-1)


def test_cli_default_checkpoint_saves_on_the_clock(tmp_path):
    from noisyseg.cli import NoisysegCLI

    cfg = write_config(tmp_path / "cfg.yaml", tiny_config(tmp_path / "run", vts(length=4)))
    cli = NoisysegCLI(SegmentationTask, DataModule, subclass_mode_model=True, subclass_mode_data=True, run=False,
                      args=["--config", str(cfg)], auto_configure_optimizers=False)
    ckpts = [cb for cb in cli.trainer.callbacks if isinstance(cb, L.pytorch.callbacks.ModelCheckpoint)]
    assert [type(cb) for cb in ckpts] == [RunCheckpoint]
    assert ckpts[0]._train_time_interval == timedelta(minutes=10)
