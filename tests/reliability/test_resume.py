"""Killed runs lose nothing: SIGKILL ``noisyseg fit`` after its first checkpoint, rerun with --resume.

The killed child is a real ``python -m noisyseg fit`` process; the rerun is the same command plus
``--resume``, in-process (same code path, no second import). Checkpoints every 2 steps
(``RunCheckpoint`` from the YAML), written atomically (:class:`~noisyseg.runfiles.SafeCheckpointIO`).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import torch

from conftest import subprocess_env, tiny_config, write_config
from noisyseg.runfiles import SafeCheckpointIO, read_encoder

MAX_STEPS = 8


def test_sigkill_then_resume_reaches_the_same_final_step(run_cli, tmp_path, monkeypatch):
    run = tmp_path / "run"
    cfg = tiny_config(run, model={"encoder_out": str(run / "encoder.safetensors")}, max_steps=MAX_STEPS, every=2)
    path = write_config(tmp_path / "tiny.yaml", cfg)
    last = run / "checkpoints" / "last.ckpt"

    child = subprocess.Popen([sys.executable, "-m", "noisyseg", "fit", "--config", str(path)],
                             env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not last.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert last.exists(), f"no checkpoint appeared: {child.stderr.read().decode()[-2000:] if child.poll() is not None else 'timeout'}"
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    step_at_kill = torch.load(last, weights_only=True)["global_step"]
    assert 2 <= step_at_kill < MAX_STEPS
    assert not (run / "encoder.safetensors").exists()  # written only at the end of fit

    loaded = []  # what the resumed run restored from (proof that it resumed rather than restarted)
    read = SafeCheckpointIO.load_checkpoint
    monkeypatch.setattr(SafeCheckpointIO, "load_checkpoint",
                        lambda self, p, *a, **k: loaded.append((str(p), read(self, p, *a, **k)["global_step"]))
                        or read(self, p, *a, **k))
    code, err = run_cli(["fit", "--config", path, "--resume"])
    assert code == 0, err
    assert loaded == [(str(last), step_at_kill)]
    assert torch.load(last, weights_only=True)["global_step"] == MAX_STEPS
    _, meta = read_encoder(run / "encoder.safetensors")
    assert meta["trained"]["steps"] == MAX_STEPS
