"""Paired differences to random init: mean ± 95 % t-interval over seeds, verdict only when the CI excludes 0."""

import math

import pytest

from noisyseg.report import build_report, vs_random
from noisyseg.report.tables import Paired, ci_verdict, paired


def _rows(method, downstream, values, metric="miou"):
    return [{"run": f"{method}-{s}", "seed": s, "method": method, "downstream": downstream, "split": "test",
             "metric": metric, "value": v, "pretrain_seconds": 0 if method == "random" else 5}
            for s, v in enumerate(values)]


def test_paired_mean_and_t_interval_by_hand():
    d = paired([0.03, 0.04, 0.05])
    sd = math.sqrt(((0.03 - 0.04) ** 2 + 0 + (0.05 - 0.04) ** 2) / 2)  # 0.01
    assert d.mean == pytest.approx(0.04) and d.n == 3
    assert d.half_width == pytest.approx(4.302652729911275 * sd / math.sqrt(3))  # t_{0.975, 2}
    assert ci_verdict(d) == "reproduced" and ci_verdict(d, expect_greater=False) == "contradicted"
    assert ci_verdict(paired([0.05, -0.01, 0.02])).startswith("inconclusive")
    assert ci_verdict(paired([0.05])) == "inconclusive (one seed)" and math.isinf(paired([0.05]).half_width)


def test_each_arm_paired_with_random_of_the_same_seed(tmp_path):
    rows = (_rows("random", "finetune", [0.40, 0.50, 0.60])
            + _rows("supervised", "finetune", [0.45, 0.56, 0.66])  # +5, +6, +6 points
            + _rows("supervised", "pretrained", [0.30, 0.70, 0.55]))  # no random 'pretrained': vs finetune
    sec = vs_random(rows, tmp_path)
    ft = sec.data[("miou", ("supervised", "finetune"))]
    assert ft.mean == pytest.approx((0.05 + 0.06 + 0.06) / 3) and ft.low > 0  # pairing by seed: a tight CI
    pre = sec.data[("miou", ("supervised", "pretrained"))]
    assert pre.mean == pytest.approx((-0.10 + 0.20 - 0.05) / 3) and pre.low < 0 < pre.high
    text = "\n".join(sec.lines)
    assert "random/finetune" in text and "reproduced" in text and "inconclusive" in text
    assert (tmp_path / "vs_random_ci.png").is_file()
    table = (tmp_path / "vs_random.csv").read_text().splitlines()  # the verdict table, not the figure's data
    assert "verdict" in table[0].lower() or any("reproduced" in ln for ln in table[1:])
    # unpaired, the same means would overlap: the seed-to-seed spread (10 points) hides a +5.7 gain
    assert any(s.name == "vs_random" for s in build_report(rows, tmp_path / "r"))


def test_paired_pct_text():
    assert Paired(0.032, 0.015, 3).pct() == "+3.2 ± 1.5" and Paired(-0.01, math.inf, 1).pct() == "-1.0 (one seed)"


def test_ci_verdict_needs_a_visible_difference():
    from noisyseg.report.tables import ci_verdict

    assert ci_verdict(Paired(1e-5, 1e-6, 3)).startswith("inconclusive (difference below")
    assert ci_verdict(Paired(0.02, 0.01, 3)) == "reproduced"
    assert ci_verdict(Paired(-0.02, 0.01, 3)) == "contradicted"
