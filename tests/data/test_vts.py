"""VTS (Gerard & Sullivan, arXiv 2211.13756 §IV-B): determinism, splits, cells, pairs."""

import numpy as np
import pytest
import torch

from noisyseg.data.loading import EpochIndex
from noisyseg.data.vts import SPLITS, TextureBank, VTSGenerator, VTSPairs, VTSSegmentation, split_indices


def test_same_seed_and_index_identical_different_differ():
    a = VTSSegmentation("train", length=4, size=32, seed=3)
    b = VTSSegmentation("train", length=4, size=32, seed=3)
    c = VTSSegmentation("train", length=4, size=32, seed=4)
    assert torch.equal(a[1]["image"], b[1]["image"]) and torch.equal(a[1]["mask"], b[1]["mask"])
    assert not torch.equal(a[1]["image"], a[2]["image"])
    assert not torch.equal(a[1]["image"], c[1]["image"])


@pytest.mark.parametrize("source", ["procedural:stratified", "skimage:brick"])
def test_texture_splits_disjoint_and_cover(source):
    ids = [set(TextureBank(source, s, 64, variants=40).ids.tolist()) for s in SPLITS]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    n = sum(len(i) for i in ids)
    assert len(ids[0]) == round(0.5 * n) and len(ids[1]) == round(0.3 * n)


def test_every_split_gets_a_texture_image():
    # 3 images used to leave val empty (rounded bounds 2, 2, 3); larger banks keep the rounded 0.5/0.3/0.2 bounds
    for n in range(3, 60):
        parts = [split_indices(n, s, 1).tolist() for s in SPLITS]
        assert all(parts), (n, parts)
        assert sorted(sum(parts, [])) == list(range(n))
        if n >= 5:
            assert [len(p) for p in parts] == np.diff([0, *np.round(np.cumsum([0.5, 0.3, 0.2]) * n).astype(int)]).tolist()


def test_fewer_texture_images_than_splits_named():
    assert sorted(np.concatenate([split_indices(7, s, 0) for s in SPLITS]).tolist()) == list(range(7))
    with pytest.raises(ValueError, match="need at least 3 texture images to split, got 2"):
        split_indices(2, "train", 0)


def test_cells_split_equally_between_classes_and_one_texture_per_class():
    gen = VTSGenerator("val", size=48, num_cells=20, seed=0)
    sc = gen.scene(5)
    assert np.bincount(sc.cell_class).tolist() == [10, 10]
    assert set(np.unique(sc.mask)) <= {0, 1}
    # every pixel's class is the class of its cell
    assert np.array_equal(sc.mask, sc.cell_class[sc.cells])


def test_third_class_variant_labels_noise_texture():
    ds = VTSSegmentation("test", length=2, size=48, third_class=True)
    assert ds.num_classes == 3
    assert set(ds[0]["clean_mask"].unique().tolist()) <= {0, 1, 2}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_cells": 1}, "num_cells=1"),
        ({"split": "holdout"}, "split 'holdout'"),
        ({"categories": ["procedural:nope", "procedural:veined"]}, "unknown procedural texture 'nope'"),
        ({"categories": ["dtd:banded", "dtd:veined"], "dtd_root": "/nonexistent"}, "DTD folder"),
    ],
)
def test_bad_generator_parameters_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VTSSegmentation(length=2, size=32, **kwargs)


def test_dtd_folder_layout(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cat in ("banded", "veined", "matted"):
        (tmp_path / "images" / cat).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "images" / cat / f"{i}.jpg")
    ds = VTSSegmentation(
        length=2, size=32, categories=["dtd:banded", "dtd:veined"], noise_texture="dtd:matted", dtd_root=str(tmp_path)
    )
    assert ds[0]["image"].shape == (3, 32, 32)
    with pytest.raises(ValueError, match="categories under"):
        VTSSegmentation(length=2, size=32, categories=["dtd:banded", "dtd:cracked"], dtd_root=str(tmp_path))


def test_label_noise_on_cells_realised_rate():
    ds = VTSSegmentation("train", length=40, size=48, label_noise={"flip_rate": 0.3})
    rates = [ds[i]["meta"]["noise_rate"] for i in range(40)]
    # 6 of 20 cells flip; cells have random areas, so the pixel rate scatters around 0.3
    assert abs(np.mean(rates) - 0.3) < 0.05
    s = ds[0]
    assert (s["mask"] != s["clean_mask"]).float().mean().item() == pytest.approx(s["meta"]["noise_rate"])


def test_noisy_pair_rate_and_per_image_noise_over_draws():
    r, p = 0.3, 0.25
    ds = VTSPairs("train", length=500, size=24, num_cells=20, r=r, p=p)
    noisy, replaced = [], []
    for epoch in range(4):
        for i in range(500):
            m = ds[EpochIndex(i, epoch)]["meta"]
            noisy.append(m["noisy"])
            if m["noisy"]:
                replaced.append(m["replaced_fraction"])
    assert abs(np.mean(noisy) - r) < 0.03  # 2000 Bernoulli(0.3) draws: sd ~0.01
    assert abs(np.mean(replaced) - p) < 0.05  # 5 of 20 cells, random cell areas


def test_clean_pair_is_same_image_noisy_pair_differs_in_replaced_cells_only():
    ds = VTSPairs("train", length=50, size=32, r=0.5, p=0.5)
    seen = {True: False, False: False}
    for i in range(50):
        s = ds[i]
        noisy = s["meta"]["noisy"]
        seen[noisy] = True
        same = torch.equal(s["image"], s["image2"])
        assert same != noisy
        assert torch.equal(s["mask"], s["mask2"])  # noise-free labels for both views
    assert all(seen.values())


def test_mere_exposure_has_noise_texture_but_no_mismatch():
    ds = VTSPairs("train", length=30, size=32, r=1.0, p=0.5, mere_exposure=True)
    plain = VTSPairs("train", length=30, size=32, r=0.0)
    for i in range(30):
        s = ds[i]
        assert torch.equal(s["image"], s["image2"])  # no mismatch
        assert not s["noisy_pair"]
        assert not torch.equal(s["image"], plain[i]["image"])  # but the noise texture is there


@pytest.mark.parametrize("p", [0.25, 0.75])
def test_mere_exposure_shows_noise_texture_in_both_views_over_area_p(p):
    """Mere exposure: both views are the corrupted scene, whose replaced cells cover ~p of it."""
    n = 60
    ds = VTSPairs("train", length=n, size=32, num_cells=20, r=1.0, p=p, mere_exposure=True)
    plain = VTSPairs("train", length=n, size=32, num_cells=20, r=0.0)
    changed = []
    for i in range(n):
        s, clean = ds[i], plain[i]["image"]
        diff = (s["image"] != clean).any(0)  # H x W pixels where the noise texture replaced the scene
        assert torch.equal((s["image2"] != clean).any(0), diff)  # the same noise in both views
        assert diff.float().mean().item() == pytest.approx(s["meta"]["replaced_fraction"], abs=0.02)
        changed.append(diff.float().mean().item())
    # round(p * 20) of 20 cells are replaced; cells have random areas, so the mean area is ~p
    assert abs(np.mean(changed) - round(p * 20) / 20) < 0.05


def test_pairing_is_a_function_of_index_and_epoch():
    ds = VTSPairs("train", length=200, size=16, num_cells=4, r=0.5, p=0.5)
    draw = lambda epoch: [ds[EpochIndex(i, epoch)]["meta"]["noisy"] for i in range(200)]  # noqa: E731
    assert draw(0) == [ds[i]["meta"]["noisy"] for i in range(200)]  # a plain index is epoch 0
    assert draw(1) == draw(1)  # reproducible
    assert sum(a != b for a, b in zip(draw(0), draw(1))) > 60  # ~100 of 200 differ between epochs


@pytest.mark.parametrize("kw", [{"r": 1.5}, {"p": -0.1}])
def test_pair_rates_outside_unit_interval(kw):
    with pytest.raises(ValueError, match="outside \\[0, 1\\]"):
        VTSPairs(length=2, **kw)
