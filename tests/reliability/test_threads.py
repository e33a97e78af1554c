"""Compute threads: ``--threads N`` / ``threads: N`` on every command that trains, and a default
that does not oversubscribe (``OMP_NUM_THREADS``, else physical cores / training processes)."""

from __future__ import annotations

import pytest
import torch

import noisyseg.runtime as runtime
from conftest import tiny_config, write_config
from noisyseg.cli import run_config
from noisyseg.experiments.sweep import run_sweep

def test_physical_cores_counts_cores_not_hyperthreads_within_the_affinity(monkeypatch, tmp_path):
    # sysfs of two sockets with a 2-way hyper-threaded core each: CPUs 0/2 share a core, 1/3 another
    for cpu, siblings in ((0, "0,2"), (1, "1,3"), (2, "0,2"), (3, "1,3")):
        (tmp_path / f"cpu{cpu}" / "topology").mkdir(parents=True)
        (tmp_path / f"cpu{cpu}" / "topology" / "thread_siblings_list").write_text(siblings + "\n")
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert runtime.physical_cores(tmp_path) == 2
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: {0, 2})  # two siblings of one core
    assert runtime.physical_cores(tmp_path) == 1
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: {0, 4, 5})  # 4, 5: no topology files
    assert runtime.physical_cores(tmp_path) == 3
    assert runtime.physical_cores(tmp_path / "absent") == 3  # no sysfs (other systems): the CPUs allowed


def test_default_threads_shares_cores_over_processes_and_respects_omp_num_threads(monkeypatch):
    monkeypatch.setattr(runtime, "physical_cores", lambda: 8)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert [runtime.default_threads(p) for p in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert runtime.default_threads(4) == 3


def _validate_cfg(tmp_path, name="run", **extra):
    cfg = tiny_config(tmp_path / name, batch_size=2)
    cfg["data"]["init_args"]["val"] = cfg["data"]["init_args"]["train"]
    cfg["trainer"]["limit_val_batches"] = 1
    return write_config(tmp_path / f"{name}.yaml", {**cfg, **extra})


@pytest.mark.parametrize("how", ["flag", "config", "default"])
def test_lightning_commands_set_threads(run_cli, tmp_path, monkeypatch, one_thread, how):
    torch.set_num_threads(3)
    monkeypatch.setattr(runtime, "physical_cores", lambda: 2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cfg = _validate_cfg(tmp_path, **({"threads": 1} if how == "config" else {}))
    code, err = run_cli(["validate", "--config", cfg] + (["--threads", "1"] if how == "flag" else []))
    assert code == 0, err
    assert torch.get_num_threads() == (2 if how == "default" else 1)


def test_flag_beats_config_and_a_bad_count_is_one_line(run_cli, tmp_path, one_thread):
    torch.set_num_threads(2)
    cfg = _validate_cfg(tmp_path, threads=2)
    code, err = run_cli(["validate", "--config", cfg, "--threads", "1"])
    assert code == 0 and torch.get_num_threads() == 1, err
    code, err = run_cli(["fit", "--config", _validate_cfg(tmp_path, "run0"), "--threads", "0"])
    assert code == 2 and "threads=0 must be a positive integer" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run0").exists()  # stopped before the trainer was built


def test_run_config_honours_threads_key_and_leaves_threads_alone_without_it(tmp_path, one_thread, monkeypatch):
    monkeypatch.setattr(runtime.torch, "set_num_threads", lambda n: calls.append(n))
    calls: list[int] = []
    cfg = tiny_config(tmp_path / "run")
    with pytest.raises(ValueError, match="threads=0"):
        run_config({**cfg, "threads": 0}, quiet=True)
    assert calls == []
    run_config({**cfg, "threads": 1, "trainer": {**cfg["trainer"], "max_steps": 1}}, quiet=True)
    assert calls == [1]


def test_sweep_threads(run_cli, tmp_path, one_thread, monkeypatch):
    torch.set_num_threads(2)
    run_sweep([], tmp_path, jobs=1, threads=1, progress=False)
    assert torch.get_num_threads() == 1
    monkeypatch.setattr(runtime, "physical_cores", lambda: 2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    run_sweep([], tmp_path, jobs=1, progress=False)  # default: the physical cores, one process
    assert torch.get_num_threads() == 2
    code, err = run_cli(["sweep", tmp_path / "nope.yaml", "--threads", "0"])
    assert code == 2 and "--threads 0 must be >= 1" in err, err


def test_demo_rejects_a_bad_thread_count_before_running(run_cli, tmp_path, monkeypatch):
    import noisyseg.demo

    monkeypatch.setattr(noisyseg.demo, "run_demo", lambda *a, **k: pytest.fail("the demo ran"))
    code, err = run_cli(["demo", "--quick", "--out", tmp_path / "demo", "--threads", "0"])
    assert code == 2 and "threads=0" in err, err
    assert not (tmp_path / "demo").exists()
