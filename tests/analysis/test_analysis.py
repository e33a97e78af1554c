"""Encoder-vs-decoder analysis: Fisher ratio against its closed form, probes, weight statistics."""

from __future__ import annotations

import copy
import math

import pytest
import segmentation_models_pytorch as smp
import torch

from noisyseg.analysis import QUICK, load_analysis_config, main
from noisyseg.analysis.encoder_decoder import COLUMNS, analyze_models, layers
from noisyseg.analysis.fisher import downsample_labels, fisher_ratio, linear_probe_accuracy, sample_pixels
from noisyseg.analysis.weights import relative_change, weight_stats
from noisyseg.data import VTSSegmentation


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_fisher_ratio_exact_closed_form():
    # class c: points mu_c ± s e_d for each axis d -> within-class mean exactly mu_c and each point
    # lies s from it, so tr(S_W) = N s^2; mu_0 = (m,0,0), mu_1 = (-m,0,0) -> tr(S_B) = N m^2
    m, s, d = 3.0, 0.5, 3
    eye = torch.eye(d)
    pts, labels = [], []
    for c, mu in ((0, torch.tensor([m, 0, 0])), (1, torch.tensor([-m, 0, 0]))):
        for sign in (1, -1):
            pts.append(mu + sign * s * eye)
            labels += [c] * d
    x, y = torch.cat(pts), torch.tensor(labels)
    assert fisher_ratio(x, y) == pytest.approx(m**2 / s**2)
    # ignored pixels (far away) change nothing
    x2 = torch.cat([x, torch.full((5, d), 100.0)])
    y2 = torch.cat([y, torch.full((5,), 255)])
    assert fisher_ratio(x2, y2) == pytest.approx(m**2 / s**2)
    assert math.isnan(fisher_ratio(x, torch.zeros_like(y)))


def test_fisher_ratio_gaussian_clusters():
    # two isotropic Gaussians N(±m e1, σ² I_D), equal sizes: ratio -> m² / (D σ²)
    g = torch.Generator().manual_seed(0)
    n, d, m, sigma = 20000, 4, 1.0, 0.5
    x = torch.randn(2 * n, d, generator=g) * sigma
    x[:n, 0] += m
    x[n:, 0] -= m
    y = torch.cat([torch.zeros(n), torch.ones(n)]).long()
    assert fisher_ratio(x, y) == pytest.approx(m**2 / (d * sigma**2), rel=0.03)


def test_linear_probe_separable_and_random():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(400, 8, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    assert linear_probe_accuracy(x[:200], y[:200], x[200:], y[200:], steps=200) >= 0.97
    y_rand = torch.randint(0, 2, (400,), generator=g)
    acc = linear_probe_accuracy(x[:200], y_rand[:200], x[200:], y_rand[200:], steps=200)
    assert 0.35 <= acc <= 0.65


def test_downsample_and_sample_pixels_skip_ignore():
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    labels[:, :, 4:] = 1
    labels[1] = 255  # second image entirely unlabelled
    assert downsample_labels(labels, (4, 4))[0].tolist() == [[0, 0, 1, 1]] * 4
    feats = torch.arange(2 * 3 * 16, dtype=torch.float).reshape(2, 3, 4, 4)
    x, y, img = sample_pixels(feats, labels, 5, torch.Generator().manual_seed(0))
    assert x.shape == (5, 3) and set(img.tolist()) == {0}
    for xi, yi in zip(x, y):  # features and labels stay aligned: column j of the map has label j >= 2
        col = int(xi[0]) % 4
        assert yi == (1 if col >= 2 else 0)


def test_weight_statistics_known_values():
    w0 = {"enc.conv.weight": torch.ones(2, 3, 1, 1), "enc.bn.weight": torch.ones(2), "dec.lin.weight": torch.ones(4, 4)}
    w = {"enc.conv.weight": 1.5 * torch.ones(2, 3, 1, 1), "enc.bn.weight": 9 * torch.ones(2),
         "dec.lin.weight": torch.ones(4, 4)}
    other = {**w, "enc.conv.weight": torch.ones(2, 3, 1, 1)}
    assert relative_change(w["enc.conv.weight"], w0["enc.conv.weight"]) == pytest.approx(0.5)
    st = weight_stats(w, w0, {"enc": "enc.", "dec": "dec."}, other)
    assert st["enc"]["change"] == pytest.approx(0.5)  # the BatchNorm scale (1-D) is not counted
    assert st["enc"]["mean"] == pytest.approx(1.5) and st["enc"]["std"] == pytest.approx(0.0)
    assert st["enc"]["distance"] == pytest.approx(0.5 / 1.5)  # ‖1.5−1‖/‖1.5‖
    assert st["dec"]["change"] == 0 and st["dec"]["distance"] == 0
    with pytest.raises(ValueError, match="nothing"):
        weight_stats(w, w0, {"nothing": "zzz."})


def test_analyze_models_rows_on_identical_and_perturbed_unets():
    torch.manual_seed(0)
    net = smp.Unet("resnet18", encoder_weights=None, classes=2)
    init = copy.deepcopy(net.state_dict())
    noisy = copy.deepcopy(net)
    with torch.no_grad():  # perturb only the decoder of the "noisy" model
        for p in noisy.decoder.parameters():
            if p.dim() >= 2:
                p.mul_(1.1)
    ds = VTSSegmentation("val", 4, 32, 6, seed=0)
    rows = analyze_models(net, noisy, init, ds, images=4, pixels_per_image=16, probe_steps=20)
    assert [r["layer"] for r in rows] == list(layers(net)) and len(rows) == 10
    assert all(list(r) == COLUMNS for r in rows)
    enc = [r for r in rows if r["part"] == "encoder"]
    dec = [r for r in rows if r["part"] == "decoder"]
    assert [r["stride"] for r in enc] == [2, 4, 8, 16, 32] and [r["stride"] for r in dec] == [16, 8, 4, 2, 1]
    for r in enc:  # identical encoders: identical features at the same pixels, no distance
        assert r["fisher_clean"] == pytest.approx(r["fisher_noisy"]) and r["clean_noisy_distance"] == 0
        assert r["change_clean"] == 0 and r["change_noisy"] == 0
    for r in dec:
        assert r["change_noisy"] == pytest.approx(0.1) and r["clean_noisy_distance"] == pytest.approx(0.1 / 1.0)


def test_config_errors_and_quick_cli(tmp_path, capsys):
    bad = tmp_path / "a.yaml"
    bad.write_text("epochz: 3\n")
    assert main(["--out", str(tmp_path / "o"), "--config", str(bad)]) == 2
    assert "epochz" in capsys.readouterr().err
    assert load_analysis_config(None, quick=True, flip_rate=0.5).flip_rate == 0.5
    with pytest.raises(ValueError, match="flip_rate"):
        load_analysis_config(None, quick=True, flip_rate=0.0)
    assert main(["--out", str(tmp_path / "o"), "--quick"]) == 0
    out = capsys.readouterr().out
    assert "Encoder vs decoder" in out and "Fisher ratio drop" in out
    assert (tmp_path / "o" / "analysis.png").is_file() and (tmp_path / "o" / "analysis.csv").read_text().count("\n") == 11
    assert QUICK.max_steps == 2
