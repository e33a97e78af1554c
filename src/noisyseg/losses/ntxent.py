"""NT-Xent over 2N views (SimCLR), optionally false-negative aware (FALSE's own base loss)."""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import Tensor, nn

from noisyseg.losses.infonce import FalseNegativeMode, check_contrast_args, detect_false_negatives, fncc_info_nce
from noisyseg.runtime import fp32_forward, gather, rank

__all__ = ["NTXentLoss"]


class NTXentLoss(nn.Module):
    """Normalised temperature-scaled cross entropy over both views, with optional FALSE.

    Chen et al., ICML 2020, "A Simple Framework for Contrastive Learning of Visual
    Representations" (SimCLR), eq. 1: the 2N views of N images are all anchors; anchor i's
    positive is the other view of its image and its 2N-2 negatives are every other view:

    ``l_i = -log( exp(s_i,p(i)/T) / sum_{j != i} exp(s_ij/T) )``, loss = mean over the 2N anchors.

    Views are laid out view-major, ``[z1; z2]``, as VISSL's SimCLR collator and GeoX-Lab/FALSE's
    ``false_collator`` do, and gathered from every rank with gradients (VISSL
    ``gather_from_all``), so under DDP an anchor has ``W*2N - 2`` negatives; each rank averages
    over its own 2N anchors.

    With ``false_negative`` set this is FALSE (Zhang et al., IEEE GRSL 2022; GeoX-Lab/FALSE
    ``vissl/losses/false_loss.py``): FNSD by :func:`~noisyseg.losses.infonce.detect_false_negatives`,
    FNCC by :func:`~noisyseg.losses.infonce.fncc_info_nce`. In ``reference`` mode the cells given
    real gaps are the authors' upper triangle: columns after the anchor's own in the global view
    order, positive excluded. On one process this is their code exactly, fill-value behaviour
    included. Deviation under DDP: their code takes the positive at column ``i +- c/2`` and starts
    the triangle at the local row index, right only on one GPU (their config is
    ``false_1gpu_resnet.yaml``); here the positive is the true partner and the triangle starts at
    the anchor's global column.

    Args:
        temperature: T (FALSE config and lightly's ``NTXentLoss``: 0.5).
        false_negative: one of :data:`~noisyseg.losses.infonce.FALSE_NEGATIVE_MODES`.
        alpha: FNCC confidence weight in ``[0, 1]`` (FALSE config ``confidence_weight: 1``).
        threshold: ``per_anchor`` mode cosine threshold.
        positive_min: ``reference``/``closest`` least positive cosine (FALSE
            ``positive_threshold: 0.9``).

    Raises:
        ValueError: non-positive temperature, unknown mode, ``alpha`` outside ``[0, 1]`` or
            thresholds outside ``[-1, 1]``.
    """

    def __init__(
        self,
        temperature: float = 0.5,
        false_negative: FalseNegativeMode = "none",
        alpha: float = 1.0,
        threshold: float = 0.9,
        positive_min: float = 0.9,
    ) -> None:
        super().__init__()
        check_contrast_args(temperature, false_negative, alpha, threshold, positive_min)
        self.temperature = float(temperature)
        self.false_negative = false_negative
        self.alpha = float(alpha)
        self.threshold = float(threshold)
        self.positive_min = float(positive_min)
        self.last_false_negatives = 0

    @fp32_forward
    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        """Mean loss over the 2N local anchors.

        Args:
            z1: ``[N, D]`` embeddings of the first views (any scale; L2-normalised here).
            z2: ``[N, D]`` embeddings of the second views, row i the same image as ``z1`` row i.

        Returns:
            Scalar fp32 loss.

        Raises:
            ValueError: mismatched shapes, or a global batch with no negative (one image).
        """
        if z1.ndim != 2 or z1.shape != z2.shape:
            raise ValueError(
                f"expected z1 and z2 of shape [N, D], got {tuple(z1.shape)} and {tuple(z2.shape)}"
            )
        n = z1.shape[0]
        z = F.normalize(torch.cat([z1, z2]), dim=1)  # [2N, D] view-major
        z_all = gather(z)  # [W*2N, D] rank-major, gradients reach the local shard
        if z_all.shape[0] < 3:
            raise ValueError(
                f"NTXentLoss needs at least 2 images in the global batch, got {z_all.shape[0] // 2}"
            )
        rows = torch.arange(2 * n, device=z.device)  # [2N]
        own = rows + rank() * 2 * n  # [2N] global column of each anchor
        partner = (rows + n) % (2 * n) + rank() * 2 * n  # [2N] column of its other view
        cos = z @ z_all.T  # [2N, W*2N]
        cos_pos = cos[rows, partner]  # positive logits: 2N
        keep = torch.ones_like(cos, dtype=torch.bool)  # [2N, W*2N]
        keep[rows, own] = False
        keep[rows, partner] = False
        cos_neg = cos[keep].view(2 * n, -1)  # negative logits: 2N x (W*2N-2)
        if self.false_negative == "none":
            return fncc_info_nce(cos_pos, cos_neg, self.temperature)
        cols = torch.arange(z_all.shape[0], device=z.device)  # [W*2N]
        after = cols[None, :] > own[:, None]  # [2N, W*2N] the authors' upper triangle
        searched = after[keep].view(2 * n, -1)  # [2N, W*2N-2]
        fn = detect_false_negatives(
            cos_pos.detach(), cos_neg.detach(), self.false_negative,
            self.threshold, self.positive_min, self.temperature, searched,
        )  # [2N, W*2N-2]
        self.last_false_negatives = int(fn.sum())  # diagnostic: negatives flagged last call
        return fncc_info_nce(cos_pos, cos_neg, self.temperature, fn, self.alpha)
