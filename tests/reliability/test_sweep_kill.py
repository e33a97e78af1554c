"""SIGKILL during a sweep, then the same command again: no run done twice, none missing."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _vts(split: str, n: int, **kw) -> dict:
    return {"class_path": "noisyseg.data.VTSSegmentation",
            "init_args": {"split": split, "length": n, "size": 32, "num_cells": 4, "cache": True, **kw}}


def _config(model: dict, data: dict) -> dict:
    trainer = {"max_epochs": 1, "max_steps": 2, "limit_val_batches": 0, "enable_checkpointing": False,
               "logger": False, "enable_progress_bar": False, "default_root_dir": "unused", "precision": "32-true"}
    return {"seed_everything": 0, "trainer": trainer, "model": model, "data": data}


def _spec(tmp: Path) -> Path:
    pre = _config({"class_path": "noisyseg.tasks.SegmentationTask",
                   "init_args": {"decoder": "unet", "num_classes": 2, "encoder_out": None}},
                  {"class_path": "noisyseg.data.DataModule",
                   "init_args": {"batch_size": 2, "train": _vts("train", 4, label_noise={"flip_rate": 0.3})}})
    down = _config({"class_path": "noisyseg.tasks.SegmentationTask",
                    "init_args": {"decoder": "fcn", "num_classes": 3, "freeze_encoder": True, "encoder_path": None}},
                   {"class_path": "noisyseg.data.DataModule",
                    "init_args": {"batch_size": 2, "train": _vts("train", 4, third_class=True, seed=1),
                                  "test": _vts("test", 4, third_class=True, seed=1)}})
    (tmp / "pre.yaml").write_text(yaml.safe_dump(pre))
    (tmp / "down.yaml").write_text(yaml.safe_dump(down))
    spec = {
        "name": "kill",
        "pretrain": {"sup": str(tmp / "pre.yaml"), "random": None},
        "downstream": [{"name": "probe", "config": str(tmp / "down.yaml")}],
        "seeds": [0, 1],
        "grid": {"pretrain": ["sup", "random"],
                 "pretrain.data.init_args.train.init_args.label_noise.flip_rate": [0.1, 0.5]},
    }
    path = tmp / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path  # 2 flip rates x 2 seeds of "sup" + 1 random arm x 2 seeds = 6 runs


@pytest.mark.timeout(400)
def test_sigkill_during_sweep_then_rerun_completes_without_duplicates(tmp_path):
    spec, out = _spec(tmp_path), tmp_path / "out"
    cmd = [sys.executable, "-m", "noisyseg", "sweep", str(spec), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if len(list(out.glob("*/done.json"))) >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the sweep ended before it could be killed: make the runs longer"
    os.killpg(proc.pid, signal.SIGKILL)  # the whole process group, as a scheduler's kill would
    proc.wait()
    finished = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("*/done.json")}
    assert 2 <= len(finished) < 6

    rerun = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"{len(finished)} already done" in rerun.stdout + rerun.stderr
    # no run done twice: the runs finished before the kill were not run again
    assert {p.parent.name: p.stat().st_mtime_ns for p in out.glob("*/done.json") if p.parent.name in finished} == finished
    rows = list(csv.DictReader((out / "results.csv").open()))
    runs = {r["run"] for r in rows}
    assert len(runs) == 6 and len(list(out.glob("*/done.json"))) == 6  # none missing
    keys = Counter((r["run"], r["downstream"], r["split"], r["metric"]) for r in rows)
    assert max(keys.values()) == 1  # no row twice
    per_run = Counter(r["run"] for r in rows)
    assert len(set(per_run.values())) == 1  # every run has the same number of rows
    assert (out / "report" / "report.md").is_file()  # one command from spec to report
