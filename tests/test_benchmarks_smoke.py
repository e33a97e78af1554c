"""The benchmark helpers count and time what they claim (no timed assertions: speed lives in benchmarks/)."""

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_flops  # noqa: E402
import common  # noqa: E402


def test_flop_counter_gives_analytic_conv_flops():
    conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
    x = torch.randn(2, 3, 16, 16)
    # forward: 2 FLOPs per multiply-add, one per output element and kernel tap: N*Cout*H*W*Cin*k*k
    assert bench_flops.count_flops(lambda: conv(x)) == 2 * 2 * 8 * 16 * 16 * 3 * 3 * 3
    # backward adds the weight gradient (same count; the input needs no gradient)
    assert bench_flops.count_flops(lambda: conv(x).sum().backward()) == 2 * (2 * 2 * 8 * 16 * 16 * 27)


def test_step_clock_times_from_end_of_warmup():
    clock = common.step_clock_callback(warmup=2)
    clock.ends = [0.0, 1.0, 3.0, 4.0, 5.0]  # ends of 5 steps; the window is (1.0, 5.0] with 3 steps
    assert clock.rate(batch_size=8) == pytest.approx(3 * 8 / 4.0)
    with pytest.raises(ValueError, match="warmup=0"):
        common.step_clock_callback(warmup=0)


def test_results_written_with_ratio(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    rows = [common.row("moco", "train img/s", 30.0, 10.0, "torchgeo fp32", "img/s", "≥ 3.0×", {"a": [1.0]})]
    md = common.write_results(rows, {"time": "now"}, {"quick": True})
    assert "3.00×" in md.read_text() and "| 30.0 |" in md.read_text()
    assert json.loads((tmp_path / "latest.json").read_text())["rows"][0]["ratio"] == 3.0


def test_parity_compares_means_over_seeds_and_reports_the_spread():
    import parity

    fp32 = [{("random", "probe"): 0.20, ("moco", "probe"): 0.30}, {("random", "probe"): 0.22, ("moco", "probe"): 0.26}]
    fast = [{("random", "probe"): 0.21, ("moco", "probe"): 0.25}, {("random", "probe"): 0.21, ("moco", "probe"): 0.29}]
    means = parity.mean_scores(fp32)
    assert means[("moco", "probe")] == pytest.approx(0.28)
    text, worst = parity.compare(means, parity.mean_scores(fast), ("fp32", "fast"))
    assert worst == pytest.approx(1.0)  # 28.0 vs 27.0; a single seed would have shown 5 points
    assert "| moco | probe | 28.0 | 27.0 | -1.0 |" in text
    assert "| moco | probe | 30.0 / 26.0 | 2.8 |" in parity.spread(fp32)
    _, missing = parity.compare({("a", "probe"): 0.1}, {}, ("x", "y"))
    assert missing == float("inf")


def test_parity_reuses_a_finished_run(tmp_path):
    import parity

    (tmp_path / "results.csv").write_text("arm,mode,metric,value\nrandom,probe,miou,0.25\nrandom,probe,f1,0.4\n")
    assert parity.run_demo(tmp_path, "32-true", 0, quick=True, reuse=True) == {("random", "probe"): 0.25}
