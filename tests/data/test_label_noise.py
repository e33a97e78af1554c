"""Label-noise functions: realised rates, determinism, ignore pixels untouched."""

import numpy as np
import pytest

from noisyseg.data.label_noise import (
    LabelNoise,
    apply_noise,
    coarsen,
    drop_objects,
    flip_objects,
    merge_classes,
    noise_rate,
    shift_boundaries,
)
from noisyseg.data.sample import IGNORE_INDEX


def blocks(n=8, size=8, classes=3, seed=0):
    """An n x n grid of size x size squares with random classes: n*n objects."""
    rng = np.random.default_rng(seed)
    cls = rng.integers(0, classes, (n, n))
    inst = np.arange(n * n).reshape(n, n)
    up = lambda a: np.repeat(np.repeat(a, size, 0), size, 1)
    return up(cls), up(inst)


def test_flip_rate_realised_exactly_on_equal_objects():
    mask, inst = blocks()
    for rate in (0.0, 0.25, 0.5, 1.0):
        noisy = flip_objects(mask, rate, 3, np.random.default_rng(1), instances=inst)
        assert noise_rate(noisy, mask) == pytest.approx(rate)  # equal-area objects, always a new class


def test_flip_is_seeded():
    mask, inst = blocks()
    a = flip_objects(mask, 0.3, 3, np.random.default_rng(5), instances=inst)
    b = flip_objects(mask, 0.3, 3, np.random.default_rng(5), instances=inst)
    assert np.array_equal(a, b)


def test_boundary_shift_erode_dilate():
    mask = np.zeros((20, 20), dtype=np.int64)
    mask[5:15, 5:15] = 1  # 10x10 square
    assert (shift_boundaries(mask, -1) == 1).sum() == 64
    assert (shift_boundaries(mask, 1) == 1).sum() == 100 + 40  # 4-connected dilation adds the sides


def test_coarsen_block_mode():
    mask = np.zeros((4, 4), dtype=np.int64)
    mask[0, 0] = 1  # a minority pixel vanishes in its 2x2 block
    mask[2:, 2:] = 2
    out = coarsen(mask, 2)
    assert out[0, 0] == 0 and (out[2:, 2:] == 2).all()
    mask[0:2, 0:2] = IGNORE_INDEX
    assert (coarsen(mask, 2)[0:2, 0:2] == IGNORE_INDEX).all()


def test_merge_and_drop():
    mask, inst = blocks(classes=3)
    merged = merge_classes(mask, {2: 1})
    assert 2 not in merged
    dropped = drop_objects(mask, 1.0, np.random.default_rng(0), instances=inst)
    assert (dropped == 0).all()


def test_apply_noise_keeps_ignore_pixels():
    mask, inst = blocks()
    mask[:4] = IGNORE_INDEX
    noisy = apply_noise(mask, LabelNoise(flip_rate=0.5, coarse_factor=4), 3, np.random.default_rng(0), inst)
    assert (noisy[:4] == IGNORE_INDEX).all()


@pytest.mark.parametrize("kw", [{"flip_rate": 1.5}, {"drop_rate": -0.2}, {"coarse_factor": 0}])
def test_bad_noise_config_named(kw):
    name = next(iter(kw))
    with pytest.raises(ValueError, match=name):
        LabelNoise(**kw)
