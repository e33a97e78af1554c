"""FALSE (Zhang et al., IEEE GRSL 2022; GeoX-Lab/FALSE ``vissl/losses/false_loss.py``).

FNCC for anchor i with positive similarity s+, negatives s_j and detected false negatives FN(i):

    L_i = -log( (exp(s+/T) + a * sum_{j in FN(i)} exp(s_j/T)) / (exp(s+/T) + sum_j exp(s_j/T)) )

(the reference adds a*e_j to the positive sum and (1-a)*e_j to the negative sum, so the
denominator keeps each e_j whole). FNSD is checked on hand-built similarities and on random ones
against a loop.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from noisyseg.losses import InfoNCELoss, detect_false_negatives

TIGHT = {"rtol": 1e-6, "atol": 1e-6}  # fp32 implementation vs float64 loop


def detect_loop(pos, neg, mode: str, threshold: float, positive_min: float) -> set:
    """FNSD one pair at a time: the flagged (anchor, negative) pairs."""
    n, k = neg.shape
    if mode == "reference":
        best, pair = math.inf, None
        for i in range(n):
            for j in range(k):
                gap = abs(float(neg[i, j]) - float(pos[i]))
                if gap < best:  # first minimum wins
                    best, pair = gap, (i, j)
        return {pair} if float(pos[pair[0]]) >= positive_min else set()
    flagged = set()
    for i in range(n):
        j = max(range(k), key=lambda c: float(neg[i, c]))
        if float(neg[i, j]) > threshold:
            flagged.add((i, j))
    return flagged


def fncc_loop(q, k, queue, t, alpha, flagged: set) -> float:
    """FNCC loss one anchor at a time in float64."""
    qn, kn, qu = (F.normalize(x.double(), dim=1) for x in (q, k, queue))
    total = 0.0
    for i in range(q.shape[0]):
        pos = math.exp(float(qn[i] @ kn[i]) / t)
        negs = [math.exp(float(qn[i] @ qu[j]) / t) for j in range(qu.shape[0])]
        fn = sum(negs[j] for j in range(len(negs)) if (i, j) in flagged)
        total += -math.log((pos + alpha * fn) / (pos + sum(negs)))
    return total / q.shape[0]


def mask_to_pairs(mask: torch.Tensor) -> set:
    return {tuple(int(v) for v in ij) for ij in mask.nonzero()}


POS = torch.tensor([0.95, 0.5, 0.92])
NEG = torch.tensor([[0.10, 0.90, 0.30], [0.49, 0.00, 0.20], [0.50, 0.60, 0.20]])


def test_reference_mode_selects_closest_pair_then_checks_positive() -> None:
    # closest gap overall is anchor 1 / negative 0 (0.01), but anchor 1's positive is 0.5 < 0.9
    assert mask_to_pairs(detect_false_negatives(POS, NEG, "reference", positive_min=0.9)) == set()
    flagged = detect_false_negatives(POS, NEG, "reference", positive_min=0.4)
    assert mask_to_pairs(flagged) == {(1, 0)}
    # without the row-1 near tie, the pair (0, 1) (gap 0.05, positive 0.95) is accepted
    neg = NEG.clone()
    neg[1, 0] = -0.5
    flagged = detect_false_negatives(POS, neg, "reference", positive_min=0.9)
    assert mask_to_pairs(flagged) == {(0, 1)}


def test_per_anchor_mode_flags_each_anchors_most_similar_negative_above_threshold() -> None:
    assert mask_to_pairs(detect_false_negatives(POS, NEG, "per_anchor", threshold=0.85)) == {(0, 1)}
    assert mask_to_pairs(detect_false_negatives(POS, NEG, "per_anchor", threshold=0.45)) == {
        (0, 1), (1, 0), (2, 1)
    }
    assert not detect_false_negatives(POS, NEG, "none").any()


@pytest.mark.parametrize("mode", ["reference", "per_anchor"])
def test_detection_matches_loop_on_random_similarities(mode: str) -> None:
    g = torch.Generator().manual_seed(4)
    pos, neg = torch.rand(7, generator=g) * 2 - 1, torch.rand(7, 11, generator=g) * 2 - 1
    mask = detect_false_negatives(pos, neg, mode, threshold=0.3, positive_min=-1.0)
    assert mask_to_pairs(mask) == detect_loop(pos, neg, mode, 0.3, -1.0)


@pytest.mark.parametrize(
    ("mode", "alpha"), [("reference", 1.0), ("per_anchor", 0.5), ("per_anchor", 1.0)]
)
def test_fncc_matches_loop(mode: str, alpha: float) -> None:
    g = torch.Generator().manual_seed(5)
    q, k, queue = (torch.randn(n, 8, generator=g) for n in (6, 6, 16))
    kwargs = {"threshold": 0.2, "positive_min": -1.0}
    loss_fn = InfoNCELoss(temperature=0.3, false_negative=mode, alpha=alpha, **kwargs)
    loss = loss_fn(q, k, queue)
    qn, kn, qu = (F.normalize(x, dim=1) for x in (q, k, queue))
    flagged = detect_loop((qn * kn).sum(1), qn @ qu.T, mode, **kwargs)
    assert flagged  # the test is only meaningful when something was detected
    assert loss_fn.last_false_negatives == len(flagged)  # the count MoCoTask logs
    expected = fncc_loop(q, k, queue, 0.3, alpha, flagged)
    torch.testing.assert_close(loss, torch.tensor(expected), **TIGHT)
    plain = InfoNCELoss(temperature=0.3)(q, k, queue)
    assert loss < plain  # moving weight into the numerator lowers the loss


@pytest.mark.parametrize("mode", ["reference", "per_anchor"])
@pytest.mark.parametrize("use_queue", [True, False])
def test_alpha_zero_equals_plain_infonce_exactly(mode: str, use_queue: bool) -> None:
    g = torch.Generator().manual_seed(6)
    q, k, queue = (torch.randn(n, 16, generator=g) for n in (8, 8, 32))
    fnc = InfoNCELoss(0.2, false_negative=mode, alpha=0.0, threshold=-1.0, positive_min=-1.0)
    plain = InfoNCELoss(0.2)
    args = (q, k, queue) if use_queue else (q, k)
    assert torch.equal(fnc(*args), plain(*args))


def test_bf16_autocast_false_negative_loss() -> None:
    g = torch.Generator().manual_seed(7)
    q, k, queue = (torch.randn(n, 8, generator=g).bfloat16() for n in (4, 4, 12))
    loss_fn = InfoNCELoss(0.2, false_negative="per_anchor", alpha=0.5, threshold=0.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = loss_fn(q, k, queue)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, loss_fn(q.float(), k.float(), queue.float()), **TIGHT)


def test_detection_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="'bogus'"):
        detect_false_negatives(POS, NEG, "bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive_min=1.5"):
        detect_false_negatives(POS, NEG, "reference", positive_min=1.5)
    with pytest.raises(ValueError, match="pos_sim"):
        detect_false_negatives(POS[:2], NEG, "reference")
