"""One run path: each training of a sweep is a ``config.yaml`` that ``noisyseg fit`` repeats, and its
scores come back through one ``results.json`` written once per training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

import noisyseg.cli as cli
from noisyseg.cli import main
from noisyseg.experiments import sweep
from noisyseg.experiments.pipeline import resolve_run
from noisyseg.experiments.spec import load_spec, plan_runs
from noisyseg.experiments.table import read_rows
from noisyseg.runfiles import read_encoder, read_results

from test_sweep import _vts, tiny_configs, write_spec  # noqa: E402  (tests/experiments is on the path)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture
def writes(monkeypatch) -> list[tuple[str, dict]]:
    """Every results record written, as (folder, record)."""
    calls: list[tuple[str, dict]] = []
    real = cli.write_results

    def counted(path, record):
        calls.append((Path(path).parent.name, json.loads(json.dumps(record))))
        real(path, record)

    monkeypatch.setattr(cli, "write_results", counted)
    return calls


def _one_run_sweep(tmp_path: Path) -> tuple[Path, Path]:
    """A real sweep of one run: noisy-label pretraining (2 steps), then an FCN probe (1 step) on its encoder."""
    spec = write_spec(tmp_path, grid={"pretrain": ["sup"]}, seeds=[1],
                      downstream=[{"name": "probe", "config": str(tmp_path / "down.yaml")}])
    out = tmp_path / "out"
    assert sweep.main([str(spec), "--out", str(out), "--no-report"]) == 0
    return spec, out


def test_a_sweep_trainings_config_repeats_it_through_noisyseg_fit(tmp_path, writes):
    spec, out = _one_run_sweep(tmp_path)
    plan = plan_runs(load_spec(spec))[0]
    run = out / plan.run_id
    resolved = resolve_run(plan, run)
    # each training's folder holds its config as planned: seed, chained encoder paths, test_after_fit
    pre_cfg = yaml.safe_load((run / "pretrain" / "config.yaml").read_text())
    down_cfg = yaml.safe_load((run / "downstream-probe" / "config.yaml").read_text())
    assert pre_cfg == resolved["pretrain"] and down_cfg == resolved["downstream"]["probe"]
    assert down_cfg["seed_everything"] == 1 and down_cfg["test_after_fit"] is True
    rows = {r["metric"]: float(r["value"]) for r in read_rows(out / "results.csv")}
    encoder, _ = read_encoder(run / "encoder.safetensors")

    # the same two trainings again, from those files alone, through the command line
    assert main(["fit", "--config", str(run / "pretrain" / "config.yaml")]) == 0
    again, _ = read_encoder(run / "encoder.safetensors")
    assert encoder.keys() == again.keys() and all(torch.equal(encoder[k], again[k]) for k in encoder)
    assert main(["fit", "--config", str(run / "downstream-probe" / "config.yaml")]) == 0
    record = read_results(run / "downstream-probe")  # null (undefined score) -> NaN
    assert set(record["test"]) == set(rows) and rows["miou"] > 0
    assert record["test"] == pytest.approx(rows, abs=0, nan_ok=True)  # the same scores as the sweep's row, exactly


def test_results_record_written_once_per_training_with_the_rows_values(tmp_path, writes):
    _, out = _one_run_sweep(tmp_path)
    assert [folder for folder, _ in writes] == ["pretrain", "downstream-probe"]  # once each
    (_, pre), (_, down) = writes
    assert pre["test"] == {} and pre["encoder"] == str(next(out.glob("*/encoder.safetensors")))
    assert set(down["seconds"]) == {"fit", "test"} and down["encoder"] is None
    rows = read_rows(out / "results.csv")
    assert {r["metric"]: float(r["value"]) for r in rows} == pytest.approx(down["test"], abs=0, nan_ok=True)
    assert float(rows[0]["seconds"]) == round(sum(down["seconds"].values()), 2)
    assert float(rows[0]["pretrain_seconds"]) == round(sum(pre["seconds"].values()), 2)


def test_fit_records_validation_scores_without_the_loss_and_tests_after_fit(tmp_path, writes):
    _, down = tiny_configs(tmp_path)
    cfg = yaml.safe_load(down.read_text())
    cfg["data"]["init_args"]["val"] = _vts("val", 4, third_class=True, seed=2)
    cfg["trainer"].update(limit_val_batches=1, default_root_dir=str(tmp_path / "run"))
    cfg["test_after_fit"] = True
    path = tmp_path / "fit.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["fit", "--config", str(path), "--resume"]) == 0  # no checkpoint yet: trains from the start
    assert len(writes) == 1
    record = json.loads((tmp_path / "run" / "results.json").read_text())
    first = read_results(tmp_path / "run")  # null (undefined score) -> NaN
    for split in ("val", "test"):  # the file holds what was written
        assert first[split] == pytest.approx(writes[0][1][split], abs=0, nan_ok=True)
    keys = {"miou", "f1", "accuracy"} | {f"{m}/{c}" for m in ("iou", "f1") for c in ("0", "1", "2")}
    assert set(record["val"]) == keys and set(record["test"]) == keys  # scores only: no val/loss
    assert set(record["seconds"]) == {"fit", "test"}
    # noisyseg fit saved the parsed config beside the run: fed back, it repeats the run
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["test_after_fit"] is True and saved["ckpt_path"] is None
    assert main(["fit", "--config", str(tmp_path / "run" / "config.yaml")]) == 0
    again = read_results(tmp_path / "run")
    for split in ("val", "test"):
        assert again[split] == pytest.approx(first[split], abs=0, nan_ok=True)
    cfg["test_after_fit"] = False
    path.write_text(yaml.safe_dump(cfg))
    assert main(["fit", "--config", str(path)]) == 0
    assert json.loads((tmp_path / "run" / "results.json").read_text())["test"] == {}
