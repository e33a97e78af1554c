"""Batched augmentations: image/mask alignment, realised probabilities, reference blur, any band count.

Alignment is checked from the pixels themselves: the image carries its labels (a band equal to
the class id, or one band per class), so the label recomputed from a transformed image must equal
the transformed mask. Probabilities are counted over 4000 samples and must lie within 4 binomial
standard deviations of ``n * p``. The blur is compared with a direct 2-D convolution by the
outer-product Gaussian kernel on a reflect-padded input.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from noisyseg.transforms.batch import (
    IGNORE_INDEX,
    SEGMENTATION_PRESETS,
    ContrastiveView,
    SegmentationAugment,
    band_jitter,
    band_mean_grey,
    crop_params,
    d4,
    gaussian_blur,
    warp,
    warp_mask,
)

pytestmark = pytest.mark.usefixtures("one_thread")

BANDS = (1, 3, 4, 13)
N_DRAWS = 4000  # samples per probability check
N_CLASSES = 5


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_binomial(count: int, n: int, p: float) -> None:
    """``count`` successes of ``n`` draws lie within 4 standard deviations of a Binomial(n, p)."""
    bound = 4 * math.sqrt(n * p * (1 - p))
    assert abs(count - n * p) <= bound, f"{count} of {n}, expected {n * p:.0f} +- {bound:.0f}"


def block_mask(b: int, h: int, w: int, block: int, seed: int) -> torch.Tensor:
    """``[b, h, w]`` labels constant on ``block x block`` squares, at least two classes per sample."""
    g = seeded(seed)
    coarse = torch.randint(0, N_CLASSES, (b, h // block, w // block), generator=g)  # B x h/k x w/k
    coarse[:, 0, 0], coarse[:, 0, 1] = 0, 1  # two classes in every sample (and no symmetric masks)
    return coarse.repeat_interleave(block, 1).repeat_interleave(block, 2)


def labelled_image(mask: torch.Tensor, bands: int, seed: int) -> torch.Tensor:
    """``[B, bands, H, W]``: band 0 equals the class id, the other bands are random."""
    x = torch.randn(mask.shape[0], bands, *mask.shape[1:], generator=seeded(seed))
    x[:, 0] = mask.float()
    return x


def one_hot_image(mask: torch.Tensor) -> torch.Tensor:
    """``[B, N_CLASSES, H, W]``: one band per class, 1 where the pixel has that class."""
    return F.one_hot(mask, N_CLASSES).permute(0, 3, 1, 2).float()


def assert_bilinear_aligned(view: torch.Tensor, labels: torch.Tensor) -> None:
    """A bilinear warp of a one-hot image agrees with the nearest warp of its mask.

    The nearest source pixel carries the largest bilinear weight, at least 1/4, so the band of the
    warped label holds at least 0.25 at every pixel; where a band reaches 1 (all four neighbours
    of one class) the label is that band.
    """
    weight = view.gather(1, labels[:, None]).squeeze(1)  # B x H x W, bilinear weight of the label
    assert weight.min() >= 0.25 - 1e-5
    inside = view.amax(1) >= 1 - 1e-5  # pixels whose bilinear neighbours share one class
    assert inside.float().mean() > 0.5  # the check below is not vacuous
    assert torch.equal(view.argmax(1)[inside], labels[inside])


def d4_candidates(x: torch.Tensor) -> list[tuple[bool, int, torch.Tensor]]:
    """The eight D4 images of ``x [..., H, W]`` as (flipped, quarter turns, rot90(flip(x), k))."""
    return [
        (f, k, torch.rot90(x.flip(-1) if f else x, k, dims=(-2, -1))) for f in (False, True) for k in range(4)
    ]


def which(out: torch.Tensor, candidates: list[torch.Tensor]) -> torch.Tensor:
    """Index of the candidate each sample of ``out`` equals exactly; every sample must match one."""
    hits = torch.stack([(out == c).flatten(1).all(1) for c in candidates], 1)  # B x K
    assert torch.equal(hits.sum(1), torch.ones(out.shape[0], dtype=torch.long)), "a sample matches no candidate"
    return hits.float().argmax(1)


def template(n: int, bands: int = 1) -> torch.Tensor:
    """``[n, bands, 4, 4]`` copies of an asymmetric 4x4 ramp: its eight D4 images all differ."""
    ramp = torch.arange(16.0).view(4, 4)
    return torch.stack([ramp * (c + 1) for c in range(bands)])[None].repeat(n, 1, 1, 1)


def affine_residual(value: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample least-squares fit ``value = a * label + b``: slopes ``a`` and max abs residuals."""
    v, m = value.flatten(1).double(), label.flatten(1).double()  # B x P
    mc, vc = m - m.mean(1, keepdim=True), v - v.mean(1, keepdim=True)
    a = (mc * vc).sum(1) / (mc * mc).sum(1)  # B
    return a, (vc - a[:, None] * mc).abs().amax(1)


# ---------------------------------------------------------------- image and mask stay aligned


@pytest.mark.parametrize("bands", BANDS)
def test_d4_moves_image_and_every_mask_alike(bands):
    mask = block_mask(64, 16, 16, 4, seed=1)
    clean = block_mask(64, 16, 16, 2, seed=2)
    image = labelled_image(mask, bands, seed=3)
    if bands > 1:
        image[:, -1] = clean.float()
    out, out_mask, out_clean = d4(image, mask, clean, generator=seeded(4))
    assert out.shape == image.shape and out_mask.shape == mask.shape and out_mask.dtype == torch.long
    assert torch.equal(out[:, 0], out_mask.float())
    if bands > 1:
        assert torch.equal(out[:, -1], out_clean.float())
    # the mask got the same element of D4 as the image (not only a consistent-looking one)
    kinds = which(out, [c for *_, c in d4_candidates(image)])
    assert torch.equal(kinds, which(out_mask, [c for *_, c in d4_candidates(mask)]))
    assert torch.equal(kinds, which(out_clean, [c for *_, c in d4_candidates(clean)]))
    assert len(kinds.unique()) == 8  # all eight elements occur in 64 samples


def test_d4_on_a_non_square_image_only_flips_and_stays_aligned():
    mask = block_mask(32, 8, 12, 2, seed=5)
    image = labelled_image(mask, 3, seed=6)
    out, out_mask = d4(image, mask, generator=seeded(7))
    assert torch.equal(out[:, 0], out_mask.float())
    flipped = which(out, [image, image.flip(-1)])
    assert torch.equal(flipped, which(out_mask, [mask, mask.flip(-1)]))
    assert 0 < flipped.sum() < 32


@pytest.mark.parametrize("size", [None, 12, 40])
def test_crop_warp_and_warp_mask_stay_aligned(size):
    mask = block_mask(48, 32, 32, 8, seed=8)
    theta = crop_params(48, 32, 32, generator=seeded(9))
    out_size = (size or 32, size or 32)
    view = warp(one_hot_image(mask), theta, out_size)  # B x K x S x S, bilinear
    labels = warp_mask(mask, theta, out_size)  # B x S x S, nearest
    assert view.shape == (48, N_CLASSES, *out_size) and labels.shape == (48, *out_size)
    assert_bilinear_aligned(view, labels)


def test_contrastive_view_crops_the_mask_with_its_image():
    mask = block_mask(48, 32, 32, 8, seed=10)
    geometry_only = ContrastiveView(size=24, jitter=0, grey_p=0, blur_p=0)
    view, labels = geometry_only(one_hot_image(mask), mask, generator=seeded(11))
    assert_bilinear_aligned(view, labels)


def test_contrastive_view_is_the_documented_chain_of_ops():
    """Crop + flip, jitter p 0.8, grey p 0.2, blur p 0.5, in this order, from one generator."""
    mask = block_mask(32, 16, 16, 4, seed=12)
    image = torch.randn(32, 4, 16, 16, generator=seeded(13))
    # strengths other than the functions' defaults, so that a dropped argument shows
    view_op = ContrastiveView(size=12, scale=(0.3, 0.9), jitter=0.3, grey_p=0.4, blur_p=0.7)
    view, labels = view_op(image, mask, generator=seeded(14))
    g = seeded(14)
    theta = crop_params(32, 16, 16, (0.3, 0.9), generator=g)
    ref = warp(image, theta, (12, 12))
    assert torch.equal(labels, warp_mask(mask, theta, (12, 12)))
    ref = band_jitter(ref, 0.3, 0.3, p=0.8, generator=g)
    ref = band_mean_grey(ref, 0.4, generator=g)
    ref = gaussian_blur(ref, p=0.7, generator=g)
    assert torch.equal(view, ref)


def test_warp_mask_keeps_label_values_including_ignore():
    mask = block_mask(16, 16, 16, 4, seed=15)
    mask[:, 8:, 8:] = IGNORE_INDEX
    theta = crop_params(16, 16, 16, generator=seeded(16))
    labels = warp_mask(mask, theta, (20, 20))
    assert labels.dtype == torch.long
    assert set(labels.unique().tolist()) <= set(mask.unique().tolist())
    assert (labels == IGNORE_INDEX).any()


# ---------------------------------------------------------------- probabilities realised


def test_crop_params_flips_half_the_samples():
    theta = crop_params(N_DRAWS, 16, 16, generator=seeded(20))
    assert_binomial(int((theta[:, 0, 0] < 0).sum()), N_DRAWS, 0.5)
    assert (crop_params(N_DRAWS, 16, 16, flip=False, generator=seeded(20))[:, 0, 0] > 0).all()


def test_d4_flip_half_and_quarter_turns_uniform():
    image = template(N_DRAWS)
    out, out_mask = d4(image, image[:, 0].long(), generator=seeded(21))
    candidates = d4_candidates(image)
    kinds = which(out, [c for *_, c in candidates])
    assert torch.equal(out[:, 0], out_mask.float())
    flipped = torch.tensor([candidates[i][0] for i in kinds])
    turns = torch.tensor([candidates[i][1] for i in kinds])
    assert_binomial(int(flipped.sum()), N_DRAWS, 0.5)
    for k in range(4):
        assert_binomial(int((turns == k).sum()), N_DRAWS, 0.25)


def _jittered(x, p, g):
    return (band_jitter(x, 0.4, 0.4, p=p, generator=g) != x).flatten(1).any(1)


def _greyed(x, p, g):
    grey = x.mean(1, keepdim=True).expand_as(x)  # B x C x H x W
    return (band_mean_grey(x, p=p, generator=g) == grey).flatten(1).all(1)


def _blurred(x, p, g):
    # sigma 1: every blurred sample changes (at sigma 0.1 the kernel is a delta in float32)
    return (gaussian_blur(x, sigma=(1.0, 1.0), p=p, generator=g) != x).flatten(1).any(1)


@pytest.mark.parametrize("applied", [_jittered, _greyed, _blurred], ids=["band_jitter", "band_mean_grey", "blur"])
@pytest.mark.parametrize("p", [0.3, 0.8])
def test_photometric_op_hits_a_fraction_p_of_the_batch(applied, p):
    x = torch.randn(N_DRAWS, 3, 6, 6, generator=seeded(22))
    hits = applied(x, p, seeded(23))
    assert_binomial(int(hits.sum()), N_DRAWS, p)


@pytest.mark.parametrize(
    "op",
    [
        lambda x, g: crop_params(8, 16, 16, generator=g),
        lambda x, g: d4(x, generator=g)[0],
        lambda x, g: band_jitter(x, generator=g),
        lambda x, g: band_mean_grey(x, p=0.5, generator=g),
        lambda x, g: gaussian_blur(x, generator=g),
        lambda x, g: ContrastiveView()(x, generator=g)[0],
        lambda x, g: SegmentationAugment()(x, x[:, 0].long(), generator=g)[0],
        lambda x, g: SegmentationAugment("flips")(x, x[:, 0].long(), generator=g)[0],
    ],
    ids=[
        "crop_params", "d4", "band_jitter", "band_mean_grey", "gaussian_blur", "ContrastiveView", "d4_jitter", "flips"
    ],
)
def test_every_random_draw_comes_from_the_generator(op):
    """Same generator seed, different global seed: the same output."""
    x = torch.randn(8, 3, 16, 16, generator=seeded(24))
    torch.manual_seed(0)
    first = op(x, seeded(25))
    torch.manual_seed(1)
    assert torch.equal(first, op(x, seeded(25)))


# ---------------------------------------------------------------- Gaussian blur against a 2-D reference


def reference_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Depthwise 2-D convolution by the outer product of the 1-D Gaussian, reflect padding."""
    r = max(1, math.ceil(2 * sigma))
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    k1 = torch.exp(-0.5 * (t / sigma) ** 2)
    k1 = k1 / k1.sum()
    k2 = torch.outer(k1, k1)  # (2r+1) x (2r+1)
    c = x.shape[1]
    padded = F.pad(x.double(), (r, r, r, r), mode="reflect")
    return F.conv2d(padded, k2.expand(c, 1, -1, -1), groups=c).to(x.dtype)


@pytest.mark.parametrize("bands", BANDS)
def test_gaussian_blur_matches_the_2d_convolution_on_the_selected_samples(bands):
    x = torch.randn(16, bands, 10, 14, generator=seeded(30)) * 1500 - 200  # signed, in the thousands
    sigma = 1.3
    out = gaussian_blur(x, sigma=(sigma, sigma), p=0.5, generator=seeded(31))
    ref = reference_blur(x, sigma)
    same = (out == x).flatten(1).all(1)  # B: left bit-identical
    assert 0 < same.sum() < 16
    torch.testing.assert_close(out[~same], ref[~same], rtol=1e-5, atol=1e-2)
    assert (ref[~same] - x[~same]).abs().amax() > 100  # the blur really changes them


# ---------------------------------------------------------------- any band count, no clipping


@pytest.mark.parametrize("bands", BANDS)
def test_band_jitter_is_a_per_band_affine_map_within_its_amplitudes(bands):
    x = torch.rand(32, bands, 8, 8, generator=seeded(40)) * 10000  # uint16-like reflectances
    out = band_jitter(x, brightness=0.4, contrast=0.3, p=0.5, generator=seeded(41))
    assert out.shape == x.shape
    a, residual = affine_residual(out.transpose(0, 1).flatten(0, 1), x.transpose(0, 1).flatten(0, 1))
    assert residual.max() < 1e-2  # each band of each sample: out = a * x + b, no clipping
    assert ((a >= 0.7 - 1e-5) & (a <= 1.3 + 1e-5)).all()  # contrast gain
    if bands > 1:  # one gain per band, not one per sample
        gains = a.view(bands, -1)  # C x B
        assert ((gains.amax(0) - gains.amin(0)) > 1e-3).any()
    shift = (out.mean((2, 3)) - x.mean((2, 3))).double()  # brightness: the band mean moves by it
    assert shift.abs().max() <= 0.4 + 1e-2
    # per-band independence: changing band j changes no other band of the output
    for j in range(bands):
        x2 = x.clone()
        x2[:, j] = x2[:, j] * 3 + 7
        out2 = band_jitter(x2, brightness=0.4, contrast=0.3, p=0.5, generator=seeded(41))
        others = [c for c in range(bands) if c != j]
        assert torch.equal(out2[:, others], out[:, others])
        assert not torch.equal(out2[:, j], out[:, j])


@pytest.mark.parametrize("bands", BANDS)
def test_band_mean_grey_sets_every_band_to_the_band_mean(bands):
    x = torch.randn(64, bands, 6, 6, generator=seeded(42)) * 3000
    out = band_mean_grey(x, p=0.5, generator=seeded(43))
    grey = x.mean(1, keepdim=True).expand_as(x)
    is_grey = (out == grey).flatten(1).all(1)
    is_same = (out == x).flatten(1).all(1)
    assert (is_grey | is_same).all()
    if bands > 1:
        assert is_grey.any() and is_same.any()


@pytest.mark.parametrize("bands", BANDS)
def test_geometric_ops_keep_values_and_shapes(bands):
    g = seeded(44)
    reflectance = torch.rand(8, bands, 16, 16, generator=g) * 10000  # uint16-like
    standardised = torch.randn(8, bands, 16, 16, generator=g) * 3  # negative values
    for x in (reflectance, standardised):
        (rot,) = d4(x, generator=seeded(45))
        # D4 is an exact permutation of the pixels of each band
        assert torch.equal(rot.flatten(2).sort(-1).values, x.flatten(2).sort(-1).values)
        identity = torch.tensor([[1.0, 0, 0], [0, 1, 0]]).expand(8, 2, 3)
        # the identity warp returns the values (up to float32 grid rounding: 1e-6 of a pixel step)
        torch.testing.assert_close(warp(x, identity, (16, 16)), x, rtol=0, atol=1e-5 * float(x.abs().amax()))
        view, _ = ContrastiveView(size=12, jitter=0, grey_p=0, blur_p=0)(x, generator=seeded(46))
        assert view.shape == (8, bands, 12, 12)
        lo, hi = x.amin((1, 2, 3)), x.amax((1, 2, 3))  # a bilinear crop stays in each sample's range
        assert (view.amin((1, 2, 3)) >= lo - 1e-3).all() and (view.amax((1, 2, 3)) <= hi + 1e-3).all()
        assert view.amax() - view.amin() > 0.5 * (x.amax() - x.amin())  # not squeezed into a unit range
        for preset in SEGMENTATION_PRESETS:
            out, _ = SegmentationAugment(preset, jitter=0)(x, x[:, 0].long(), generator=seeded(47))
            assert torch.equal(out.flatten(2).sort(-1).values, x.flatten(2).sort(-1).values)


# ---------------------------------------------------------------- crop geometry


@pytest.mark.parametrize("height,width", [(32, 32), (24, 48)])
def test_crop_params_area_aspect_and_bounds(height, width):
    scale, ratio = (0.2, 1.0), (3 / 4, 4 / 3)
    theta = crop_params(N_DRAWS, height, width, scale, ratio, generator=seeded(50))
    w, h = theta[:, 0, 0].abs(), theta[:, 1, 1]  # fractions of the image sides
    cx, cy = theta[:, 0, 2], theta[:, 1, 2]
    assert (theta[:, 0, 1] == 0).all() and (theta[:, 1, 0] == 0).all()
    assert ((cx.abs() + w) <= 1 + 1e-6).all() and ((cy.abs() + h) <= 1 + 1e-6).all()  # inside the image
    area = w * h
    assert (area <= scale[1] + 1e-6).all()  # clipping only shrinks a crop
    free = (w < 1) & (h < 1)  # crops the clipping left alone
    assert free.float().mean() > 0.3
    assert (area[free] >= scale[0] - 1e-6).all()
    assert area[free].min() < scale[0] + 0.01  # the small end of the range is drawn
    aspect = (w * width) / (h * height)  # in pixels
    assert (aspect[free] >= ratio[0] - 1e-5).all() and (aspect[free] <= ratio[1] + 1e-5).all()


def test_crop_params_fixed_area_and_aspect_on_a_non_square_image():
    theta = crop_params(16, 20, 40, scale=(0.3, 0.3), ratio=(2.0, 2.0), flip=False, generator=seeded(51))
    w, h = theta[:, 0, 0], theta[:, 1, 1]
    torch.testing.assert_close(w * h, torch.full((16,), 0.3))
    torch.testing.assert_close((w * 40) / (h * 20), torch.full((16,), 2.0))  # pixel aspect, as torchvision


# ---------------------------------------------------------------- SegmentationAugment presets


@pytest.mark.parametrize("bands", BANDS)
@pytest.mark.parametrize("preset", SEGMENTATION_PRESETS)
def test_segmentation_preset_keeps_image_and_mask_aligned(preset, bands):
    mask = block_mask(32, 16, 16, 4, seed=60)
    image = labelled_image(mask, bands, seed=61) * 100  # band 0: 100 x class id
    out, out_mask = SegmentationAugment(preset, jitter=0.2)(image, mask, generator=seeded(62))
    assert out.shape == image.shape and out_mask.shape == mask.shape
    # jitter maps band 0 by a per-sample increasing affine map; geometry must not break it
    a, residual = affine_residual(out[:, 0], out_mask)
    assert residual.max() < 1e-2 and (a > 0).all()
    if preset != "d4_jitter":
        assert torch.equal(out[:, 0], 100 * out_mask.float())


def test_preset_none_returns_the_inputs():
    image, mask = template(4), template(4)[:, 0].long()
    out, out_mask = SegmentationAugment("none")(image, mask, generator=seeded(63))
    assert torch.equal(out, image) and torch.equal(out_mask, mask)


def test_preset_hflip_flips_half_the_samples_horizontally_only():
    image = template(N_DRAWS, 2)
    out, out_mask = SegmentationAugment("hflip")(image, image[:, 0].long(), generator=seeded(64))
    flipped = which(out, [image, image.flip(-1)])  # nothing else: never a vertical flip
    assert torch.equal(flipped, which(out_mask, [image[:, 0].long(), image[:, 0].long().flip(-1)]))
    assert_binomial(int(flipped.sum()), N_DRAWS, 0.5)


def test_preset_flips_flips_each_axis_independently_with_p_half():
    image = template(N_DRAWS, 2)[..., :3]  # 4 x 3: flips work on non-square images too
    out, out_mask = SegmentationAugment("flips")(image, image[:, 0].long(), generator=seeded(65))
    kinds = which(out, [image, image.flip(-1), image.flip(-2), image.flip(-1, -2)])
    m = image[:, 0].long()
    assert torch.equal(kinds, which(out_mask, [m, m.flip(-1), m.flip(-2), m.flip(-1, -2)]))
    horizontal, vertical = (kinds == 1) | (kinds == 3), (kinds == 2) | (kinds == 3)
    assert_binomial(int(horizontal.sum()), N_DRAWS, 0.5)
    assert_binomial(int(vertical.sum()), N_DRAWS, 0.5)
    assert_binomial(int((horizontal & vertical).sum()), N_DRAWS, 0.25)


@pytest.mark.parametrize("preset", ["d4", "d4_jitter"])
def test_preset_d4_draws_every_element_and_jitters_half(preset):
    image = template(N_DRAWS, 2)
    mask = image[:, 0].long()
    out, out_mask = SegmentationAugment(preset, jitter=0.2)(image, mask, generator=seeded(66))
    candidates = d4_candidates(mask)
    kinds = which(out_mask, [c for *_, c in candidates])
    flipped = torch.tensor([candidates[i][0] for i in kinds])
    turns = torch.tensor([candidates[i][1] for i in kinds])
    assert_binomial(int(flipped.sum()), N_DRAWS, 0.5)
    for k in range(4):
        assert_binomial(int((turns == k).sum()), N_DRAWS, 0.25)
    moved = torch.stack([c for *_, c in d4_candidates(image)])[kinds, torch.arange(N_DRAWS)]  # B x C x 4 x 4
    jittered = (out != moved).flatten(1).any(1)
    if preset == "d4":
        assert not jittered.any()
    else:
        assert_binomial(int(jittered.sum()), N_DRAWS, 0.5)


def test_default_preset_is_d4_then_band_jitter_amplitude_01_p_half():
    aug = SegmentationAugment()
    assert aug.preset == "d4_jitter" and aug.jitter == 0.1
    mask = block_mask(16, 8, 8, 2, seed=67)
    image = labelled_image(mask, 4, seed=68)
    out, out_mask = aug(image, mask, generator=seeded(69))
    g = seeded(69)
    ref, ref_mask = d4(image, mask, generator=g)
    ref = band_jitter(ref, 0.1, 0.1, p=0.5, generator=g)
    assert torch.equal(out, ref) and torch.equal(out_mask, ref_mask)


def test_unknown_preset_and_negative_jitter_are_rejected():
    with pytest.raises(ValueError, match="'rot90'.*none, hflip, flips, d4, d4_jitter"):
        SegmentationAugment("rot90")
    with pytest.raises(ValueError, match="jitter=-0.1"):
        SegmentationAugment(jitter=-0.1)
