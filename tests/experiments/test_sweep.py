"""Sweeps: planning, up-front key checks, resume after a kill, the table under parallel writers."""

from __future__ import annotations

import csv
import json
import multiprocessing as mp
import os
from pathlib import Path

import pytest
import yaml

from noisyseg.experiments import pipeline, sweep
from noisyseg.experiments.pipeline import resolve_run
from noisyseg.experiments.spec import load_spec, plan_runs
from noisyseg.experiments.table import append_rows, read_rows


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _vts(split: str, n: int, **kw) -> dict:
    return {"class_path": "noisyseg.data.VTSSegmentation",
            "init_args": {"split": split, "length": n, "size": 32, "num_cells": 4, "cache": True, **kw}}


def _trainer() -> dict:
    return {"max_epochs": 1, "max_steps": 2, "limit_val_batches": 0, "enable_checkpointing": False,
            "logger": False, "enable_progress_bar": False, "num_sanity_val_steps": 0,
            "default_root_dir": "unused", "precision": "32-true"}


def tiny_configs(tmp: Path) -> tuple[Path, Path]:
    """A 2-class noisy-label pretraining config and a 3-class FCN probe, 32 px, 2 steps each."""
    pre = {
        "seed_everything": 0,
        "trainer": _trainer(),
        "model": {"class_path": "noisyseg.tasks.SegmentationTask",
                  "init_args": {"decoder": "unet", "arch": "resnet18", "num_classes": 2, "encoder_out": None}},
        "data": {"class_path": "noisyseg.data.DataModule",
                 "init_args": {"batch_size": 2, "train": _vts("train", 4, label_noise={"flip_rate": 0.3})}},
    }
    down = {
        "seed_everything": 0,
        "trainer": _trainer(),
        "model": {"class_path": "noisyseg.tasks.SegmentationTask",
                  "init_args": {"decoder": "fcn", "arch": "resnet18", "num_classes": 3, "freeze_encoder": True,
                                "encoder_path": None}},
        "data": {"class_path": "noisyseg.data.DataModule",
                 "init_args": {"batch_size": 2, "train": _vts("train", 4, third_class=True, seed=1),
                               "test": _vts("test", 4, third_class=True, seed=1)}},
    }
    (tmp / "pre.yaml").write_text(yaml.safe_dump(pre))
    (tmp / "down.yaml").write_text(yaml.safe_dump(down))
    return tmp / "pre.yaml", tmp / "down.yaml"


def write_spec(tmp: Path, **changes) -> Path:
    pre, down = tiny_configs(tmp)
    spec = {
        "name": "tiny",
        "pretrain": {"sup": str(pre), "random": None},
        "downstream": [{"name": "probe", "config": str(down)},
                       {"name": "unet", "config": str(down),
                        "overrides": {"model.init_args.decoder": "unet", "model.init_args.freeze_encoder": False}}],
        "seeds": [0, 1],
        "seed_keys": {"pretrain.data.init_args.train.init_args.seed": 0},
        "overrides": {"downstream.*.trainer.max_steps": 1},
        "grid": {"pretrain": ["sup", "random"], "pretrain.data.init_args.train.init_args.label_noise.flip_rate": [0.1, 0.5]},
        "variants": {"quick": {"seeds": [3]}},
    }
    spec.update(changes)
    path = tmp / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


# ----------------------------------------------------------------------------------------- plan
def test_plan_crosses_grid_and_seeds_and_collapses_random_arm(tmp_path):
    plans = plan_runs(load_spec(write_spec(tmp_path)))
    ids = [p.run_id for p in plans]
    # sup: 2 flip rates x 2 seeds; random: flip_rate does not apply -> once per seed
    assert len(plans) == 6 and len(set(ids)) == 6
    assert "method-sup_flip_rate-0.1_seed-1" in ids and "method-random_seed-0" in ids
    sup = next(p for p in plans if p.run_id == "method-sup_flip_rate-0.5_seed-1")
    assert sup.params == {"method": "sup", "flip_rate": 0.5}
    assert sup.pretrain["data"]["init_args"]["train"]["init_args"]["label_noise"]["flip_rate"] == 0.5
    assert sup.pretrain["data"]["init_args"]["train"]["init_args"]["seed"] == 1  # seed_keys
    assert all(c["seed_everything"] == 1 for c in [sup.pretrain] + [c for _, c in sup.downstream])
    down = dict(sup.downstream)
    assert down["unet"]["model"]["init_args"]["decoder"] == "unet" and down["probe"]["model"]["init_args"]["decoder"] == "fcn"
    assert down["probe"]["trainer"]["max_steps"] == 1  # downstream.* override
    rnd = next(p for p in plans if p.run_id == "method-random_seed-0")
    assert rnd.pretrain is None and rnd.params["flip_rate"] is None


def test_chaining_puts_everything_under_the_run_dir(tmp_path):
    plan = plan_runs(load_spec(write_spec(tmp_path)))[0]
    res = resolve_run(plan, tmp_path / "r")
    enc = str(tmp_path / "r" / "encoder.safetensors")
    assert res["pretrain"]["model"]["init_args"]["encoder_out"] == enc
    assert res["pretrain"]["trainer"]["default_root_dir"] == str(tmp_path / "r" / "pretrain")
    for name, cfg in res["downstream"].items():
        assert cfg["model"]["init_args"]["encoder_path"] == enc
        assert cfg["trainer"]["default_root_dir"] == str(tmp_path / "r" / f"downstream-{name}")
    rnd = next(p for p in plan_runs(load_spec(write_spec(tmp_path))) if p.pretrain is None)
    assert all(c["model"]["init_args"]["encoder_path"] is None for c in resolve_run(rnd, tmp_path).get("downstream").values())


def test_set_overrides_from_the_command_line(tmp_path, monkeypatch, capsys):
    fake = Counter()
    monkeypatch.setattr(pipeline, "run_config", fake)
    spec = write_spec(tmp_path, grid={"pretrain": ["sup"]}, seeds=[0])
    out = tmp_path / "out"
    assert sweep.main([str(spec), "--out", str(out), "--set", "*.trainer.max_steps=7",
                       "--set", "pretrain.model.init_args.lr=0.5"]) == 0
    cfg = yaml.safe_load((out / "method-sup_seed-0" / "run.yaml").read_text())
    assert cfg["pretrain"]["trainer"]["max_steps"] == 7 and cfg["pretrain"]["model"]["init_args"]["lr"] == 0.5
    assert all(c["trainer"]["max_steps"] == 7 for c in cfg["downstream"].values())
    assert sweep.main([str(spec), "--set", "oops"]) == 2 and "KEY=VALUE" in capsys.readouterr().err


def test_variant_and_union_of_grids(tmp_path):
    assert {p.seed for p in plan_runs(load_spec(write_spec(tmp_path), "quick"))} == {3}
    grid = [{"pretrain": ["random"]},
            {"pretrain": ["sup"], "fn": {"a": {"pretrain.model.init_args.lr": 0.1},
                                          "b": {"pretrain.model.init_args.lr": 0.2}}}]
    plans = plan_runs(load_spec(write_spec(tmp_path, grid=grid, seeds=[0])))
    assert sorted(p.run_id for p in plans) == ["method-random_seed-0", "method-sup_fn-a_seed-0", "method-sup_fn-b_seed-0"]
    b = next(p for p in plans if p.params.get("fn") == "b")
    assert b.pretrain["model"]["init_args"]["lr"] == 0.2  # an argument the class takes, absent from the file


def test_named_pretrain_overrides_column_alias_and_trainer_args(tmp_path):
    pre = str(tmp_path / "pre.yaml")
    spec = write_spec(tmp_path, seeds=[0],
                      pretrain={"sup": pre, "sup_lr": {"config": pre, "overrides": {"model.init_args.lr": 0.5}}},
                      overrides={"*.trainer.enable_checkpointing": True, "*.trainer.accumulate_grad_batches": 2},
                      grid={"pretrain": ["sup", "sup_lr"],
                            "noise=pretrain.data.init_args.train.init_args.label_noise.flip_rate": [0.2]})
    plans = {p.run_id: p for p in plan_runs(load_spec(spec))}
    assert set(plans) == {"method-sup_noise-0.2_seed-0", "method-sup_lr_noise-0.2_seed-0"}
    lr = plans["method-sup_lr_noise-0.2_seed-0"]
    assert lr.pretrain["model"]["init_args"]["lr"] == 0.5 and lr.params == {"method": "sup_lr", "noise": 0.2}
    assert "lr" not in plans["method-sup_noise-0.2_seed-0"].pretrain["model"]["init_args"]
    assert lr.pretrain["trainer"]["accumulate_grad_batches"] == 2  # a Trainer argument absent from the file
    bad = write_spec(tmp_path, overrides={"*.trainer.max_epoch": 1})  # typo of max_epochs
    with pytest.raises(ValueError, match="max_epoch"):
        plan_runs(load_spec(bad))


# ----------------------------------------------------------------------------------------- bad input
class Counter:
    """Fake run_config: counts fits per root dir, writes results.json, can 'die' at call k."""

    def __init__(self, die_at: int | None = None):
        self.calls: list[str] = []
        self.die_at = die_at

    def __call__(self, cfg, quiet=False):
        if self.die_at is not None and len(self.calls) == self.die_at:
            raise KeyboardInterrupt  # the process is killed here
        root = Path(cfg["trainer"]["default_root_dir"])
        self.calls.append(str(root))
        enc = cfg["model"]["init_args"].get("encoder_out")
        if enc:
            Path(enc).parent.mkdir(parents=True, exist_ok=True)
            Path(enc).write_text("weights")
        seed = cfg["seed_everything"]
        test = {"miou": 0.5 + 0.01 * seed, "f1": 0.6} if cfg.get("test_after_fit") else {}
        res = {"val": {}, "test": test, "seconds": {"fit": 0.1}, "encoder": enc}
        root.mkdir(parents=True, exist_ok=True)
        (root / "results.json").write_text(json.dumps(res))
        return res


@pytest.mark.parametrize("grid, needle", [
    ({"pretrain.model.init_args.no_such_arg": [1, 2]}, "no_such_arg"),
    ({"pretrain.modle.init_args.lr": [1.0]}, "modle"),
    ({"downstream.nope.trainer.max_steps": [1]}, "nope"),
    ({"pretrain.data.init_args.train.init_args.label_noise.flip_rate": []}, "non-empty"),
])
def test_bad_keys_fail_before_any_run(tmp_path, monkeypatch, capsys, grid, needle):
    fake = Counter()
    monkeypatch.setattr(pipeline, "run_config", fake)
    spec = write_spec(tmp_path, grid={"pretrain": ["random", "sup"], **grid})
    assert sweep.main([str(spec), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert needle in err and "error" in err and len(err.strip().splitlines()) == 1
    if "no_such_arg" in needle:
        assert "pre.yaml" in err  # names the config file
    assert fake.calls == [] and not (tmp_path / "out").exists()


def test_missing_config_and_unwritable_out(tmp_path, monkeypatch, capsys):
    spec = write_spec(tmp_path, downstream=[{"config": str(tmp_path / "missing.yaml")}])
    assert sweep.main([str(spec), "--out", str(tmp_path / "o")]) == 2
    assert "missing.yaml" in capsys.readouterr().err
    assert sweep.main([str(tmp_path / "nospec.yaml")]) == 2
    spec = write_spec(tmp_path)
    monkeypatch.setattr(pipeline, "run_config", Counter())
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert sweep.main([str(spec), "--out", str(blocker / "sub")]) == 2  # a folder that cannot be made
    assert "not writable" in capsys.readouterr().err
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if not os.access(ro, os.W_OK):  # permissions are not enforced for root
        assert sweep.main([str(spec), "--out", str(ro / "sub")]) == 2
        assert "not writable" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------- resume
def test_resume_after_kill_runs_each_stage_once(tmp_path, monkeypatch):
    spec = write_spec(tmp_path)
    out = tmp_path / "out"
    plans = plan_runs(load_spec(spec))
    n_stages = sum((p.pretrain is not None) + len(p.downstream) for p in plans)  # 4*3 + 2*2 = 16
    killed = Counter(die_at=7)  # dies inside the 3rd run, after its pretraining
    monkeypatch.setattr(pipeline, "run_config", killed)
    with pytest.raises(KeyboardInterrupt):
        sweep.main([str(spec), "--out", str(out)])
    finished = read_rows(out / "results.csv")
    assert len({r["run"] for r in finished}) == 2

    # killed again between done.json and the table: the next start adds the rows without running
    resumed = Counter()
    monkeypatch.setattr(pipeline, "run_config", resumed)
    real_append = sweep.append_rows
    calls = {"n": 0}

    def dying_append(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_append(*a, **k)

    monkeypatch.setattr(sweep, "append_rows", dying_append)
    with pytest.raises(KeyboardInterrupt):
        sweep.main([str(spec), "--out", str(out)])
    monkeypatch.setattr(sweep, "append_rows", real_append)
    assert sweep.main([str(spec), "--out", str(out)]) == 0

    every = killed.calls + resumed.calls
    assert len(every) == len(set(every)) == n_stages  # no stage twice, none missing
    rows = read_rows(out / "results.csv")
    assert len(rows) == len(plans) * 2 * 1 * 2  # runs x downstream x splits (test) x metrics
    assert len({(r["run"], r["downstream"], r["split"], r["metric"]) for r in rows}) == len(rows)
    assert {r["run"] for r in rows} == {p.run_id for p in plans}
    for p in plans:
        assert (out / p.run_id / "done.json").is_file() and (out / p.run_id / "run.yaml").is_file()
    assert sweep.main([str(spec), "--out", str(out)]) == 0  # a third start runs nothing
    assert len(resumed.calls) == len(every) - len(killed.calls)


def _append_worker(args):
    path, k = args
    append_rows(path, [{"run": f"r{k}", "seed": 0, "metric": m, "value": k} for m in ("a", "b")])


def test_parallel_appends_lose_no_rows(tmp_path):
    path = tmp_path / "results.csv"
    with mp.get_context("fork").Pool(4) as pool:
        pool.map(_append_worker, [(path, k) for k in range(24)])
    rows = read_rows(path)
    assert len(rows) == 48 and {r["run"] for r in rows} == {f"r{k}" for k in range(24)}


# ----------------------------------------------------------------------------------------- real runs
def test_tiny_real_sweep_table_schema(tmp_path):
    spec = write_spec(tmp_path, grid={"pretrain": ["sup"]}, seeds=[0],
                      downstream=[{"name": "probe", "config": str(tmp_path / "down.yaml")}])
    out = tmp_path / "out"
    assert sweep.main([str(spec), "--out", str(out)]) == 0
    with open(out / "results.csv", newline="") as fh:
        header = next(csv.reader(fh))
    assert header[:3] == ["run", "seed", "method"]
    assert header[-8:] == ["downstream", "decoder", "frozen", "split", "metric", "value", "seconds", "pretrain_seconds"]
    rows = read_rows(out / "results.csv")
    metrics = {r["metric"] for r in rows}
    assert {"miou", "f1", "accuracy"} <= metrics and all(r["split"] == "test" for r in rows)
    assert all(0.0 <= float(r["value"]) <= 1.0 for r in rows)
    assert rows[0]["decoder"] == "fcn" and rows[0]["frozen"] == "true" and float(rows[0]["pretrain_seconds"]) > 0
    run = out / rows[0]["run"]
    assert (run / "encoder.safetensors").is_file()
    cfg = yaml.safe_load((run / "run.yaml").read_text())
    assert cfg["downstream"]["probe"]["model"]["init_args"]["encoder_path"] == str(run / "encoder.safetensors")


def test_pretraining_with_a_test_set_is_scored_as_downstream_pretrained(tmp_path):
    """A pretraining config with data.test: the pretrained network itself is tested (no fine-tuning)."""
    spec = write_spec(tmp_path, grid={"pretrain": ["sup"]}, seeds=[0],
                      downstream=[{"name": "probe", "config": str(tmp_path / "down.yaml")}],
                      overrides={"pretrain.data.init_args.test": _vts("test", 4, seed=1)})
    out = tmp_path / "out"
    assert sweep.main([str(spec), "--out", str(out), "--no-report"]) == 0
    rows = read_rows(out / "results.csv")
    assert {r["downstream"] for r in rows} == {"pretrained", "probe"}
    run = out / rows[0]["run"]
    stored = json.loads((run / "pretrain" / "results.json").read_text())["test"]
    pre = {r["metric"]: float(r["value"]) for r in rows if r["downstream"] == "pretrained"}
    assert pre == pytest.approx(stored) and pre["miou"] > 0
    assert all(float(r["seconds"]) == 0 for r in rows if r["downstream"] == "pretrained")
