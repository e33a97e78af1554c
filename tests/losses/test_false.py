"""FALSE (Zhang et al., IEEE GRSL 2022; GeoX-Lab/FALSE ``vissl/losses/false_loss.py``).

FNCC for anchor i with positive similarity s+, negatives s_j and detected false negatives FN(i):

    L_i = -log( (exp(s+/T) + a * sum_{j in FN(i)} exp(s_j/T)) / (exp(s+/T) + sum_j exp(s_j/T)) )

(the reference adds a*e_j to the positive sum and (1-a)*e_j to the negative sum, so the
denominator keeps each e_j whole). ``reference`` mode is checked against :func:`authors_loop`, a
cell-by-cell rewrite of the authors' SimCLR loss (gap matrix filled with 3, upper triangle, every
cell equal to the minimum, select-then-check, the two guarded in-place updates); the other modes
against small loops of their own.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from noisyseg.losses import InfoNCELoss, detect_false_negatives
from noisyseg.losses.ntxent import NTXentLoss

TIGHT = {"rtol": 1e-6, "atol": 1e-6}  # fp32 implementation vs float64 loop
AUTHORS = {"rtol": 1e-5, "atol": 0.0}  # fp32 vs the authors' fp32 arithmetic, element by element


def authors_loop(z1, z2, t: float, alpha: float, positive_threshold: float) -> tuple[float, set]:
    """The authors' FALSE loss on one GPU, one cell at a time, in fp32.

    Rows/columns are the views ``[z1; z2]``. Returns the loss and the (row, column) cells whose
    negative term was calibrated.
    """
    emb = F.normalize(torch.cat([z1, z2]).float(), dim=1)  # [R, D]
    r = emb.shape[0]
    half = r // 2
    sim = torch.exp(emb @ emb.T / t)  # [R, R] exp(cos / T), self included
    partner = [i + half if i < half else i - half for i in range(r)]
    pos = [[0.0] * r for _ in range(r)]  # all_pos
    neg = [[0.0] * r for _ in range(r)]  # all_neg
    for i in range(r):
        for j in range(r):
            if j == partner[i]:
                pos[i][j] = float(sim[i, j])
            elif j != i:
                neg[i][j] = float(sim[i, j])
    pos_sim = [sim[i, partner[i]] for i in range(r)]  # fp32 scalars
    diff = [[3.0] * r for _ in range(r)]  # the fill value
    for i in range(r):
        for j in range(i + 1, r):  # upper triangle, diagonal left at 3
            if j != partner[i]:  # the positive left at 3
                diff[i][j] = float((sim[i, j] - pos_sim[i]).abs())
    least = min(min(row) for row in diff)
    calibrated = set()
    for i in range(r):
        for j in range(r):
            if diff[i][j] != least:
                continue
            if float(torch.log(pos_sim[i]) * t) < positive_threshold:
                continue
            if pos[i][j] == 0:
                pos[i][j] = alpha * neg[i][j]
            if neg[i][j] != 0:
                neg[i][j] = (1 - alpha) * neg[i][j]
                calibrated.add((i, j))
    loss = -sum(math.log(sum(pos[i]) / (sum(pos[i]) + sum(neg[i]))) for i in range(r)) / r
    return loss, calibrated


def confident_views(n: int, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two views of n orthogonal images: positive cosines near 1, negatives near 0."""
    g = torch.Generator().manual_seed(seed)
    base = torch.linalg.qr(torch.randn(32, n, generator=g)).Q.T  # [n, 32] orthonormal rows
    return (base + noise * torch.randn(n, 32, generator=g) for _ in range(2))


def lower_triangle_negatives(n: int) -> set:
    """Cells (i, j), j < i, that are neither the anchor nor its partner: the authors' fill cells."""
    return {(i, j) for i in range(2 * n) for j in range(i) if j != i - n}


def test_reference_flags_the_whole_lower_triangle_when_every_gap_exceeds_the_fill_value() -> None:
    n, t = 6, 0.5
    z1, z2 = confident_views(n, noise=0.03, seed=1)
    loss_fn = NTXentLoss(t, "reference", alpha=0.5, positive_min=0.9)
    loss = loss_fn(z1, z2)
    expected, calibrated = authors_loop(z1, z2, t, 0.5, 0.9)
    assert calibrated == lower_triangle_negatives(n) and len(calibrated) == 60  # not one pair
    assert loss_fn.last_false_negatives == 60
    torch.testing.assert_close(loss, torch.tensor(expected), **AUTHORS)
    assert loss < NTXentLoss(t)(z1, z2) - 0.1  # a large change, not a single pair's
    # the improved variant calibrates exactly one pair on the same inputs
    closest = NTXentLoss(t, "closest", alpha=0.5, positive_min=0.9)
    closest(z1, z2)
    assert closest.last_false_negatives == 1


@pytest.mark.parametrize("alpha", [0.5, 1.0])
@pytest.mark.parametrize(
    ("views", "positive_threshold", "n_calibrated"),
    [
        ("random", -1.0, 1),  # a real gap below 3: the single closest pair, accepted
        ("random", 0.9, 0),  # ... whose anchor's positive is below 0.9: nothing
        ("confident", 0.9, 60),  # every gap above 3: the fill cells
        ("confident", 0.99, 0),  # ... but no positive reaches 0.99
    ],
)
def test_reference_ntxent_equals_the_authors_loss(
    views: str, positive_threshold: float, n_calibrated: int, alpha: float
) -> None:
    t = 0.5
    if views == "random":
        g = torch.Generator().manual_seed(2)
        z1, z2 = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    else:
        z1, z2 = confident_views(6, noise=0.03, seed=1)
    loss_fn = NTXentLoss(t, "reference", alpha=alpha, positive_min=positive_threshold)
    loss = loss_fn(z1, z2)
    expected, calibrated = authors_loop(z1, z2, t, alpha, positive_threshold)
    assert len(calibrated) == n_calibrated == loss_fn.last_false_negatives
    torch.testing.assert_close(loss, torch.tensor(expected), **AUTHORS)
    if n_calibrated:
        assert loss < NTXentLoss(t)(z1, z2)
    else:
        torch.testing.assert_close(loss, NTXentLoss(t)(z1, z2), **TIGHT)


def test_reference_measures_gaps_in_exp_space_and_closest_in_cosines() -> None:
    # anchor 0: cosine gap 0.05, exp gap e^1.9 - e^1.8 = 0.64; anchor 1: 0.10 and e^.4 - e^.2 = 0.27
    pos, neg = torch.tensor([0.95, 0.2]), torch.tensor([[0.90, -0.5], [0.1, -0.5]])
    ref = detect_false_negatives(pos, neg, "reference", positive_min=-1.0, temperature=0.5)
    assert mask_to_pairs(ref) == {(1, 0)}
    assert not detect_false_negatives(pos, neg, "reference", positive_min=0.9, temperature=0.5).any()
    assert mask_to_pairs(detect_false_negatives(pos, neg, "closest", positive_min=0.9)) == {(0, 0)}


def test_reference_fill_value_caps_the_gap() -> None:
    # T = 0.1: every exp gap exceeds 3. All cells searched (a MoCo queue): the authors' minimum is
    # one of their self/positive fill cells, where FNCC is a no-op, so nothing is flagged
    pos, neg = torch.tensor([0.9, 0.8]), torch.tensor([[0.5, 0.4], [0.3, 0.6]])
    assert not detect_false_negatives(pos, neg, "reference", positive_min=-1.0, temperature=0.1).any()
    # with unsearched cells those hold 3 and are all flagged (every tie, not the first)
    searched = torch.tensor([[True, False], [True, False]])
    flagged = detect_false_negatives(
        pos, neg, "reference", positive_min=-1.0, temperature=0.1, searched=searched
    )
    assert mask_to_pairs(flagged) == {(0, 1), (1, 1)}
    # a gap below 3 wins over the fill cells: T = 1, e^.9 - e^.5 = 0.81 < e^.8 - e^.3 = 0.88
    flagged = detect_false_negatives(
        pos, neg, "reference", positive_min=-1.0, temperature=1.0, searched=searched
    )
    assert mask_to_pairs(flagged) == {(0, 0)}
    # the fill value is 3 itself: a gap of e^1.8 - e^1.2 = 2.73 (T = 0.5) still beats it
    pos, neg = torch.tensor([0.9, 0.9]), torch.tensor([[0.6, 0.0], [0.5, 0.0]])
    flagged = detect_false_negatives(
        pos, neg, "reference", positive_min=-1.0, temperature=0.5, searched=searched
    )
    assert mask_to_pairs(flagged) == {(0, 0)}
    # ... and one of e^1.8 - e^1 = 3.33 does not
    flagged = detect_false_negatives(
        pos[1:], neg[1:], "reference", positive_min=-1.0, temperature=0.5, searched=searched[1:]
    )
    assert mask_to_pairs(flagged) == {(0, 1)}


def detect_loop(pos, neg, mode: str, threshold: float, positive_min: float, t: float) -> set:
    """FNSD one pair at a time (every negative searched): the flagged (anchor, negative) pairs."""
    n, k = neg.shape
    if mode == "reference":
        gaps = {(i, j): abs(math.exp(float(neg[i, j]) / t) - math.exp(float(pos[i]) / t))
                for i in range(n) for j in range(k)}
        least = min(min(gaps.values()), 3.0)
        return {c for c, gap in gaps.items() if gap == least and float(pos[c[0]]) >= positive_min}
    if mode == "closest":
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


def test_closest_mode_selects_closest_cosine_pair_then_checks_positive() -> None:
    # closest gap overall is anchor 1 / negative 0 (0.01), but anchor 1's positive is 0.5 < 0.9
    assert mask_to_pairs(detect_false_negatives(POS, NEG, "closest", positive_min=0.9)) == set()
    flagged = detect_false_negatives(POS, NEG, "closest", positive_min=0.4)
    assert mask_to_pairs(flagged) == {(1, 0)}
    # without the row-1 near tie, the pair (0, 1) (gap 0.05, positive 0.95) is accepted
    neg = NEG.clone()
    neg[1, 0] = -0.5
    flagged = detect_false_negatives(POS, neg, "closest", positive_min=0.9)
    assert mask_to_pairs(flagged) == {(0, 1)}


def test_per_anchor_mode_flags_each_anchors_most_similar_negative_above_threshold() -> None:
    assert mask_to_pairs(detect_false_negatives(POS, NEG, "per_anchor", threshold=0.85)) == {(0, 1)}
    assert mask_to_pairs(detect_false_negatives(POS, NEG, "per_anchor", threshold=0.45)) == {
        (0, 1), (1, 0), (2, 1)
    }
    assert not detect_false_negatives(POS, NEG, "none").any()


@pytest.mark.parametrize("mode", ["reference", "closest", "per_anchor"])
def test_detection_matches_loop_on_random_similarities(mode: str) -> None:
    g = torch.Generator().manual_seed(4)
    pos, neg = torch.rand(7, generator=g) * 2 - 1, torch.rand(7, 11, generator=g) * 2 - 1
    mask = detect_false_negatives(pos, neg, mode, threshold=0.3, positive_min=-1.0, temperature=0.5)
    assert mask_to_pairs(mask) == detect_loop(pos, neg, mode, 0.3, -1.0, 0.5)


@pytest.mark.parametrize(
    ("mode", "alpha"),
    [("reference", 1.0), ("reference", 0.5), ("closest", 1.0), ("per_anchor", 0.5), ("per_anchor", 1.0)],
)
def test_fncc_on_a_queue_matches_loop(mode: str, alpha: float) -> None:
    g = torch.Generator().manual_seed(5)
    q, k, queue = (torch.randn(n, 8, generator=g) for n in (6, 6, 16))
    kwargs = {"threshold": 0.2, "positive_min": -1.0}
    loss_fn = InfoNCELoss(temperature=0.3, false_negative=mode, alpha=alpha, **kwargs)
    loss = loss_fn(q, k, queue)
    qn, kn, qu = (F.normalize(x, dim=1) for x in (q, k, queue))
    flagged = detect_loop((qn * kn).sum(1), qn @ qu.T, mode, t=0.3, **kwargs)
    assert flagged  # the test is only meaningful when something was detected
    assert loss_fn.last_false_negatives == len(flagged)  # the count MoCoTask logs
    expected = fncc_loop(q, k, queue, 0.3, alpha, flagged)
    torch.testing.assert_close(loss, torch.tensor(expected), **TIGHT)
    plain = InfoNCELoss(temperature=0.3)(q, k, queue)
    assert loss < plain  # moving weight into the numerator lowers the loss


@pytest.mark.parametrize("mode", ["reference", "closest", "per_anchor"])
@pytest.mark.parametrize("use_queue", [True, False])
def test_alpha_zero_equals_plain_infonce_exactly(mode: str, use_queue: bool) -> None:
    g = torch.Generator().manual_seed(6)
    q, k, queue = (torch.randn(n, 16, generator=g) for n in (8, 8, 32))
    fnc = InfoNCELoss(0.2, false_negative=mode, alpha=0.0, threshold=-1.0, positive_min=-1.0)
    plain = InfoNCELoss(0.2)
    args = (q, k, queue) if use_queue else (q, k)
    assert torch.equal(fnc(*args), plain(*args))
    assert fnc.last_false_negatives > 0  # something was flagged and weighted by zero


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
        detect_false_negatives(POS, NEG, "closest", positive_min=1.5)
    with pytest.raises(ValueError, match="pos_sim"):
        detect_false_negatives(POS[:2], NEG, "closest")
    with pytest.raises(ValueError, match="temperature=None"):
        detect_false_negatives(POS, NEG, "reference")
    with pytest.raises(ValueError, match="searched has shape"):
        detect_false_negatives(POS, NEG, "reference", temperature=0.5, searched=NEG[:2] > 0)
