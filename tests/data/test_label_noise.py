"""Label-noise functions: realised rates, determinism, ignore pixels untouched, the dict form frozen."""

import hashlib

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
from noisyseg.data.product_noise import NoisyLabels
from noisyseg.data.loading import IGNORE_INDEX, make_sample


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


# ------------------------------------------------------------------ the LabelNoise form is frozen
def rectangles():
    """40 x 44, 12 random rectangles of classes 1..2 over 0, an ignore corner."""
    rng = np.random.default_rng(0)
    mask = np.zeros((40, 44), np.int64)
    for _ in range(12):
        r, c = rng.integers(0, 34, 2)
        h, w = rng.integers(2, 9, 2)
        mask[r:r + h, c:c + w] = rng.integers(1, 3)
    mask[:3, :5] = IGNORE_INDEX
    return mask


def cells():
    """36 x 42 of 6 x 6 cells with random classes 0..2, and the cell ids (VTS-like instances)."""
    rng = np.random.default_rng(1)
    up = lambda a: np.repeat(np.repeat(a, 6, 0), 6, 1)
    return up(rng.integers(0, 3, (6, 7))), up(np.arange(42).reshape(6, 7))


def digest(a):
    return hashlib.sha256(np.ascontiguousarray(a, dtype=np.int64).tobytes()).hexdigest()[:16]


# outputs of apply_noise(mask, LabelNoise(**kw), 3, default_rng([3, 1]), instances) before the
# noise became operation lists (commit a95d98f): the dict form must keep giving them bit for bit
LEGACY = {
    "flip": ({"flip_rate": 0.3}, "bd07dfe52032f91a", "60c03485b4826499"),
    "drop": ({"drop_rate": 0.25}, "98a74b1598daf6f5", "1700e4f3d00ff1d2"),
    "dilate": ({"boundary_shift": 2}, "eeaa215ce5125706", "37a4bb119acf871e"),
    "erode": ({"boundary_shift": -1}, "fa6e1754a06aee62", "362f87e64a83677c"),
    "coarsen": ({"coarse_factor": 6}, "f9575d13706b383d", "ccddd25ab68be590"),
    "merge": ({"merge": {2: 1}}, "4462987619a7e49a", "8243b684cdfc4596"),
    "all": ({"drop_rate": 0.2, "flip_rate": 0.3, "boundary_shift": 1, "coarse_factor": 4, "merge": {2: 0}},
            "7491a288a4e8761a", "300685b0e9c544f3"),
    "background1": ({"drop_rate": 0.5, "boundary_shift": -1, "background": 1}, "b8f308b8443e25dc", "746077e7e910f11b"),
}


@pytest.mark.parametrize("name", sorted(LEGACY))
def test_label_noise_outputs_unchanged(name):
    kw, want_rect, want_cells = LEGACY[name]
    assert digest(apply_noise(rectangles(), LabelNoise(**kw), 3, np.random.default_rng([3, 1]))) == want_rect
    mask, inst = cells()
    assert digest(apply_noise(mask, LabelNoise(**kw), 3, np.random.default_rng([3, 1]), instances=inst)) == want_cells


def test_noisy_labels_dict_form_unchanged():
    class Masks:
        def __init__(self, masks):
            self.masks = masks

        def __len__(self):
            return len(self.masks)

        def __getitem__(self, i):
            return make_sample(np.zeros((1,) + self.masks[i].shape, np.float32), self.masks[i])

    rect = rectangles()
    ds = NoisyLabels(Masks([rect, rect.T.copy(), rect[::-1].copy()]),
                     {"drop_rate": 0.2, "flip_rate": 0.3, "coarse_factor": 4, "merge": {"2": 1}}, num_classes=3, seed=7)
    assert [digest(ds[i]["mask"].numpy()) for i in range(3)] == ["b70a20583a960328", "1502bc50a49ab0d9",
                                                                  "dbd1f21bf141ae5f"]
    assert [round(ds[i]["meta"]["noise_rate"], 6) for i in range(3)] == [0.135817, 0.966762, 0.145559]
