"""NoisyLabels: seeded noisy masks from a wrapped dataset's clean masks (label_noise.apply_noise)."""

from __future__ import annotations

import numpy as np
import pytest
from datareal_fixtures import write_raster

from noisyseg.data.label_noise import LabelNoise, apply_noise, noise_rate
from noisyseg.data.product_noise import NoisyLabels
from noisyseg.data.raster import RasterSegmentation


@pytest.fixture
def clean(tmp_path):
    rng = np.random.default_rng(0)
    lab = np.zeros((1, 64, 64), np.uint8)
    for _ in range(12):  # blocky objects of classes 1..2
        r, c = rng.integers(0, 56, 2)
        lab[0, r:r + 8, c:c + 8] = rng.integers(1, 3)
    write_raster(tmp_path / "img.tif", rng.integers(1, 255, (3, 64, 64)).astype(np.uint8))
    write_raster(tmp_path / "lab.tif", lab)
    return RasterSegmentation(["img.tif"], ["lab.tif"], root=str(tmp_path), normalize=False)


def test_noisy_labels_are_seeded_and_measured(clean):
    noise = {"flip_rate": 0.5, "boundary_shift": 1, "merge": {"2": 1}}
    ds = NoisyLabels(clean, noise, num_classes=3, seed=7)
    s = ds[0]
    np.testing.assert_array_equal(s["clean_mask"].numpy(), clean[0]["mask"].numpy())
    want = apply_noise(clean[0]["mask"].numpy(), LabelNoise(flip_rate=0.5, boundary_shift=1, merge={2: 1}), 3,
                       np.random.default_rng([7, 0]))
    np.testing.assert_array_equal(s["mask"].numpy(), want)
    assert s["meta"]["noise_rate"] == pytest.approx(noise_rate(want, s["clean_mask"].numpy()))
    assert s["meta"]["noise_rate"] > 0
    np.testing.assert_array_equal(ds[0]["mask"].numpy(), s["mask"].numpy())  # same every epoch
    assert not np.array_equal(NoisyLabels(clean, noise, 3, seed=8)[0]["mask"].numpy(), s["mask"].numpy())
    assert ds.normalization is None and ds.stats["images"] == 1


def test_unknown_noise_field(clean):
    with pytest.raises(ValueError, match=r"unknown noise field\(s\) \['flip'\]; valid: .*flip_rate"):
        NoisyLabels(clean, {"flip": 0.1})
