"""The robust-loss studies: the runs they plan, the loss each arm trains with, and that every arm builds."""

from __future__ import annotations

import copy
import csv
import itertools
import json
from pathlib import Path

import pytest

from noisyseg.config import instantiate
from noisyseg.data.label_noise import Drop, JitterObjects, parse_noise
from noisyseg.experiments import pipeline, sweep
from noisyseg.experiments.spec import column_names, load_spec, plan_runs
from noisyseg.losses import (
    BootstrappingCE, CEDiceLoss, GeneralizedCE, LabelSmoothingCE, SmallLossSelection, SymmetricCE, WithDice,
)

ROOT = Path(__file__).resolve().parents[2]
VTS = "configs/studies/robust_losses.yaml"
BUILDINGS = "configs/studies/robust_losses_buildings.yaml"
FLIP = "pretrain.data.init_args.train.init_args.label_noise.flip_rate"
INNER = {"label_smoothing": LabelSmoothingCE, "symmetric_ce": SymmetricCE, "generalized_ce": GeneralizedCE,
         "bootstrap_soft": BootstrappingCE, "small_loss": SmallLossSelection}

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(autouse=True)
def _at_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # the specs name their configs relative to the repository root


def plans_of(path: str, variant: str) -> list:
    return plan_runs(load_spec(path, variant))


def _loss_node(plan) -> dict | None:
    return plan.pretrain["model"]["init_args"]["loss"]


def test_quick_plans_six_losses_two_flip_rates_three_seeds():
    spec = load_spec(VTS, "quick")
    assert column_names(spec) == {"loss": "loss", FLIP: "flip_rate"}  # the report reads `loss` and `flip_rate`
    plans = plan_runs(spec)
    got = sorted((p.params["loss"], p.params["flip_rate"], p.seed) for p in plans)
    assert got == sorted(itertools.product(["ce_dice", *INNER], [0.3, 0.6], [0, 1, 2]))
    for p in plans:
        data = p.pretrain["data"]["init_args"]
        assert data["train"]["init_args"]["label_noise"]["flip_rate"] == p.params["flip_rate"]
        assert data["train"]["init_args"]["seed"] == p.seed + 100 and data["train"]["init_args"]["size"] == 64
        assert data["val"] is None and p.pretrain["trainer"]["max_epochs"] == 4
        downs = dict(p.downstream)
        assert list(downs) == ["unet", "unet_frozen"]
        assert downs["unet"]["model"]["init_args"]["freeze_encoder"] is False
        assert downs["unet_frozen"]["model"]["init_args"]["freeze_encoder"] is True
        for d in downs.values():  # downstream labels are clean: only the pretraining loss varies
            assert "loss" not in d["model"]["init_args"] and d["trainer"]["max_epochs"] == 8
            assert d["data"]["init_args"]["test"]["init_args"]["length"] == 160


def test_full_variant_plans_four_flip_rates_five_seeds():
    plans = plans_of(VTS, "full")
    assert len(plans) == 6 * 4 * 5
    assert {p.params["flip_rate"] for p in plans} == {0.0, 0.3, 0.5, 0.7} and {p.seed for p in plans} == set(range(5))


def test_each_robust_arm_changes_only_the_ce_part():
    plans = plans_of(VTS, "quick")
    by_key = {(p.params["loss"], p.params["flip_rate"], p.seed): p for p in plans}
    for (loss, flip, seed), p in by_key.items():
        node = _loss_node(p)
        if loss == "ce_dice":
            assert node is None
            continue
        assert node["class_path"] == "noisyseg.losses.WithDice"
        assert node["init_args"]["loss"]["class_path"] == f"noisyseg.losses.{INNER[loss].__name__}"
        # everything else equals the ce_dice run of the same flip rate and seed
        mine, ref = copy.deepcopy(p.pretrain), copy.deepcopy(by_key[("ce_dice", flip, seed)].pretrain)
        mine["model"]["init_args"].pop("loss"), ref["model"]["init_args"].pop("loss")
        assert mine == ref and p.downstream == by_key[("ce_dice", flip, seed)].downstream
    small = by_key[("small_loss", 0.6, 2)]
    assert _loss_node(small)["init_args"]["loss"]["init_args"] == {"mode": "small_loss", "keep": 0.8,
                                                                   "ramp_fraction": 0.1}


def test_every_loss_arm_builds_its_task_and_data():
    for loss, p in {p.params["loss"]: p for p in plans_of(VTS, "quick") if p.seed == 0}.items():
        task = instantiate(p.pretrain["model"])  # SegmentationTask refuses a loss with ce/dice weights changed
        if loss == "ce_dice":
            assert type(task.loss_fn) is CEDiceLoss
            continue
        assert type(task.loss_fn) is WithDice and type(task.loss_fn.loss) is INNER[loss]
        assert task.loss_fn.loss_weight == 1.0 and task.loss_fn.dice_weight == 1.0  # CEDiceLoss(1, 1)'s weights
        if loss == "small_loss":
            assert task.loss_fn.loss.keep == 0.8 and task.loss_fn.loss.ramp_fraction == 0.1
    p = next(p for p in plans_of(VTS, "quick") if p.params["flip_rate"] == 0.6)
    train = instantiate(p.pretrain["data"]["init_args"]["train"])
    assert train.noise.flip_rate == 0.6 and len(train) == 384


def test_ce_dice_arm_repeats_label_noise_tolerance_quick():
    """The spec's comment: ce_dice at flip rate .3, seed 0 is label_noise_tolerance quick's run at .3."""
    ours = next(p for p in plans_of(VTS, "quick")
                if (p.params["loss"], p.params["flip_rate"], p.seed) == ("ce_dice", 0.3, 0))
    theirs = next(p for p in plans_of("configs/studies/label_noise_tolerance.yaml", "quick")
                  if (p.params["method"], p.params.get("flip_rate"), p.seed) == ("supervised", 0.3, 0))
    pre = copy.deepcopy(ours.pretrain)
    assert pre["model"]["init_args"].pop("loss") is None  # null: the task's default CE + Dice
    assert pre == theirs.pretrain and ours.downstream == theirs.downstream


def test_buildings_full_plans_four_losses_two_drop_rates():
    plans = plan_runs(load_spec(BUILDINGS, "full"))
    got = sorted((p.params["loss"], p.params["drop_rate"], p.seed) for p in plans)
    assert got == sorted(itertools.product(["ce_dice", "symmetric_ce", "generalized_ce", "small_loss"], [0.3, 0.6],
                                           [0, 1, 2, 3, 4]))


def test_buildings_quick_plans_three_losses_at_60_percent_omitted_and_replaces_the_noise_list():
    spec = load_spec(BUILDINGS, "quick")
    assert column_names(spec)["drop_rate"] == "drop_rate"
    plans = plan_runs(spec)
    got = sorted((p.params["loss"], p.params["drop_rate"], p.seed) for p in plans)
    assert got == sorted(itertools.product(["ce_dice", "generalized_ce", "small_loss"], [0.6], [0, 1, 2]))
    for p in plans:
        pool = p.pretrain["data"]["init_args"]["train"]["init_args"]
        assert pool["split"] == "pool"
        ops = parse_noise(pool["dataset"]["init_args"]["noise"])
        assert ops == [Drop(rate=p.params["drop_rate"]), JitterObjects(grow=2, shift=3)]
        assert p.pretrain["data"]["init_args"]["test"] is not None  # the `pretrained` rows: tested on clean crops
        assert [name for name, _ in p.downstream] == ["finetune"]
    for loss, p in {p.params["loss"]: p for p in plans if p.seed == 0}.items():
        task = instantiate(p.pretrain["model"])
        inner = type(task.loss_fn.loss) if isinstance(task.loss_fn, WithDice) else type(task.loss_fn)
        assert inner is {"ce_dice": CEDiceLoss, **INNER}[loss]


def fake_run_config(cfg, quiet=False):
    """Stands in for training: pretraining writes its loss and flip rate into the encoder file, and a
    downstream scores ``0.5 + seed/100 - flip/10 + BONUS[loss]`` from the file it was given."""
    root = Path(cfg["trainer"]["default_root_dir"])
    args = cfg["model"]["init_args"]
    if args.get("encoder_out"):
        loss = args.get("loss")
        inner = loss["init_args"]["loss"]["class_path"].rsplit(".", 1)[-1] if loss else "CEDiceLoss"
        flip = cfg["data"]["init_args"]["train"]["init_args"]["label_noise"]["flip_rate"]
        Path(args["encoder_out"]).parent.mkdir(parents=True, exist_ok=True)
        Path(args["encoder_out"]).write_text(json.dumps([inner, flip]))
    test = {}
    if cfg.get("test_after_fit"):
        inner, flip = json.loads(Path(args["encoder_path"]).read_text())
        test = {"miou": 0.5 + cfg["seed_everything"] / 100 - flip / 10 + BONUS.get(inner, 0.0)}
    res = {"val": {}, "test": test, "seconds": {"fit": 0.1, "test": 0.1} if test else {"fit": 0.1}, "encoder": None}
    root.mkdir(parents=True, exist_ok=True)
    (root / "results.json").write_text(json.dumps(res))
    return res


BONUS = {"SymmetricCE": 0.02, "SmallLossSelection": -0.01}


def test_sweep_table_names_the_loss_column_and_the_report_pairs_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pipeline, "run_config", fake_run_config)
    out = tmp_path / "out"
    assert sweep.main([VTS, "--variant", "quick", "--out", str(out)]) == 0
    capsys.readouterr()
    with open(out / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0])[:5] == ["run", "seed", "method", "loss", "flip_rate"] and len(rows) == 36 * 2
    text = (out / "report" / "report.md").read_text()
    for down in ("unet", "unet_frozen"):
        for flip in ("0.3", "0.6"):
            assert f"| {down} | {flip} | symmetric_ce | +2.0 ± 0.0 | 3 | better |" in text
            assert f"| {down} | {flip} | small_loss | -1.0 ± 0.0 | 3 | worse |" in text
            assert f"| {down} | {flip} | generalized_ce | +0.0 ± 0.0 | 3 | inconclusive (95 % CI holds zero) |" in text
    assert (out / "report" / "robust_losses_lines.png").is_file()
