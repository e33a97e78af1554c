"""Dense losses with ``reference=True`` against the google-research code, written as loops.

:func:`reference_set_loss` follows ``supervised_pixel_contrastive_loss/contrastive_loss.py``
``compute_contrastive_loss`` one pixel pair at a time in float64 and in exp space, as the reference
does: positive mask ``labels == labels`` (the anchor among its own positives), pairs with an
ignored pixel invalid, ``divide_no_nan``, ``-log(normalized * validity + ignore)``, weights
``pos / max(1e-6, sum pos)`` over positives and ``valid / max(1e-6, sum valid)`` over anchors, then
the mean over every image. Within-image: the sum of the two views' losses. Cross-image: view 1 of
image b and view 2 of its partner (b + 1) % B in one set, negatives from a pixel's own part
(``same_image_mask``).
"""

from __future__ import annotations

import math

import pytest
import torch

from noisyseg.losses import CrossImageLoss, WithinImageLoss

IGNORE = 255
CLOSE = {"rtol": 1e-5, "atol": 1e-6}  # fp32 log-space implementation vs float64 exp-space loop


def reference_set_loss(feats: list, labs: list, parts: list, t: float) -> float:
    """One image's loss as ``compute_contrastive_loss`` computes it."""
    m = len(labs)
    unit = [x / x.norm() for x in feats]
    valid = [[labs[i] != IGNORE and labs[j] != IGNORE for j in range(m)] for i in range(m)]
    pos = [[valid[i][j] and labs[i] == labs[j] for j in range(m)] for i in range(m)]
    neg = [[valid[i][j] and labs[i] != labs[j] and parts[i] == parts[j] for j in range(m)] for i in range(m)]
    exp = [[math.exp(float(unit[i] @ unit[j]) / t) if valid[i][j] else 0.0 for j in range(m)] for i in range(m)]
    anchor_nll, anchor_valid = [], []
    for i in range(m):
        neg_sum = sum(exp[i][j] for j in range(m) if neg[i][j])
        n_pos = sum(pos[i])
        nll = 0.0
        for j in range(m):
            den = exp[i][j] + neg_sum
            normalized = exp[i][j] / den if den != 0 else 0.0  # divide_no_nan
            term = -math.log(normalized * valid[i][j] + (not valid[i][j]))
            nll += term * pos[i][j] / max(1e-6, n_pos)
        anchor_nll.append(nll)
        anchor_valid.append(n_pos != 0)
    return sum(n * v for n, v in zip(anchor_nll, anchor_valid)) / max(1e-6, sum(anchor_valid))


def image_pixels(features: torch.Tensor, labels: torch.Tensor, b: int) -> tuple[list, list]:
    d = features.shape[1]
    return list(features[b].double().reshape(d, -1).T), [int(v) for v in labels[b].reshape(-1)]


def within_loop(f1, f2, l1, l2, t: float) -> float:
    total = 0.0
    for f, lab in ((f1, l1), (f2, l2)):  # each view on its own, summed
        losses = [reference_set_loss(*image_pixels(f, lab, b), [0] * lab[b].numel(), t) for b in range(f.shape[0])]
        total += sum(losses) / len(losses)  # every image counts
    return total


def cross_loop(f1, f2, l1, l2, t: float) -> float:
    n, p = f1.shape[0], l1[0].numel()
    losses = []
    for b in range(n):
        own_f, own_l = image_pixels(f1, l1, b)
        partner_f, partner_l = image_pixels(f2, l2, (b + 1) % n)
        losses.append(reference_set_loss(own_f + partner_f, own_l + partner_l, [0] * p + [1] * p, t))
    return sum(losses) / n


def batch(seed: int, b: int = 3, s: int = 3) -> tuple[torch.Tensor, ...]:
    """Features and labels with ignored pixels, an all-ignored image and a one-class image."""
    g = torch.Generator().manual_seed(seed)
    f1, f2 = torch.randn(b, 4, s, s, generator=g), torch.randn(b, 4, s, s, generator=g)
    l1, l2 = torch.randint(0, 3, (b, s, s), generator=g), torch.randint(0, 3, (b, s, s), generator=g)
    l1[0, 0, :2] = IGNORE
    l2[1, 1, 1] = IGNORE
    l1[1] = IGNORE  # image 1, view 1: no anchor at all (a 0 in the reference's mean)
    l2[2] = 1  # image 2, view 2: one class, so no negatives
    return f1, f2, l1, l2


@pytest.mark.parametrize("t", [0.07, 0.5])
def test_within_image_reference_equals_the_reference_loop(t: float) -> None:
    f1, f2, l1, l2 = batch(0)
    loss = WithinImageLoss(t, ignore_index=IGNORE, reference=True)(f1, f2, l1, l2)
    torch.testing.assert_close(loss.double(), torch.tensor(within_loop(f1, f2, l1, l2, t), dtype=torch.float64), **CLOSE)
    assert not torch.allclose(loss, WithinImageLoss(t, ignore_index=IGNORE)(f1, f2, l1, l2), **CLOSE)


@pytest.mark.parametrize("t", [0.07, 0.5])
def test_cross_image_reference_equals_the_reference_loop(t: float) -> None:
    f1, f2, l1, l2 = batch(1)
    loss = CrossImageLoss(t, ignore_index=IGNORE, reference=True)(f1, f2, l1, l2)
    torch.testing.assert_close(loss.double(), torch.tensor(cross_loop(f1, f2, l1, l2, t), dtype=torch.float64), **CLOSE)
    assert not torch.allclose(loss, CrossImageLoss(t, ignore_index=IGNORE)(f1, f2, l1, l2), **CLOSE)


@pytest.mark.parametrize("loss_cls", [WithinImageLoss, CrossImageLoss])
def test_reference_gradients_are_finite_without_negatives_or_anchors(loss_cls) -> None:
    f1, f2, l1, l2 = batch(2)
    l1[:] = 1  # no negatives anywhere in view 1
    f1.requires_grad_(True)
    f2.requires_grad_(True)
    loss_cls(0.1, ignore_index=IGNORE, reference=True)(f1, f2, l1, l2).backward()
    assert torch.isfinite(f1.grad).all() and torch.isfinite(f2.grad).all()
    assert f2.grad.abs().sum() > 0


def test_reference_binarize_applies_before_the_masks() -> None:
    f1, f2, l1, l2 = batch(3)
    binary = WithinImageLoss(0.5, ignore_index=IGNORE, binarize=True, reference=True)(f1, f2, l1, l2)
    b1, b2 = (torch.where(x == IGNORE, x, (x > 0).long()) for x in (l1, l2))
    torch.testing.assert_close(binary.double(), torch.tensor(within_loop(f1, f2, b1, b2, 0.5), dtype=torch.float64), **CLOSE)


def test_reference_refuses_negatives_from_partner() -> None:
    with pytest.raises(ValueError, match="negatives_from_partner=True contradicts reference=True"):
        CrossImageLoss(reference=True, negatives_from_partner=True)
