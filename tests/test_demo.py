"""`noisyseg demo --quick` end to end: every arm trained and scored, report and figure written."""

import csv

import pytest

from noisyseg.cli import main


def test_demo_quick(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    arms = {r["arm"] for r in rows}
    assert arms == {"random init", "supervised (noisy labels)", "moco (clean pairs)", "moco (noisy pairs r=.5 p=.5)"}
    for arm in arms:
        for mode in ("probe", "finetune"):
            miou = [float(r["value"]) for r in rows if r["arm"] == arm and r["mode"] == mode and r["metric"] == "miou"]
            assert len(miou) == 1 and 0.0 <= miou[0] <= 1.0
    report = (out / "report.md").read_text()
    assert report.count("| moco (") == 2 and "| random init |" in report and "IoU matted (ft)" in report
    png = (out / "demo.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    # the encoder files passed from pretraining to fine-tuning are real encoder files
    from noisyseg.runfiles import read_encoder

    _, meta = read_encoder(out / "pretrain-moco-noisy" / "encoder.safetensors")
    assert meta["trained"]["method"] == "moco" and meta["trained"]["steps"] == 2  # 16 images, batch 8


@pytest.mark.slow
def test_demo_full_noisy_label_encoder_beats_random(tmp_path):
    """Full-size demo without the MoCo arms (~2 min here): noisy-label encoder beats random, frozen."""
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--no-moco"]) == 0
    miou = {
        (r["arm"], r["mode"]): float(r["value"])
        for r in csv.DictReader((out / "results.csv").open())
        if r["metric"] == "miou"
    }
    assert miou[("supervised (noisy labels)", "probe")] > miou[("random init", "probe")] + 0.03
