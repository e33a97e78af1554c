"""Untrusted files: a crafted Lightning checkpoint is refused by --resume / ckpt_path, unrun.

Lightning 2.6 reads ``ckpt_path`` with ``torch.load(weights_only=None)``; torch >= 2.6 treats
``None`` as ``True``, but the ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` environment variable flips that
default. noisyseg installs :class:`~noisyseg.runfiles.SafeCheckpointIO`, which always passes
``weights_only=True`` explicitly, so the refusal holds under that variable too.
(Encoder files are safetensors; the crafted pickle on ``noisyseg export --import`` is tested in
tests/interop/test_import.py.)
"""

from __future__ import annotations

import torch

from conftest import tiny_config, write_config
from noisyseg.cli import run_config


class _Evil:
    """Unpickling this calls ``exec``, which writes a marker file: proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


def crafted_last_ckpt(run: Path, marker: Path) -> Path:
    path = run / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": {}, "global_step": 1, "epoch": 0, "x": _Evil(str(marker))}, path)
    return path


from pathlib import Path  # noqa: E402


def test_crafted_last_ckpt_refused_by_cli_resume(run_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # would make Lightning's own load unsafe
    marker = tmp_path / "ran.txt"
    ckpt = crafted_last_ckpt(tmp_path / "run", marker)
    cfg = write_config(tmp_path / "cfg.yaml", tiny_config(tmp_path / "run", every=1))
    code, err = run_cli(["fit", "--config", cfg, "--resume"])
    assert code == 2, err
    assert f"checkpoint {ckpt} was refused" in err and "exec" in err, err
    assert not marker.exists(), "the crafted pickle ran code"


def test_crafted_ckpt_refused_by_run_config(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "ran.txt"
    ckpt = crafted_last_ckpt(tmp_path / "run", marker)
    cfg = tiny_config(tmp_path / "run")
    import pytest

    from noisyseg.runfiles import CheckpointFileError

    with pytest.raises(CheckpointFileError, match="was refused"):
        run_config(cfg, quiet=True, ckpt_path=str(ckpt))
    assert not marker.exists()


def test_truncated_ckpt_named(run_cli, tmp_path):
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[:300])
    cfg = write_config(tmp_path / "cfg.yaml", tiny_config(tmp_path / "run"))
    code, err = run_cli(["fit", "--config", cfg, "--resume"])
    assert code == 2 and f"checkpoint {ckpt} is truncated" in err, err
