"""Dense losses against loops over the supervised pixel contrastive loss of Zhao et al. 2021.

For an anchor pixel i with positives P(i) (same label, i excluded) and negatives N(i) (other label)
(Zhao et al., ICCV 2021, Sec. 3, the Khosla et al. 2020 supervised contrastive form per pixel):

    L_i = -1/|P(i)| sum_{p in P(i)} log( exp(s_ip/T) / (exp(s_ip/T) + sum_{n in N(i)} exp(s_in/T)) )

averaged over the anchors of an image that have a positive, then over images that have one.
Within-image: the set of image b is both of its views. Cross-image: the set also holds the
view-2 pixels of image (b + 1) % B, which give positives (and negatives when asked) but are not
anchors.
"""

from __future__ import annotations

import math

import pytest
import torch

from noisyseg.losses import CrossImageLoss, WithinImageLoss, downsample_labels

TIGHT = {"rtol": 1e-6, "atol": 1e-6}  # fp32 implementation vs float64 loop

IGNORE = 255


def pixels(features: torch.Tensor, labels: torch.Tensor, b: int) -> tuple[list, list]:
    """Image b's pixels as (unit feature in float64, label) lists."""
    d = features.shape[1]
    f = features[b].double().reshape(d, -1).T
    return [x / x.norm() for x in f], [int(v) for v in labels[b].reshape(-1)]


def set_loss(feats: list, labs: list, n_anchor: int, neg_ok: list, t: float) -> float | None:
    """Mean anchor loss of one set, ``None`` when no anchor has a positive."""
    losses = []
    for i in range(n_anchor):
        if labs[i] == IGNORE:
            continue
        others = [j for j in range(len(feats)) if j != i and labs[j] != IGNORE]
        pos = [j for j in others if labs[j] == labs[i]]
        neg = [j for j in others if labs[j] != labs[i] and neg_ok[j]]
        if not pos:
            continue
        e = {j: math.exp(float(feats[i] @ feats[j]) / t) for j in others}
        neg_sum = sum(e[n] for n in neg)
        losses.append(sum(-math.log(e[p] / (e[p] + neg_sum)) for p in pos) / len(pos))
    return sum(losses) / len(losses) if losses else None


def within_loop(f1, f2, l1, l2, t: float) -> float:
    per_image = []
    for b in range(f1.shape[0]):
        a_f, a_l = pixels(f1, l1, b)
        v_f, v_l = pixels(f2, l2, b)
        value = set_loss(a_f + v_f, a_l + v_l, len(a_f) * 2, [True] * (2 * len(a_f)), t)
        if value is not None:
            per_image.append(value)
    return sum(per_image) / len(per_image)


def cross_loop(f1, f2, l1, l2, t: float, partner_negatives: bool) -> float:
    per_image = []
    n = f1.shape[0]
    for b in range(n):
        a_f, a_l = pixels(f1, l1, b)
        v_f, v_l = pixels(f2, l2, b)
        p_f, p_l = pixels(f2, l2, (b + 1) % n)
        neg_ok = [True] * (2 * len(a_f)) + [partner_negatives] * len(p_f)
        value = set_loss(a_f + v_f + p_f, a_l + v_l + p_l, 2 * len(a_f), neg_ok, t)
        if value is not None:
            per_image.append(value)
    return sum(per_image) / len(per_image)


def make_batch(seed: int, b: int = 3, d: int = 4, s: int = 3, classes: int = 3):
    g = torch.Generator().manual_seed(seed)
    f1, f2 = torch.randn(b, d, s, s, generator=g), torch.randn(b, d, s, s, generator=g)
    l1, l2 = (torch.randint(0, classes, (b, s, s), generator=g) for _ in range(2))
    l1[0, 0, 0] = IGNORE  # ignored pixels in both views
    l2[1, 2, :] = IGNORE
    l1[2] = IGNORE  # image 2 view 1 fully ignored
    l2[2] = 0
    l2[2, 0, 0] = 1  # lone pixel of class 1 in image 2: an anchor without positives
    return f1, f2, l1, l2


def test_within_image_matches_loop() -> None:
    f1, f2, l1, l2 = make_batch(0)
    loss = WithinImageLoss(temperature=0.1)(f1, f2, l1, l2)
    torch.testing.assert_close(loss, torch.tensor(within_loop(f1, f2, l1, l2, 0.1)), **TIGHT)


@pytest.mark.parametrize("partner_negatives", [False, True])
def test_cross_image_matches_loop(partner_negatives: bool) -> None:
    f1, f2, l1, l2 = make_batch(1)
    loss = CrossImageLoss(temperature=0.1, negatives_from_partner=partner_negatives)(f1, f2, l1, l2)
    expected = cross_loop(f1, f2, l1, l2, 0.1, partner_negatives)
    torch.testing.assert_close(loss, torch.tensor(expected), **TIGHT)


def test_binarize_merges_foreground_and_keeps_ignore() -> None:
    f1, f2, l1, l2 = make_batch(2, classes=4)
    binary = [torch.where(x == IGNORE, x, (x > 0).long()) for x in (l1, l2)]
    for cls in (WithinImageLoss, CrossImageLoss):
        torch.testing.assert_close(
            cls(binarize=True)(f1, f2, l1, l2), cls()(f1, f2, *binary), rtol=0, atol=0
        )


def test_ignored_pixels_do_not_change_the_loss_and_all_ignored_gives_zero() -> None:
    f1, f2, l1, l2 = make_batch(3)
    loss_fn = WithinImageLoss()
    base = loss_fn(f1, f2, l1, l2)
    g1 = f1.clone()
    g1[0, :, 0, 0] = 100.0  # the ignored pixel's feature is irrelevant
    torch.testing.assert_close(loss_fn(g1, f2, l1, l2), base)
    f = f1.clone().requires_grad_(True)
    zero = loss_fn(f, f2, torch.full_like(l1, IGNORE), torch.full_like(l2, IGNORE))
    zero.backward()
    assert zero.item() == 0.0 and torch.equal(f.grad, torch.zeros_like(f))


def test_single_class_image_has_finite_gradients() -> None:
    f1 = torch.randn(2, 4, 3, 3, requires_grad=True)
    f2 = torch.randn(2, 4, 3, 3)
    labels = torch.zeros(2, 3, 3, dtype=torch.long)  # no negatives anywhere
    loss = WithinImageLoss()(f1, f2, labels, labels)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(f1.grad).all()


def test_bf16_autocast_inputs_computed_in_fp32() -> None:
    f1, f2, l1, l2 = make_batch(4)
    f1, f2 = f1.bfloat16(), f2.bfloat16()
    for loss_fn in (WithinImageLoss(), CrossImageLoss()):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = loss_fn(f1, f2, l1, l2)
        assert loss.dtype == torch.float32
        torch.testing.assert_close(loss, loss_fn(f1.float(), f2.float(), l1, l2), **TIGHT)


def test_downsample_labels_is_nearest() -> None:
    mask = torch.arange(16).view(1, 4, 4)
    assert torch.equal(downsample_labels(mask, 2), torch.tensor([[[0, 2], [8, 10]]]))
    big = torch.randint(0, 256, (2, 64, 64))
    assert torch.equal(downsample_labels(big, 16), big[:, ::4, ::4])
    assert downsample_labels(big, (8, 4)).shape == (2, 8, 4)


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="temperature=0"):
        WithinImageLoss(temperature=0)
    with pytest.raises(ValueError, match="temperature=-1"):
        CrossImageLoss(temperature=-1)
    f = torch.randn(2, 4, 3, 3)
    with pytest.raises(ValueError, match="downsample_labels"):
        WithinImageLoss()(f, f, torch.zeros(2, 6, 6).long(), torch.zeros(2, 3, 3).long())
    with pytest.raises(ValueError, match="at least 2 images"):
        CrossImageLoss()(f[:1], f[:1], torch.zeros(1, 3, 3).long(), torch.zeros(1, 3, 3).long())
