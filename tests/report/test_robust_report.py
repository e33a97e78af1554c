"""The robust_losses report section: each loss minus ce_dice, paired by seed and noise level, CI verdicts."""

import csv
import math

import pytest

from noisyseg.report import better_or_worse, build_report, robust_losses
from noisyseg.report.tables import Paired

T2 = 4.302652729911275  # t_{0.975, 2}: three seeds


def _rows(loss, flip, downstream, values, metric="miou", noise="flip_rate", seeds=(0, 1, 2)):
    return [{"run": f"{loss}-{flip}-{s}", "seed": s, "method": "supervised", "loss": loss, noise: flip,
             "downstream": downstream, "split": "test", "metric": metric, "value": v, "pretrain_seconds": 5}
            for s, v in zip(seeds, values)]


def table():
    """Known differences (points) to ce_dice in the same seed and flip rate.

    unet, 0.3: symmetric_ce +3/+4/+5 (better), small_loss -2/-3/-4 (worse).
    unet, 0.6: symmetric_ce +5/-1/+2 (inconclusive); small_loss +1/+2, its seed 3 has no partner.
    ce_dice at 0.6 differs from 0.3 in every seed: pairing across flip rates would change every number.
    """
    return (_rows("ce_dice", 0.3, "unet", [0.50, 0.60, 0.70])
            + _rows("symmetric_ce", 0.3, "unet", [0.53, 0.64, 0.75])
            + _rows("small_loss", 0.3, "unet", [0.48, 0.57, 0.66])
            + _rows("ce_dice", 0.6, "unet", [0.30, 0.40, 0.50])
            + _rows("symmetric_ce", 0.6, "unet", [0.35, 0.39, 0.52])
            + _rows("small_loss", 0.6, "unet", [0.31, 0.42, 0.99], seeds=(0, 1, 3))  # no ce_dice seed 3
            + _rows("ce_dice", 0.3, "unet", [0.90, 0.90, 0.90], metric="f1")  # another metric: not mixed in
            + _rows("symmetric_ce", 0.3, "unet", [0.80, 0.80, 0.80], metric="f1")
            + _rows("ce_dice", 0.3, "unet_frozen", [0.40, 0.40, 0.40])
            + _rows("symmetric_ce", 0.3, "unet_frozen", [0.41, 0.41, 0.41]))


def test_differences_paired_by_seed_and_noise_level(tmp_path):
    sec = robust_losses(table(), tmp_path)
    d = sec.data
    sym = d[("miou", "symmetric_ce", "unet", 0.3)]
    assert sym.mean == pytest.approx(0.04) and sym.n == 3
    assert sym.half_width == pytest.approx(T2 * 0.01 / math.sqrt(3))  # sd of 3, 4, 5 points = 1 point
    small = d[("miou", "small_loss", "unet", 0.3)]
    assert small.mean == pytest.approx(-0.03) and small.half_width == pytest.approx(sym.half_width)
    sym6 = d[("miou", "symmetric_ce", "unet", 0.6)]
    assert sym6.mean == pytest.approx(0.02) and sym6.half_width == pytest.approx(T2 * 0.03 / math.sqrt(3))
    small6 = d[("miou", "small_loss", "unet", 0.6)]  # seed 3 has no ce_dice partner
    assert small6.n == 2 and small6.mean == pytest.approx((0.01 + 0.02) / 2)
    assert d[("f1", "symmetric_ce", "unet", 0.3)].mean == pytest.approx(-0.10)
    frozen = d[("miou", "symmetric_ce", "unet_frozen", 0.3)]
    assert frozen.mean == pytest.approx(0.01) and frozen.half_width == pytest.approx(0.0)
    assert ("miou", "ce_dice", "unet", 0.3) not in d  # the baseline is not compared with itself


def test_markdown_rows_and_verdict_words(tmp_path):
    sec = robust_losses(table(), tmp_path)
    text = "\n".join(sec.lines)
    assert "| unet | 0.3 | symmetric_ce | +4.0 ± 2.5 | 3 | better |" in text
    assert "| unet | 0.3 | small_loss | -3.0 ± 2.5 | 3 | worse |" in text
    assert "| unet | 0.6 | symmetric_ce | +2.0 ± 7.5 | 3 | inconclusive (95 % CI holds zero) |" in text
    assert "| unet_frozen | 0.3 | symmetric_ce | +1.0 ± 0.0 | 3 | better |" in text
    assert "-10.0" not in text  # F1 rows are in the CSV only
    rows = text.splitlines()
    order = [next(i for i, line in enumerate(rows) if line.startswith(p)) for p in
             ("| unet | 0.3 | symmetric_ce", "| unet | 0.3 | small_loss", "| unet | 0.6 | symmetric_ce",
              "| unet_frozen | 0.3")]
    assert order == sorted(order)  # downstream, then noise level, then the losses in grid order
    assert "- symmetric_ce: better in 2, worse in 0, inconclusive in 1 of 3" in text
    assert "- small_loss: better in 0, worse in 1, inconclusive in 1 of 2" in text
    with open(tmp_path / "robust_losses.csv") as fh:
        table_rows = list(csv.DictReader(fh))
    f1 = [r for r in table_rows if r["metric"] == "f1"]
    assert len(f1) == 1 and f1[0]["minus ce_dice (points, 95 % CI)"] == "-10.0 ± 0.0" and f1[0]["verdict"] == "worse"


def test_figure_panel_per_downstream_line_per_loss(tmp_path):
    sec = robust_losses(table(), tmp_path)
    assert sec.figure == tmp_path / "robust_losses_lines.png" and sec.figure.is_file()
    with open(tmp_path / "robust_losses_lines.csv") as fh:
        plotted = [(r["panel"], r["series"], r["level"], float(r["mean"])) for r in csv.DictReader(fh)]
    assert plotted == [  # a line per loss, its points in noise order
        ("unet", "symmetric_ce", "0.3", pytest.approx(0.04)),
        ("unet", "symmetric_ce", "0.6", pytest.approx(0.02)),
        ("unet", "small_loss", "0.3", pytest.approx(-0.03)),
        ("unet", "small_loss", "0.6", pytest.approx(0.015)),
        ("unet_frozen", "symmetric_ce", "0.3", pytest.approx(0.01)),
    ]


def test_drop_rate_is_a_noise_axis_and_section_only_with_a_baseline(tmp_path):
    rows = (_rows("ce_dice", 0.3, "pretrained", [0.50, 0.60, 0.70], noise="drop_rate")
            + _rows("generalized_ce", 0.3, "pretrained", [0.40, 0.50, 0.61], noise="drop_rate"))
    sec = robust_losses(rows, tmp_path)
    assert "| pretrained | 0.3 | generalized_ce | -9.7 ± 1.4 | 3 | worse |" in "\n".join(sec.lines)
    assert "drop rate" in sec.lines[0]
    assert robust_losses([r for r in rows if r["loss"] != "ce_dice"], tmp_path) is None
    names = [s.name for s in build_report(rows, tmp_path / "r")]
    assert "robust_losses" in names
    no_loss = [{k: v for k, v in r.items() if k != "loss"} for r in rows]
    assert "robust_losses" not in [s.name for s in build_report(no_loss, tmp_path / "r2")]


def test_better_or_worse_only_when_the_interval_excludes_zero():
    assert better_or_worse(Paired(0.02, 0.019, 3)) == "better"
    assert better_or_worse(Paired(-0.02, 0.019, 3)) == "worse"
    assert better_or_worse(Paired(0.02, 0.02, 3)).startswith("inconclusive")
    assert better_or_worse(Paired(0.05, math.inf, 1)) == "inconclusive (one seed)"
