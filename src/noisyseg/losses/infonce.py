"""InfoNCE with a key queue (MoCo v2), optionally false-negative aware (FALSE).

Public: :class:`InfoNCELoss`; :func:`detect_false_negatives`, the FNSD step of FALSE on its own
so it can be tested on hand-built similarities; :func:`fncc_info_nce`, InfoNCE from cosines with
FNCC, shared with :class:`~noisyseg.losses.ntxent.NTXentLoss`.

FALSE (Zhang et al., IEEE GRSL 2022, "FALSE: False Negative Samples Aware Contrastive Learning for
Semantic Segmentation of High-Resolution Remote Sensing Image"; GeoX-Lab/FALSE
``vissl/losses/false_loss.py``, a VISSL SimCLR loss) has two steps:

* FNSD, false-negative self-determination. Paper: the negative whose similarity to the anchor is
  closest to the anchor-positive similarity is taken as a false negative when the positive pair's
  similarity reaches a threshold T. Code: a gap matrix ``diff_sim`` is filled with 3; only its
  upper triangle (columns after the anchor's own, positive excluded) gets real gaps
  ``|exp(s_neg/T) - exp(s_pos/T)|``; every cell equal to the matrix minimum is selected, and each
  selected cell whose anchor has ``cos_pos >= positive_threshold`` is calibrated. So when every
  real gap exceeds 3 the minimum is the fill value, and every fill cell (the whole lower
  triangle, often dozens of pairs) is calibrated, not one.
* FNCC, confidence calibration: a share ``alpha`` of a false negative's ``exp(s/T)`` moves from
  the negative sum into the positive sum; the denominator keeps it whole.

:func:`fncc_info_nce` computes, from cosines,
``L_i = -log( (exp(s_i+/T) + a * sum_{j in FN(i)} exp(s_ij/T)) / (exp(s_i+/T) + sum_j exp(s_ij/T)) )``.
The reference adds ``a*e_j`` to its positive sum and ``(1-a)*e_j`` to its negative sum, so the
denominator keeps each ``e_j`` whole; ``alpha=0`` or no flag gives plain InfoNCE bit for bit (every
extra numerator term is ``-inf`` and logsumexp returns the positive logit). Deviation: log-sum-exp
instead of the reference's raw ``exp()`` sums (overflow at small T).

:class:`InfoNCELoss` takes its negatives from ``queue`` when one is given (MoCo). Without a queue
they are the other keys of the batch gathered across ranks (N_global - 1 per query; SimCLR/MoCo v3
style), and gradients flow into ``k`` through the gather; detach ``k`` yourself for a momentum
encoder.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from noisyseg.runtime import fp32_forward, gather, rank

__all__ = [
    "FALSE_NEGATIVE_MODES",
    "REFERENCE_FILL",
    "InfoNCELoss",
    "detect_false_negatives",
    "fncc_info_nce",
]

FalseNegativeMode = Literal["none", "reference", "closest", "per_anchor"]
FALSE_NEGATIVE_MODES: tuple[str, ...] = ("none", "reference", "closest", "per_anchor")

REFERENCE_FILL = 3.0
"""The value GeoX-Lab/FALSE fills its gap matrix with (``diff_sim = zeros + 3``)."""


def _check_cosine(name: str, value: float) -> None:
    if not -1.0 <= value <= 1.0:
        raise ValueError(f"{name}={value} is a cosine similarity threshold; valid: [-1, 1]")


def check_contrast_args(temperature: float, false_negative: str, alpha: float, threshold: float,
                        positive_min: float) -> None:
    """Raise ``ValueError``, naming the value and what is valid, for a bad InfoNCE / NT-Xent argument."""
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature={temperature} must be a positive finite number")
    if false_negative not in FALSE_NEGATIVE_MODES:
        raise ValueError(f"false_negative={false_negative!r} is unknown; valid: {FALSE_NEGATIVE_MODES}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha} is the FNCC confidence weight; valid: [0, 1]")
    _check_cosine("threshold", threshold)
    _check_cosine("positive_min", positive_min)


@torch.no_grad()
def detect_false_negatives(
    pos_sim: Tensor,
    neg_sim: Tensor,
    mode: FalseNegativeMode,
    threshold: float = 0.9,
    positive_min: float = 0.9,
    temperature: float | None = None,
    searched: Tensor | None = None,
) -> Tensor:
    """False-negative sample detection (FNSD of FALSE, Zhang et al. 2022) on cosine similarities.

    * ``"none"``: nothing is flagged.
    * ``"reference"``: GeoX-Lab/FALSE ``false_loss.py`` exactly. Gaps are
      ``|exp(neg/T) - exp(pos/T)|`` on the ``searched`` cells and :data:`REFERENCE_FILL` (3)
      elsewhere; every cell equal to ``min(min gap, 3)`` is selected (all ties; 3 caps the minimum
      because the authors' matrix always holds fill cells: the anchor's own and its positive's),
      and a selected cell is kept when its anchor's ``log(exp(pos/T)) * T >= positive_min``. When
      every searched gap exceeds 3, every unsearched cell is flagged (the authors' lower triangle);
      with every cell searched (a MoCo queue) nothing is then flagged, as the authors' FNCC is a
      no-op on their self and positive fill cells.
    * ``"closest"``: the improved variant of the paper's wording: over the whole batch the single
      (anchor, negative) pair with the smallest cosine gap ``|neg - pos|``, first minimum, all
      negatives searched, kept if that anchor's positive cosine is ``>= positive_min``. It does not
      depend on T (an exp gap shrinks with the positive's similarity, so the reference selects
      low-positive anchors that then fail the check) and never calibrates the whole lower
      triangle, an artefact of the code's fill value that the paper does not describe.
    * ``"per_anchor"``: for every anchor, its most similar negative when that cosine is
      ``> threshold`` (our variant: one candidate per anchor instead of one per batch).

    Args:
        pos_sim: ``[N]`` cosine of each anchor with its positive.
        neg_sim: ``[N, K]`` cosine of each anchor with each of its negatives.
        mode: one of :data:`FALSE_NEGATIVE_MODES`.
        threshold: per-anchor cosine threshold (``per_anchor`` mode).
        positive_min: least positive cosine for a selected pair to be accepted (``reference``,
            ``closest``; FALSE's ``positive_threshold``).
        temperature: T of the exp-space gaps (``reference`` mode, required there).
        searched: ``[N, K]`` bool, the cells given real gaps in ``reference`` mode (the
            authors' upper triangle); ``None``: every cell. Other modes ignore it.

    Returns:
        ``[N, K]`` bool mask, ``True`` where the negative is treated as a false negative.

    Raises:
        ValueError: unknown ``mode``, thresholds outside ``[-1, 1]``, ``reference`` without a
            positive ``temperature``, or mismatched shapes.
    """
    if mode not in FALSE_NEGATIVE_MODES:
        raise ValueError(f"false-negative mode {mode!r} is unknown; valid: {FALSE_NEGATIVE_MODES}")
    _check_cosine("threshold", threshold)
    _check_cosine("positive_min", positive_min)
    if pos_sim.ndim != 1 or neg_sim.ndim != 2 or neg_sim.shape[0] != pos_sim.shape[0]:
        raise ValueError(
            f"expected pos_sim [N] and neg_sim [N, K], got {tuple(pos_sim.shape)} and "
            f"{tuple(neg_sim.shape)}"
        )
    if searched is not None and searched.shape != neg_sim.shape:
        raise ValueError(
            f"searched has shape {tuple(searched.shape)}; expected neg_sim's {tuple(neg_sim.shape)}"
        )
    n, k = neg_sim.shape
    mask = torch.zeros(n, k, dtype=torch.bool, device=neg_sim.device)  # [N, K]
    if mode == "none" or n == 0 or k == 0:
        return mask
    if mode == "reference":
        if temperature is None or not temperature > 0:
            raise ValueError(
                f"temperature={temperature}: reference FNSD compares exp(cos/T); give T > 0"
            )
        e_pos = torch.exp(pos_sim / temperature)  # [N] the authors' pos_sim
        gap = (torch.exp(neg_sim / temperature) - e_pos[:, None]).abs()  # [N, K] diff_sim
        if searched is not None:
            gap = torch.where(searched, gap, torch.full_like(gap, REFERENCE_FILL))
        least = gap.min().clamp(max=REFERENCE_FILL)  # their matrix always holds fill cells
        selected = gap == least  # [N, K] every tie, as torch.where(diff_sim == min)
        confident = torch.log(e_pos) * temperature >= positive_min  # [N] their cos_pos_sim
        return selected & confident[:, None]
    if mode == "closest":
        gap = (neg_sim - pos_sim[:, None]).abs()  # [N, K]
        flat = torch.argmin(gap).view(1)  # [1] index into N*K, first minimum
        accept = pos_sim[flat // k] >= positive_min  # [1] the anchor's positive is close enough
        mask.view(-1).index_put_((flat,), accept)  # no host sync
        return mask
    best, idx = neg_sim.max(dim=1)  # [N], [N]: each anchor's most similar negative
    mask.scatter_(1, idx[:, None], (best > threshold)[:, None])  # [N, K]
    return mask


def fncc_info_nce(cos_pos: Tensor, cos_neg: Tensor, temperature: float, false_negatives: Tensor | None = None,
                  alpha: float = 1.0) -> Tensor:
    """Scalar InfoNCE from cosines, mean over anchors, with FALSE's FNCC on flagged negatives (module docstring).

    Args:
        cos_pos: ``[N]`` fp32 cosine of each anchor with its positive.
        cos_neg: ``[N, K]`` fp32 cosines with the negatives.
        temperature: T.
        false_negatives: ``[N, K]`` bool FNSD mask, or ``None``.
        alpha: FNCC confidence weight in ``[0, 1]``.
    """
    logits = torch.cat([cos_pos[:, None], cos_neg], dim=1) / temperature  # [N, 1+K]
    log_den = torch.logsumexp(logits, dim=1)  # [N], max-subtracted inside; unchanged by FNCC
    if false_negatives is None:
        return (log_den - logits[:, 0]).mean()
    log_alpha = math.log(alpha) if alpha > 0 else -math.inf
    # [N, K]: log(alpha * exp(s_ij/T)) on false negatives, -inf elsewhere
    fn_logits = torch.where(false_negatives, logits[:, 1:] + log_alpha, torch.full_like(logits[:, 1:], -math.inf))
    log_num = torch.logsumexp(torch.cat([logits[:, :1], fn_logits], dim=1), dim=1)  # [N] exp(s+/T) + a exp(s_fn/T)
    return (log_den - log_num).mean()


def _batch_negatives(q: Tensor, k: Tensor) -> Tensor:
    """Cosines ``[N, W*N-1]`` of each query ``q [N, D]`` with the other keys ``k [N, D]`` of the global batch.

    Raises:
        ValueError: a global batch of one key.
    """
    k_all = gather(k)  # [W*N, D], gradients reach the local shard
    if k_all.shape[0] < 2:
        raise ValueError(f"InfoNCELoss without a queue needs at least 2 keys in the global batch, got {len(k_all)}")
    n = q.shape[0]
    cos_all = q @ k_all.T  # [N, W*N]
    own = torch.arange(n, device=q.device) + rank() * n  # [N] column of each positive
    keep = torch.ones_like(cos_all, dtype=torch.bool)  # [N, W*N]
    keep[torch.arange(n, device=q.device), own] = False
    return cos_all[keep].view(n, -1)  # negative logits: Nx(W*N-1)


class InfoNCELoss(nn.Module):
    """InfoNCE over a query/key pair and a queue of negatives, with optional FALSE calibration.

    ``loss = -mean_i log( (exp(s_i+/T) + a * sum_{j in FN(i)} exp(s_ij/T))
                          / (exp(s_i+/T) + sum_j exp(s_ij/T)) )``

    With ``false_negative="none"`` this is MoCo's eq. 1 (He et al., CVPR 2020, "Momentum Contrast
    for Unsupervised Visual Representation Learning"; van den Oord et al. 2018, InfoNCE) with the
    MoCo v2 defaults (Chen et al. 2020; facebookresearch/moco ``moco/builder.py``). Otherwise the
    false negatives ``FN(i)`` found by :func:`detect_false_negatives` (FNSD) are calibrated as in
    FALSE's FNCC (see the module docstring and :func:`fncc_info_nce`), so ``alpha=0`` reproduces
    plain InfoNCE exactly. FALSE itself is a SimCLR loss (:class:`~noisyseg.losses.ntxent.NTXentLoss`
    reproduces it); here its FNSD runs on the MoCo layout, where a query has no lower triangle of
    other anchors: ``reference`` searches every negative (see :func:`detect_false_negatives`).
    Negatives: the rows of ``queue``, or without one the other keys of the global batch (module
    docstring).

    ``forward``: queries ``q [N, D]`` (any scale; L2-normalised inside), their positive keys
    ``k [N, D]`` (row i for query i; L2-normalised inside) and negatives ``queue [K, D]`` (``None``:
    the other keys of the global batch) -> the mean fp32 loss over the local queries.

    Args:
        temperature: softmax temperature T (MoCo v2: 0.2; FALSE config: 0.5).
        false_negative: one of :data:`FALSE_NEGATIVE_MODES` (see :func:`detect_false_negatives`).
        alpha: FNCC confidence weight in ``[0, 1]`` (FALSE config ``confidence_weight: 1``).
        threshold: ``per_anchor`` mode cosine threshold.
        positive_min: ``reference``/``closest`` least positive cosine (FALSE ``positive_threshold``).

    Raises:
        ValueError: non-positive temperature, unknown mode, ``alpha`` outside ``[0, 1]`` or
            thresholds outside ``[-1, 1]``.
    """

    def __init__(self, temperature: float = 0.2, false_negative: FalseNegativeMode = "none", alpha: float = 1.0,
                 threshold: float = 0.9, positive_min: float = 0.9) -> None:
        super().__init__()
        check_contrast_args(temperature, false_negative, alpha, threshold, positive_min)
        self.temperature, self.alpha = float(temperature), float(alpha)
        self.threshold, self.positive_min = float(threshold), float(positive_min)
        self.false_negative = false_negative
        self.last_false_negatives = 0  # a diagnostic, not an output: negatives FNSD flagged in the last call

    @fp32_forward
    def forward(self, q: Tensor, k: Tensor, queue: Tensor | None = None) -> Tensor:
        """Mean fp32 loss over the local queries ``q [N, D]`` (arguments: class docstring).

        Raises:
            ValueError: mismatched shapes, or no queue and a global batch of one key.
        """
        if q.ndim != 2 or q.shape != k.shape:
            raise ValueError(f"expected q and k of shape [N, D], got {tuple(q.shape)} and {tuple(k.shape)}")
        if queue is not None and (queue.ndim != 2 or queue.shape[1] != q.shape[1]):
            raise ValueError(f"expected queue [K, {q.shape[1]}], got {tuple(queue.shape)}")
        q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)  # [N, D] each
        cos_pos = torch.einsum("nc,nc->n", q, k)  # positive logits: Nx1 (kept as [N] cosines)
        # negative logits: NxK against the queue, or Nx(W*N-1) against the batch's other keys
        cos_neg = q @ F.normalize(queue.detach(), dim=1).T if queue is not None else _batch_negatives(q, k)
        if self.false_negative == "none":
            return fncc_info_nce(cos_pos, cos_neg, self.temperature)
        fn = detect_false_negatives(cos_pos.detach(), cos_neg.detach(), self.false_negative,
                                    self.threshold, self.positive_min, self.temperature)  # [N, K]
        self.last_false_negatives = int(fn.sum())
        return fncc_info_nce(cos_pos, cos_neg, self.temperature, fn, self.alpha)
