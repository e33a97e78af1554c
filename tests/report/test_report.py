"""Reports from small results tables written here: which sections appear, what each figure plotted."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from noisyseg.experiments.table import write_rows
from noisyseg.report import build_report, main
from noisyseg.report.tables import ReportError, paired_between, per_seed, stat

SEEDS = (0, 1, 2)
SEED_JITTER = {0: -0.01, 1: 0.0, 2: 0.01}  # shared by every arm of a seed: mean = formula, std = 0.01
HALF = 4.302653 * 0.01 / math.sqrt(3)  # t(0.975, 2) * std / sqrt(3): an arm's 95 % CI half-width, 2.5 points
MERE_WOBBLE = {0: 0.01, 1: -0.02, 2: 0.01}  # mere-exposure arms only: paired differences get a spread


def _rows(run, params, seed, miou, f1, downstream="unet", pretrain_seconds=1.0, wobble=0.0):
    base = {"run": run, "seed": seed, **params, "downstream": downstream, "decoder": downstream,
            "frozen": False, "split": "test", "seconds": 1.0, "pretrain_seconds": pretrain_seconds}
    return [{**base, "metric": "miou", "value": miou + SEED_JITTER[seed] + wobble},
            {**base, "metric": "f1", "value": f1 + SEED_JITTER[seed]},
            {**base, "metric": "accuracy", "value": 0.9}]


def noisy_pairs_table(path: Path) -> None:
    """moco degrades with r*p, 'dense' does not; mere exposure costs only 0.02*r (with a seed wobble); a random arm."""
    rows = []
    for seed in SEEDS:
        for method, slope in (("moco", 0.2), ("dense", 0.0)):
            for r in (0.0, 0.5, 1.0):
                for p in (0.5, 1.0):
                    for mere in (False, True):
                        if mere and r == 0:
                            continue
                        miou = 0.7 - (0.02 * r if mere else slope * r * p)
                        params = {"method": method, "r": r, "p": p, "mere_exposure": mere}
                        rows += _rows(f"{method}-{r}-{p}-{mere}-{seed}", params, seed, miou, miou + 0.1,
                                      wobble=MERE_WOBBLE[seed] if mere else 0.0)
        rows += _rows(f"random-{seed}", {"method": "random", "r": None, "p": None, "mere_exposure": None},
                      seed, 0.4, 0.5, pretrain_seconds=0.0)
    write_rows(path, rows, ["run", "seed", "method", "r", "p", "mere_exposure"])


def test_noisy_pairs_report_series_and_verdicts(tmp_path):
    noisy_pairs_table(tmp_path / "results.csv")
    assert main([str(tmp_path), "--out", str(tmp_path / "rep")]) == 0
    from noisyseg.report.tables import load_table

    sections = {s.name: s for s in build_report(load_table(tmp_path / "results.csv"), tmp_path / "rep")}
    assert set(sections) == {"summary", "vs_r", "heatmap_rp", "noisy_minus_mere", "vs_random"}
    vs = sections["vs_r"].data["miou"]
    assert set(vs.series) == {"moco, p=0.5", "moco, p=1.0", "dense, p=0.5", "dense, p=1.0"}
    xs = [x for x, _ in vs.series["moco, p=1.0"]]
    means = [s.mean for _, s in vs.series["moco, p=1.0"]]
    assert xs == [0.0, 0.5, 1.0] and means == pytest.approx([0.7, 0.6, 0.5])
    assert all(s.std == pytest.approx(0.01) and s.n == 3 for _, s in vs.series["moco, p=1.0"])
    assert vs.series["moco, p=1.0"][0][1].half_width == pytest.approx(HALF)
    assert set(vs.baselines) == {"random"} and vs.baselines["random"].mean == pytest.approx(0.4)
    f1 = sections["vs_r"].data["f1"].series["dense, p=0.5"]
    assert [s.mean for _, s in f1] == pytest.approx([0.8, 0.8, 0.8])

    heat = sections["heatmap_rp"].data
    assert set(heat.panels) == {"moco", "dense"} and heat.xs == [0.0, 0.5, 1.0] and heat.ys == [0.5, 1.0]
    assert heat.panels["moco"][(0.5, 0.5)].mean == pytest.approx(0.65)
    diff = sections["noisy_minus_mere"].data
    assert diff.panels["moco"][(1.0, 1.0)].mean == pytest.approx(-0.2 + 0.02)
    assert diff.panels["dense"][(0.5, 1.0)].mean == pytest.approx(0.01)

    md = (tmp_path / "rep" / "report.md").read_text()
    # r = 1 minus r = 0, paired by seed: fully false pairs (p = 1) are expected to hurt, partly mismatched ones not
    assert ("- moco, p=1.0: mIoU 70.0 ± 2.5 at r=0.0, 50.0 ± 2.5 at r=1.0; difference -20.0 ± 0.0 points over "
            "3 seeds — **reproduced**.") in md
    assert ("- moco, p=0.5: mIoU 70.0 ± 2.5 at r=0.0, 60.0 ± 2.5 at r=1.0; difference -10.0 ± 0.0 points over "
            "3 seeds — **contradicted**.") in md
    assert ("- dense, p=0.5: mIoU 70.0 ± 2.5 at r=0.0, 70.0 ± 2.5 at r=1.0; difference +0.0 ± 0.0 points over "
            "3 seeds — **inconclusive (95 % CI holds zero)**.") in md
    # (r=1, p=1) minus (r=0, p=0.5): a drop is expected
    assert "- moco: mIoU 70.0 ± 2.5 at (r=0.0, p=0.5), 50.0 ± 2.5 at (r=1.0, p=1.0); difference -20.0 ± 0.0" in md
    # noisy minus mere: per-seed differences -0.19, -0.16, -0.19 (moco) and 0.01, 0.04, 0.01 (dense) at (1, 1)
    assert ("- moco: at (r=1.0, p=1.0) noisy pairs mIoU 50.0 ± 2.5, mere exposure 68.0 ± 5.0; difference -18.0 ± 4.3 "
            "points over 3 seeds — **contradicted**.") in md
    assert ("- dense: at (r=1.0, p=1.0) noisy pairs mIoU 70.0 ± 2.5, mere exposure 68.0 ± 5.0; difference +2.0 ± 4.3 "
            "points over 3 seeds — **inconclusive (95 % CI holds zero)**.") in md
    for name in ("vs_r", "heatmap_rp", "noisy_minus_mere"):
        assert (tmp_path / "rep" / f"{name}.png").stat().st_size > 1000
        assert (tmp_path / "rep" / f"{name}.csv").is_file()
    with open(tmp_path / "rep" / "vs_r.csv", newline="") as fh:
        got = [r for r in csv.DictReader(fh) if r["metric"] == "miou" and r["series"] == "moco, p=0.5"]
    assert [float(r["mean"]) for r in got] == pytest.approx([0.7, 0.65, 0.6])


def test_mere_exposure_for_one_method_only(tmp_path):
    noisy_pairs_table(tmp_path / "full.csv")
    from noisyseg.report.tables import load_table

    rows = [r for r in load_table(tmp_path / "full.csv") if not (r["method"] == "dense" and r["mere_exposure"])]
    sections = {s.name: s for s in build_report(rows, tmp_path / "rep")}
    diff = sections["noisy_minus_mere"].data
    assert set(diff.panels) == {"moco"} and diff.panels["moco"][(1.0, 0.5)].mean == pytest.approx(-0.1 + 0.02)


def test_method_decoder_table_with_class_mismatch(tmp_path):
    rows = []
    for seed in SEEDS:
        for down, offset in (("unet", 0.0), ("deeplabv3plus", -0.05), ("pspnet", -0.1)):
            rows += _rows(f"random-{seed}", {"method": "random", "classes": None}, seed, 0.5 + offset, 0.6, down, 0.0)
            for classes, gain in (("matched", 0.1), ("merged", 0.05)):
                rows += _rows(f"sup-{classes}-{seed}", {"method": "supervised", "classes": classes}, seed,
                              0.5 + offset + gain, 0.6, down)
            rows += _rows(f"moco-{seed}", {"method": "moco", "classes": None}, seed, 0.5 + offset - 0.03, 0.6, down)
    write_rows(tmp_path / "results.csv", rows, ["run", "seed", "method", "classes"])
    assert main([str(tmp_path)]) == 0
    from noisyseg.report.tables import load_table

    sections = {s.name: s for s in build_report(load_table(tmp_path / "results.csv"), tmp_path / "report")}
    assert set(sections) == {"summary", "method_decoder", "vs_random"}
    cells = sections["method_decoder"].data
    assert cells[("supervised, classes=merged", "pspnet")].mean == pytest.approx(0.45)
    assert cells[("random", "deeplabv3plus")].mean == pytest.approx(0.45)
    md = (tmp_path / "report" / "report.md").read_text()
    assert ("- supervised, classes=merged → pspnet: mIoU 45.0 ± 2.5 vs 40.0 ± 2.5; difference +5.0 ± 0.0 points over "
            "3 seeds — **reproduced**.") in md
    assert "- moco → unet: mIoU 47.0 ± 2.5 vs 50.0 ± 2.5; difference -3.0 ± 0.0 points over 3 seeds — **contradicted**." in md
    assert (tmp_path / "report" / "method_decoder_bars.png").is_file()
    with open(tmp_path / "report" / "method_decoder.csv", newline="") as fh:
        table = list(csv.reader(fh))
    assert table[0] == ["setting", "unet", "deeplabv3plus", "pspnet"] and len(table) == 5


def test_alpha_and_label_noise_sections(tmp_path):
    rows = []
    for seed in SEEDS:
        rows += _rows(f"infonce-{seed}", {"method": "false", "false_negative": "none", "alpha": None,
                                          "flip_rate": None}, seed, 0.6, 0.7)
        for mode in ("reference", "per_anchor"):
            for a in (0.0, 0.5, 1.0):
                rows += _rows(f"{mode}-{a}-{seed}", {"method": "false", "false_negative": mode, "alpha": a,
                                                     "flip_rate": None}, seed, 0.6 + 0.04 * a, 0.7)
    write_rows(tmp_path / "results.csv", rows, ["run", "seed", "method", "false_negative", "alpha"])
    from noisyseg.report.tables import load_table

    sections = {s.name: s for s in build_report(load_table(tmp_path / "results.csv"), tmp_path / "rep")}
    assert set(sections) == {"summary", "alpha"}
    miou = sections["alpha"].data["miou"]
    assert set(miou.series) == {"false_negative=reference", "false_negative=per_anchor"}
    assert set(miou.baselines) == {"false_negative=none"}
    assert [s.mean for _, s in miou.series["false_negative=per_anchor"]] == pytest.approx([0.6, 0.62, 0.64])
    lines = sections["alpha"].lines
    assert ("- false_negative=per_anchor: α=0.0: 60.0 ± 2.5 (+0.0 ± 0.0 vs false_negative=none), α=0.5: 62.0 ± 2.5 "
            "(+2.0 ± 0.0 vs false_negative=none), α=1.0: 64.0 ± 2.5 (+4.0 ± 0.0 vs false_negative=none); "
            "false_negative=none 60.0 ± 2.5.") in lines
    assert ("- false_negative=per_anchor, best α=1.0 minus false_negative=none: difference +4.0 ± 0.0 points over 3 "
            "seeds — **reproduced**.") in lines

    rows = []
    for seed in SEEDS:
        rows += _rows(f"random-{seed}", {"method": "random", "flip_rate": None}, seed, 0.5, 0.6, pretrain_seconds=0)
        for fr in (0.0, 0.3, 0.7):
            rows += _rows(f"sup-{fr}-{seed}", {"method": "supervised", "flip_rate": fr}, seed, 0.7 - 0.1 * fr, 0.8)
    write_rows(tmp_path / "ln.csv", rows, ["run", "seed", "method", "flip_rate"])
    sections = {s.name: s for s in build_report(load_table(tmp_path / "ln.csv"), tmp_path / "rep2")}
    assert set(sections) == {"summary", "label_noise", "vs_random"}
    ln = sections["label_noise"].data["miou"]
    assert list(ln.series) == ["supervised"] and set(ln.baselines) == {"random"}
    assert [s.mean for _, s in ln.series["supervised"]] == pytest.approx([0.7, 0.67, 0.63])
    assert sections["label_noise"].lines[1] == (
        "- supervised: mIoU 70.0 ± 2.5 at flip rate 0.0, 63.0 ± 2.5 at 0.7; random 50.0 ± 2.5; flip rate 0.7 minus "
        "random: difference +13.0 ± 0.0 points over 3 seeds — **reproduced**.")
    # two downstreams: each series is compared with the random arm of its own downstream
    for r in rows:
        if r["method"] == "random" and r["downstream"] == "unet":
            twin = {**r, "downstream": "probe", "value": r["value"] + 0.3 if r["metric"] == "miou" else r["value"]}
            rows.append(twin)
        elif r["method"] == "supervised" and r["downstream"] == "unet":
            rows.append({**r, "downstream": "probe"})
    write_rows(tmp_path / "ln2.csv", rows, ["run", "seed", "method", "flip_rate"])
    sec = {s.name: s for s in build_report(load_table(tmp_path / "ln2.csv"), tmp_path / "rep3")}["label_noise"]
    probe = next(line for line in sec.lines if line.startswith("- supervised, probe"))
    assert "random, probe 80.0 ± 2.5; flip rate 0.7 minus random, probe: difference -17.0 ± 0.0" in probe
    assert probe.endswith("— **contradicted**.")
    unet = next(line for line in sec.lines if line.startswith("- supervised, unet"))
    assert "random, unet 50.0 ± 2.5; flip rate 0.7 minus random, unet: difference +13.0 ± 0.0" in unet
    assert unet.endswith("— **reproduced**.")


def test_arm_ci_and_pairing_by_seed():
    st = stat([0.60, 0.61, 0.62])
    assert st.half_width == pytest.approx(HALF) and st.pct() == "61.0 ± 2.5"
    assert stat([0.6]).pct() == "60.0 (one seed)" and math.isinf(stat([0.6]).half_width)
    rows = [{"seed": s, "method": m, "value": v} for s, m, v in
            [(0, "a", 0.5), (1, "a", 0.7), (2, "a", 0.9), (0, "b", 0.4), (1, "b", 0.4), (3, "b", 0.1)]]
    assert per_seed(rows, {"method": "a"}) == {0: 0.5, 1: 0.7, 2: 0.9}
    d = paired_between(rows, {"method": "a"}, {"method": "b"})  # seeds 0 and 1 only: differences 0.1, 0.3
    assert d.n == 2 and d.mean == pytest.approx(0.2)
    assert d.half_width == pytest.approx(12.706205 * math.sqrt(0.02) / math.sqrt(2), rel=1e-6)
    assert paired_between(rows, {"method": "a"}, {"method": "c"}) is None
    with pytest.raises(ReportError, match="two rows of seed 0"):
        per_seed(rows + [{"seed": 0, "method": "a", "value": 0.1}], {"method": "a"})


def test_bad_input_exits_2(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "results.csv does not exist" in capsys.readouterr().err
    (tmp_path / "results.csv").write_text("")
    assert main([str(tmp_path)]) == 2
    (tmp_path / "results.csv").write_text("run,seed,split,metric,value\n")
    assert main([str(tmp_path)]) == 2
    assert "no rows" in capsys.readouterr().err
