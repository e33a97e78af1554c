"""CE + Dice (Liu et al., arXiv 2402.16164) against loop references."""

import torch
import torch.nn.functional as F

from noisyseg.losses.segmentation import CEDiceLoss, inverse_frequency_weights


def dice_loop(logits, target, ignore):
    """Soft Dice per class over the batch (Milletari et al. 2016), smp's reduction: classes without
    true pixels contribute 0, mean over all classes."""
    probs = logits.softmax(1)
    k = logits.shape[1]
    losses = []
    for c in range(k):
        inter = card = 0.0
        n_true = 0
        for b in range(target.shape[0]):
            for i in range(target.shape[1]):
                for j in range(target.shape[2]):
                    t = target[b, i, j].item()
                    if t == ignore:
                        continue
                    p = probs[b, c, i, j].item()
                    g = 1.0 if t == c else 0.0
                    inter += p * g
                    card += p + g
                    n_true += g
        score = (2 * inter) / max(card, 1e-7)
        losses.append((1 - score) if n_true > 0 else 0.0)
    return sum(losses) / k


def ce_loop(logits, target, ignore, weight=None):
    num = den = 0.0
    for b in range(target.shape[0]):
        for i in range(target.shape[1]):
            for j in range(target.shape[2]):
                t = target[b, i, j].item()
                if t == ignore:
                    continue
                w = 1.0 if weight is None else weight[t].item()
                num += -w * torch.log_softmax(logits[b, :, i, j], 0)[t].item()
                den += w
    return num / den


def test_ce_dice_matches_loop():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, 6, generator=g)
    target = torch.randint(0, 2, (2, 5, 6), generator=g)  # class 2 absent
    target[0, 0, :3] = 255
    loss = CEDiceLoss(1.0, 1.0, ignore_index=255)(logits, target)
    ref = ce_loop(logits, target, 255) + dice_loop(logits, target, 255)
    assert abs(loss.item() - ref) < 1e-4
    assert abs(CEDiceLoss(0.0, 1.0)(logits, target).item() - dice_loop(logits, target, 255)) < 1e-4


def test_weighted_ce_matches_loop_and_inverse_frequency():
    w = inverse_frequency_weights([30, 10, 0])
    assert torch.allclose(w, torch.tensor([40 / 90, 40 / 30, 0.0]))
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 3, 4, 4, generator=g)
    target = torch.randint(0, 3, (1, 4, 4), generator=g)
    weights = torch.tensor([0.5, 2.0, 1.0])
    loss = CEDiceLoss(1.0, 0.0, class_weights=weights.tolist())(logits, target)
    assert abs(loss.item() - ce_loop(logits, target, 255, weights)) < 1e-5


def test_bf16_logits_computed_in_fp32():
    logits = torch.randn(2, 3, 8, 8)
    target = torch.randint(0, 3, (2, 8, 8))
    a = CEDiceLoss()(logits, target)
    b = CEDiceLoss()(logits.bfloat16(), target)
    assert b.dtype == torch.float32 and abs(a.item() - b.item()) < 0.05


def test_bad_weights_named():
    import pytest

    with pytest.raises(ValueError, match="ce_weight=-1"):
        CEDiceLoss(-1.0, 1.0)
