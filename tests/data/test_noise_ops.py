"""Noise operation lists: each op on a hand-built mask, order, instances, seeding, the YAML forms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from noisyseg.data.label_noise import (
    OPS,
    Boundary,
    Coarsen,
    Drop,
    Flip,
    JitterObjects,
    LabelNoise,
    Merge,
    apply_noise,
    coarsen,
    dataset_agreement,
    jitter_objects,
    label_agreement,
    parse_noise,
)
from noisyseg.data.product_noise import NoisyLabels
from noisyseg.data.loading import IGNORE_INDEX, make_sample

SPACENET = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "spacenet-rio"
STRUCT = ndimage.generate_binary_structure(2, 1)


class Masks:
    """A dataset of given masks (zero images), optionally with a clean_mask each."""

    def __init__(self, masks, clean=None):
        self.masks, self.clean = masks, clean

    def __len__(self):
        return len(self.masks)

    def __getitem__(self, i):
        clean = None if self.clean is None else self.clean[i]
        return make_sample(np.zeros((1,) + self.masks[i].shape, np.float32), self.masks[i], clean_mask=clean)


def squares(size=64):
    """Four squares of sides 5, 6, 7, 8 (classes 1, 2, 1, 2), 24 px apart and 8 px from the border."""
    mask = np.zeros((size, size), np.int64)
    for (r, c), side, cls in zip([(8, 8), (8, 40), (40, 8), (40, 40)], (5, 6, 7, 8), (1, 2, 1, 2)):
        mask[r:r + side, c:c + side] = cls
    return mask


def components(mask, background=0):
    """``[(class, rows slice, cols slice, area)]`` of the foreground connected components."""
    out = []
    for c in sorted(set(np.unique(mask)) - {background, IGNORE_INDEX}):
        lab, n = ndimage.label(mask == c)
        for k, (rows, cols) in enumerate(ndimage.find_objects(lab), 1):
            out.append((int(c), rows, cols, int((lab == k).sum())))
    return out


# ------------------------------------------------------------------------------------ single ops
def test_drop_removes_round_rate_objects_whole():
    mask = squares()
    out = apply_noise(mask, [Drop(0.5)], 3, np.random.default_rng(0))
    kept = components(out)
    assert len(kept) == 2  # round(0.5 * 4) dropped
    changed = out != mask
    assert (out[changed] == 0).all() and changed.sum() + sum(a for *_, a in kept) == (mask > 0).sum()


def test_boundary_op_erodes_and_dilates_by_hand_counts():
    mask = np.zeros((20, 20), np.int64)
    mask[5:15, 5:15] = 1  # 10 x 10
    assert (apply_noise(mask, [Boundary(-1)], 2, None) == 1).sum() == 8 * 8
    # 4-connected dilation by 2: 10 * 10 + 4 sides * 2 * 10 + 4 corner pixels at (1, 1) = 184
    assert (apply_noise(mask, [Boundary(2)], 2, None) == 1).sum() == 184


def test_coarsen_then_flip_blocks_flips_exactly_round_rate_whole_blocks():
    rng0 = np.random.default_rng(0)
    mask = rng0.integers(0, 3, (8, 16))  # 2 x 4 blocks of 4 px with minority pixels
    coarse = coarsen(mask, 4)
    for seed in range(10):
        out = apply_noise(mask, [{"op": "coarsen", "factor": 4}, {"op": "flip", "rate": 0.25, "unit": "blocks",
                                                                       "block": 4}], 3, np.random.default_rng(seed))
        blocks = out.reshape(2, 4, 4, 4).transpose(0, 2, 1, 3).reshape(8, 16)  # [block, pixel]
        assert (blocks == blocks[:, :1]).all()  # every block one class
        flipped = (out != coarse).reshape(2, 4, 4, 4).transpose(0, 2, 1, 3).reshape(8, 16)
        assert flipped.all(1).sum() == 2 and flipped.any(1).sum() == 2  # round(0.25 * 8) whole blocks


def test_order_matters_coarsen_flip_blocks_vs_flip_objects_coarsen():
    mask = np.zeros((8, 16), np.int64)
    mask[:4, :4] = 1  # 2 objects, 8 blocks of 4 x 4
    blocks_after = apply_noise(mask, [Coarsen(4), Flip(0.2, "blocks", 4)], 2, np.random.default_rng(0))
    objects_first = apply_noise(mask, [Flip(0.2), Coarsen(4)], 2, np.random.default_rng(0))
    assert (blocks_after != mask).sum() == 2 * 16  # round(0.2 * 8) = 2 blocks of 16 px
    assert (objects_first != mask).sum() == 0  # round(0.2 * 2) = 0 objects
    # with the same grid, block flips and block majority commute (both take the block's majority)
    noisy = np.random.default_rng(1).integers(0, 3, (8, 16))
    a = apply_noise(noisy, [Coarsen(4), Flip(0.5, "blocks", 4)], 3, np.random.default_rng(2))
    b = apply_noise(noisy, [Flip(0.5, "blocks", 4), Coarsen(4)], 3, np.random.default_rng(2))
    np.testing.assert_array_equal(a, b)


def jitter_reference(m, grow, shift, rng):
    """The plain loop over a binary mask's components, full-image morphology; shifts do not wrap."""
    lab, n = ndimage.label(m)
    out = np.zeros_like(m)
    h, w = m.shape
    for k in range(1, n + 1):
        b = lab == k
        if rng.random() < 0.5:
            b = ndimage.binary_dilation(b, STRUCT, iterations=grow)
        else:
            b = ndimage.binary_erosion(b, STRUCT, iterations=grow)
        dy, dx = rng.integers(-shift, shift + 1), rng.integers(-shift, shift + 1)
        moved = np.zeros_like(b)
        moved[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = b[max(-dy, 0):h + min(-dy, 0),
                                                                           max(-dx, 0):w + min(-dx, 0)]
        out[moved] = 1
    return out


@pytest.mark.parametrize("seed", range(4))
def test_jitter_objects_equals_the_reference_loop(seed):
    m = (ndimage.uniform_filter(np.random.default_rng(seed).random((48, 40)), 5) > 0.55).astype(np.int64)
    assert ndimage.label(m)[1] >= 5 and (m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any())
    got = jitter_objects(m, 2, 3, np.random.default_rng(seed))
    np.testing.assert_array_equal(got, jitter_reference(m, 2, 3, np.random.default_rng(seed)))


def test_jitter_translates_within_shift_and_keeps_classes():
    mask = squares()
    before = {area: (c, rows.start, cols.start) for c, rows, cols, area in components(mask)}
    offsets = set()
    for seed in range(6):
        after = components(apply_noise(mask, [JitterObjects(grow=0, shift=3)], 3, np.random.default_rng(seed)))
        assert sorted(a for *_, a in after) == [25, 36, 49, 64]  # same squares, none lost
        for c, rows, cols, area in after:
            c0, r0, k0 = before[area]
            dy, dx = rows.start - r0, cols.start - k0
            assert c == c0 and -3 <= dy <= 3 and -3 <= dx <= 3
            offsets.add((dy, dx))
    assert len(offsets) > 5  # the shifts do vary


def test_jitter_grows_or_shrinks_each_object_by_hand_areas():
    mask = squares()
    side_class = {5: 1, 6: 2, 7: 1, 8: 2}
    kinds = set()
    for seed in range(4):
        after = components(apply_noise(mask, [JitterObjects(grow=2, shift=0)], 3, np.random.default_rng(seed)))
        assert len(after) == 4
        for c, rows, cols, area in after:
            box = rows.stop - rows.start
            if area == box * box:  # eroded by 2: an (s - 4) square
                s, kind = box + 4, "eroded"
            else:  # dilated by 2, 4-connected: s^2 + 4 sides * 2 * s + 4 corner pixels, box s + 4
                s, kind = box - 4, "dilated"
                assert area == s * s + 8 * s + 4
            assert side_class[s] == c
            kinds.add(kind)
    assert kinds == {"eroded", "dilated"}


def test_drop_then_jitter_keeps_count_minus_drops_and_ignore():
    mask = squares()
    mask[:3] = IGNORE_INDEX
    for seed in range(4):
        out = apply_noise(mask, parse_noise([{"op": "drop", "rate": 0.5}, {"op": "jitter_objects", "grow": 2,
                                                                                "shift": 3}]),
                              3, np.random.default_rng(seed))
        assert len(components(out)) == 2
        np.testing.assert_array_equal(out == IGNORE_INDEX, mask == IGNORE_INDEX)


def test_jitter_never_paints_ignore_pixels():
    mask = np.zeros((14, 12), np.int64)
    mask[4:10, 3:9] = 1  # touches the ignore columns
    mask[:, 9:] = IGNORE_INDEX
    reached = 0
    for seed in range(12):
        out = jitter_objects(mask, 2, 3, np.random.default_rng(seed))
        np.testing.assert_array_equal(out == IGNORE_INDEX, mask == IGNORE_INDEX)
        free = jitter_objects(np.where(mask == IGNORE_INDEX, 0, mask), 2, 3, np.random.default_rng(seed))
        reached += int((free[:, 9:] == 1).any())  # the same draws without the ignore columns
    assert reached >= 3


def test_ops_keep_ignore_pixels_and_invent_none():
    rng = np.random.default_rng(0)
    mask = np.repeat(np.repeat(rng.integers(0, 3, (6, 6)), 6, 0), 6, 1)
    mask[:5, :7] = IGNORE_INDEX  # partly covers the first 4 x 4 coarse block
    ops = [Drop(0.3), JitterObjects(1, 2), Flip(0.3, "blocks", 4), Coarsen(4), Merge({2: 1}), Boundary(1)]
    out = apply_noise(mask, ops, 3, np.random.default_rng(1))
    np.testing.assert_array_equal(out == IGNORE_INDEX, mask == IGNORE_INDEX)


def test_merge_takes_yaml_string_keys():
    mask = np.array([[0, 1, 2]])
    np.testing.assert_array_equal(apply_noise(mask, [{"op": "merge", "mapping": {"2": 1}}], 3, None), [[0, 1, 1]])


# ------------------------------------------------------------------- instances, forms and seeding
def test_instances_serve_object_ops_until_a_boundary_moves():
    mask = np.ones((4, 8), np.int64)  # one component ...
    cells = np.repeat(np.array([[0, 1]]), 4, 0).repeat(4, 1)  # ... made of two 4 x 4 cells
    flip = Flip(0.5)  # K = 2: a flipped cell changes all its 16 px
    changed = lambda ops: int((apply_noise(mask, ops, 2, np.random.default_rng(0), instances=cells) != mask).sum())
    assert changed([flip]) == 16  # cells: round(0.5 * 2) = 1
    assert changed([Drop(0.0), Merge({3: 1}), flip]) == 16  # no boundary moved: still the cells
    assert changed([Coarsen(2), flip]) == 0  # coarsened: the one component, round(0.5 * 1) = 0
    assert changed([Boundary(1), flip]) == 0


def test_list_and_dict_forms_agree():
    rng = np.random.default_rng(3)
    cls = rng.integers(0, 3, (6, 7))
    mask, cells = np.repeat(np.repeat(cls, 6, 0), 6, 1), np.repeat(np.repeat(np.arange(42).reshape(6, 7), 6, 0), 6, 1)
    mask[:2, :9] = IGNORE_INDEX
    legacy = {"drop_rate": 0.2, "flip_rate": 0.3, "boundary_shift": 1, "coarse_factor": 4, "merge": {"2": 1},
              "background": 0}
    ops = [{"op": "drop", "rate": 0.2}, {"op": "flip", "rate": 0.3}, {"op": "boundary", "pixels": 1},
           {"op": "coarsen", "factor": 4}, {"op": "merge", "mapping": {2: 1}}]
    assert parse_noise(legacy) == parse_noise(ops) == LabelNoise(**legacy).ops()
    for inst in (None, cells):
        a = apply_noise(mask, LabelNoise(**legacy), 3, np.random.default_rng(5), inst)
        np.testing.assert_array_equal(a, apply_noise(mask, ops, 3, np.random.default_rng(5), inst))
    a, b = NoisyLabels(Masks([mask, mask.T.copy()]), legacy, 3, 9), NoisyLabels(Masks([mask, mask.T.copy()]), ops, 3, 9)
    for i in range(2):
        np.testing.assert_array_equal(a[i]["mask"].numpy(), b[i]["mask"].numpy())


def test_noisy_labels_seeded_per_seed_and_index():
    base = squares()
    ds = NoisyLabels(Masks([base, base.copy()]), [{"op": "jitter_objects", "grow": 1, "shift": 3}], 3, seed=4)
    s0, s1 = ds[0], ds[1]
    want = apply_noise(base, [JitterObjects(1, 3)], 3, np.random.default_rng([4, 0]))
    np.testing.assert_array_equal(s0["mask"].numpy(), want)
    np.testing.assert_array_equal(ds[0]["mask"].numpy(), want)  # same every time
    assert not np.array_equal(s1["mask"].numpy(), want)  # same clean mask, other index: other noise
    other = NoisyLabels(Masks([base]), [{"op": "jitter_objects", "grow": 1, "shift": 3}], 3, seed=5)[0]
    assert not np.array_equal(other["mask"].numpy(), want)
    assert s0["meta"]["noise_rate"] == pytest.approx(float((want != base).mean()))


def test_nested_noisy_labels_compound_and_keep_the_truth():
    clean = np.array([[0, 1, 2, 2]] * 2)
    inner = NoisyLabels(Masks([clean]), [{"op": "merge", "mapping": {2: 1}}], 3)
    outer = NoisyLabels(inner, [{"op": "merge", "mapping": {1: 0}}], 3)
    s = outer[0]
    np.testing.assert_array_equal(s["mask"].numpy(), np.zeros((2, 4)))  # 2 -> 1 -> 0: compounded
    np.testing.assert_array_equal(s["clean_mask"].numpy(), clean)
    assert s["meta"]["noise_rate"] == pytest.approx(0.75)


@pytest.mark.parametrize("spec, match", [
    ([{"op": "flp", "rate": 0.1}],
     r"noise entry 0: unknown op 'flp'; valid ops: \['boundary', 'coarsen', 'drop', 'flip', 'jitter_objects'"),
    ([{"op": "coarsen", "factor": 2}, {"op": "flip", "rte": 0.1}],
     r"noise entry 1 \(op 'flip'\): unknown field\(s\) \['rte'\]; valid: \['rate', 'unit', 'block'\]"),
    ([{"op": "flip", "rate": 0.1, "unit": "blocks"}], r"block=None must be an integer >= 1"),
    ([{"op": "flip", "rate": 0.1, "unit": "pixels"}], r"unit='pixels'; valid: 'objects', 'blocks'"),
    ([{"op": "drop", "rate": 1.5}], r"'drop': rate=1.5 is outside \[0, 1\]"),
    ([{"op": "drop"}], r"noise entry 0 \(op 'drop'\): .*missing.*'rate'"),
    ([{"op": "jitter_objects", "grow": -1}], r"grow=-1 must be an integer >= 0"),
    ([{"op": "coarsen", "factor": 2.5}], r"factor=2.5 must be an integer >= 1"),
    ([{"rate": 0.1}], r"noise entry 0 .* must be a mapping with an 'op' key"),
    ({"flip": 0.1}, r"unknown noise field\(s\) \['flip'\]; valid: .*flip_rate"),
])
def test_bad_noise_specs_name_the_value_and_the_valid_ones(spec, match):
    with pytest.raises(ValueError, match=match):
        NoisyLabels(Masks([np.zeros((4, 4), np.int64)]), spec)


def test_op_dicts_round_trip():
    for cls, kw in [(Drop, {"rate": 0.1}), (Flip, {"rate": 0.2, "unit": "blocks", "block": 8}),
                    (Boundary, {"pixels": -2}), (JitterObjects, {"grow": 2, "shift": 3}), (Coarsen, {"factor": 4}),
                    (Merge, {"mapping": {2: 1}})]:
        op = cls(**kw)
        assert OPS[op.op] is cls and parse_noise([op.to_dict()]) == [op]


# ------------------------------------------------------------------------------------ real masks
def test_osm_like_noise_on_a_spacenet_mask():
    path = SPACENET / "masks" / "3band_013022223130_Public_img53.tif"
    if not path.is_file():
        pytest.skip("../shared/data/spacenet-rio not present: the real-mask test needs it")
    import rasterio

    with rasterio.open(path) as src:
        clean = (src.read(1) > 0).astype(np.int64)  # {0, 255} -> {0, 1}; 85 buildings
    spec = [{"op": "drop", "rate": 0.3}, {"op": "jitter_objects", "grow": 2, "shift": 3}]
    ds = NoisyLabels(Masks([clean]), spec, num_classes=2, seed=0)
    d = dataset_agreement(ds, 2)
    assert d == {**label_agreement(ds[0]["mask"], clean, 2), "samples": 1, "noisy_ignored": 0}
    assert d["iou"][1] < 0.7 and d["recall"][1] < 0.75  # about 30 % of the buildings gone, the rest moved
    assert d["agreement"] > 0.8
    n_clean, n_noisy = ndimage.label(clean)[1], ndimage.label(ds[0]["mask"].numpy())[1]
    assert n_noisy < 0.8 * n_clean
    assert torch.equal(ds[0]["clean_mask"], torch.from_numpy(clean))


def test_lightning_cli_parses_the_list_form():
    """``noisyseg fit`` reads configs with jsonargparse, which checks ``noise`` against the signature."""
    import warnings

    from jsonargparse import ArgumentParser

    from noisyseg.data.loading import DataModule

    noise = [{"op": "drop", "rate": 0.3}, {"op": "jitter_objects", "grow": 2, "shift": 3}]
    vts = {"class_path": "noisyseg.data.VTSSegmentation", "init_args": {"split": "val", "length": 2, "size": 32}}
    train = {"class_path": "noisyseg.data.NoisyLabels", "init_args": {"dataset": vts, "noise": noise, "num_classes": 2}}
    parser = ArgumentParser()
    parser.add_subclass_arguments(DataModule, "data")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = parser.parse_object({"data": {"class_path": "noisyseg.data.DataModule",
                                            "init_args": {"batch_size": 2, "train": train}}})
        ds = parser.instantiate_classes(cfg).data.train_set
    assert ds.ops == [Drop(0.3), JitterObjects(2, 3)]
