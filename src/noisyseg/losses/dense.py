"""Supervised pixel contrastive losses (within-image and cross-image) of Zhao et al. 2021.

For an anchor pixel i with positives P(i) (same label) and negatives N(i) (other labels), the
loss of Zhao et al. (ICCV 2021, "Contrastive Learning for Label Efficient Semantic Segmentation",
Sec. 3; google-research ``supervised_pixel_contrastive_loss/contrastive_loss.py``) is::

    L_i = -1/|P(i)| sum_{p in P(i)} log( exp(s_ip/T) / (exp(s_ip/T) + sum_{n in N(i)} exp(s_in/T)) )

i.e. a supervised contrastive loss over pixels (Khosla et al. 2020) whose denominator holds the
one positive and the negatives only. Anchors are averaged per image, then images are averaged.

With ``reference=True`` both losses reproduce the reference code's ``compute_contrastive_loss``
exactly: i is kept among its own positives (its mask is ``labels == labels``), every image counts
in the batch mean (anchor-less ones as 0), the within-image loss is the sum of the two views'
losses, each over its own pixels, and the cross-image loss anchors on view 1 of an image and view
2 of its partner alike, each pixel taking negatives from its own part only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from noisyseg.runtime import fp32_forward, gather, gather_no_grad, rank

__all__ = ["CrossImageLoss", "WithinImageLoss", "downsample_labels"]


def downsample_labels(mask: Tensor, size: int | tuple[int, int]) -> Tensor:
    """Nearest-neighbour resize of integer label maps to the feature grid.

    Deviation: torch ``nearest`` (source index ``floor(i * H / S)``) instead of the reference's
    TF ``resize_nearest_neighbor(align_corners=True)``; both keep labels as they are (no blending).

    Args:
        mask: ``[B, H, W]`` integer labels (ignore pixels included).
        size: ``S`` or ``(S_h, S_w)``.

    Returns:
        ``[B, S_h, S_w]`` int64 labels.

    Raises:
        ValueError: ``mask`` is not 3-D.
    """
    if mask.ndim != 3:
        raise ValueError(f"expected mask [B, H, W], got {tuple(mask.shape)}")
    # float32 is exact for labels < 2**24
    resized = F.interpolate(mask[:, None].float(), size=size, mode="nearest")  # [B, 1, S, S]
    return resized[:, 0].round().long()  # [B, S, S]


class _PixelContrast(nn.Module):
    """Shared arguments and the masked loss core of the two dense losses."""

    def __init__(
        self, temperature: float = 0.07, ignore_index: int = 255, binarize: bool = False,
        reference: bool = False,
    ) -> None:
        super().__init__()
        if not (temperature > 0 and math.isfinite(temperature)):
            raise ValueError(f"temperature={temperature} must be a positive finite number")
        self.temperature = float(temperature)
        self.ignore_index = int(ignore_index)
        self.binarize = bool(binarize)
        self.reference = bool(reference)

    def _prepare_views(
        self, features1: Tensor, features2: Tensor, labels1: Tensor, labels2: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Check the two views agree in shape, then :meth:`_prepare` each: ``f1, l1, f2, l2``."""
        if features1.shape != features2.shape:
            raise ValueError(
                f"views differ in shape: {tuple(features1.shape)} vs {tuple(features2.shape)}"
            )
        return (*self._prepare(features1, labels1, "view 1"), *self._prepare(features2, labels2, "view 2"))

    def _prepare(self, features: Tensor, labels: Tensor, name: str) -> tuple[Tensor, Tensor]:
        """``[B, D, S, S]``, ``[B, S, S]`` -> unit features ``[B, S*S, D]``, labels ``[B, S*S]``."""
        if features.ndim != 4 or labels.shape != (features.shape[0], *features.shape[2:]):
            raise ValueError(
                f"{name}: expected features [B, D, S, S] and labels [B, S, S] on the same grid, "
                f"got {tuple(features.shape)} and {tuple(labels.shape)}; resize labels with "
                "noisyseg.losses.dense.downsample_labels"
            )
        f = F.normalize(features, dim=1)  # [B, D, S, S] unit vector per pixel (fp32: forward)
        f = f.flatten(2).transpose(1, 2)  # [B, S*S, D]
        lab = labels.flatten(1).long()  # [B, S*S]
        if self.binarize:  # xBD in the paper: background vs building, ignore stays ignore
            lab = torch.where(lab == self.ignore_index, lab, (lab > 0).long())
        return f, lab

    def _loss(self, f: Tensor, lab: Tensor, n_anchor: int, neg_cols: Tensor) -> Tensor:
        """Masked loss of the first ``n_anchor`` pixels of each set against all ``M`` pixels.

        Args:
            f: ``[B, M, D]`` unit features of each image's pixel set; anchors come first.
            lab: ``[B, M]`` labels.
            n_anchor: A, the number of leading pixels that are anchors.
            neg_cols: ``[M]`` bool, which pixels may serve as negatives.
        """
        a = n_anchor
        logits = f[:, :a] @ f.transpose(1, 2) / self.temperature  # [B, A, M] fp32
        valid = lab != self.ignore_index  # [B, M]: ignore pixels are neither anchors nor contrasts
        pair = valid[:, :a, None] & valid[:, None, :]  # [B, A, M]
        idx = torch.arange(a, device=f.device)
        pair[:, idx, idx] = False  # mask self-similarity
        # Deviation: the reference keeps i among its own positives (its mask is labels == labels).
        same = lab[:, :a, None] == lab[:, None, :]  # [B, A, M]
        pos = same & pair  # [B, A, M]
        neg = ~same & pair & neg_cols  # [B, A, M]
        # log sum_n exp(s_in/T); logsumexp subtracts the row max. Rows without negatives give -inf,
        # whose NaN gradient is dropped by the where() backward.
        neg_lse = torch.logsumexp(torch.where(neg, logits, -math.inf), dim=-1)  # [B, A]
        per_pos = torch.logaddexp(logits, neg_lse[..., None]) - logits  # [B, A, M] -log ratio
        n_pos = pos.sum(-1)  # [B, A]
        anchor_loss = torch.where(pos, per_pos, 0.0).sum(-1) / n_pos.clamp(min=1)  # [B, A]
        has_pos = n_pos > 0  # [B, A]: anchors with no positive leave the mean
        n_anchors = has_pos.sum(-1)  # [B]
        image_loss = anchor_loss.sum(-1) / n_anchors.clamp(min=1)  # [B] (zeros where excluded)
        has_anchor = (n_anchors > 0).float()  # [B]
        # Deviation: the reference averages over all images, counting anchor-less ones as 0.
        # With no anchor at all this is 0 with zero gradients, still on the graph (DDP-safe).
        return (image_loss * has_anchor).sum() / has_anchor.sum().clamp(min=1.0)

    def _reference_loss(self, f: Tensor, lab: Tensor, part: Tensor | None = None) -> Tensor:
        """google-research ``compute_contrastive_loss`` on each image's pixel set, in log space.

        Args:
            f: ``[B, M, D]`` unit features; every valid pixel is an anchor.
            lab: ``[B, M]`` labels.
            part: ``[M]`` ids; a pixel's negatives are those of its own part (the reference's
                ``same_image_mask``); ``None``: one part.
        """
        logits = f @ f.transpose(1, 2) / self.temperature  # [B, M, M] fp32
        valid = lab != self.ignore_index  # [B, M]
        pair = valid[:, :, None] & valid[:, None, :]  # [B, M, M] the reference's 1 - ignore_mask
        same = lab[:, :, None] == lab[:, None, :]  # [B, M, M] diagonal included
        pos = same & pair  # [B, M, M]: i is its own positive
        neg = ~same & pair  # [B, M, M]
        if part is not None:
            neg = neg & (part[:, None] == part[None, :])  # [B, M, M]
        neg_lse = torch.logsumexp(torch.where(neg, logits, -math.inf), dim=-1)  # [B, M]
        per_pos = torch.logaddexp(logits, neg_lse[..., None]) - logits  # [B, M, M] -log ratio
        n_pos = pos.sum(-1)  # [B, M]
        anchor_loss = torch.where(pos, per_pos, 0.0).sum(-1) / n_pos.clamp(min=1)  # [B, M]
        n_anchors = (n_pos > 0).sum(-1)  # [B]
        image_loss = anchor_loss.sum(-1) / n_anchors.clamp(min=1)  # [B], 0 without anchors
        return image_loss.mean()  # anchor-less images count as 0, as in the reference


class WithinImageLoss(_PixelContrast):
    """Within-image supervised pixel contrastive loss (Zhao et al. 2021).

    For each image the pixels of both augmented views form one set; an anchor's positives are the
    other pixels of the set with its label, its negatives those with another label. See the module
    docstring for the formula and reference code.

    Deviation (unless ``reference``): the reference computes the within-image loss on each view
    separately and sums the two; here both views of an image form one set, so pixels are also
    contrasted across views.

    Args:
        temperature: softmax temperature (paper: 0.07).
        ignore_index: label of pixels that are neither anchors nor contrasts.
        binarize: map labels > 0 to 1 (background vs building, as the paper does for xBD).
        reference: the reference code's loss exactly (see the module docstring).

    Raises:
        ValueError: non-positive temperature.
    """

    @fp32_forward
    def forward(
        self, features1: Tensor, features2: Tensor, labels1: Tensor, labels2: Tensor
    ) -> Tensor:
        """Loss of one batch.

        Args:
            features1: ``[B, D, S, S]`` projected features of view 1.
            features2: ``[B, D, S, S]`` projected features of view 2 (same images, same order).
            labels1: ``[B, S, S]`` labels of view 1 on the feature grid.
            labels2: ``[B, S, S]`` labels of view 2 on the feature grid.

        Returns:
            Scalar fp32 loss.

        Raises:
            ValueError: mismatched shapes.
        """
        f1, l1, f2, l2 = self._prepare_views(features1, features2, labels1, labels2)  # [B, P, D], [B, P]
        if self.reference:  # each view on its own, summed
            return self._reference_loss(f1, l1) + self._reference_loss(f2, l2)
        f = torch.cat([f1, f2], dim=1)  # [B, 2P, D]
        lab = torch.cat([l1, l2], dim=1)  # [B, 2P]
        all_cols = torch.ones(f.shape[1], dtype=torch.bool, device=f.device)  # [2P]
        return self._loss(f, lab, f.shape[1], all_cols)


class CrossImageLoss(_PixelContrast):
    """Cross-image supervised pixel contrastive loss (Zhao et al. 2021).

    Each image's set (the pixels of both its views, which are the anchors) is joined by the
    view-2 pixels of a partner image: the next image of the global batch (index + 1, wrapping;
    gathered across ranks, so the partner may live on another rank and gets gradients through
    the gather). Same-label partner pixels are extra positives. As in the reference, negatives
    come from the anchor's own image only (``negatives_from_partner=False``), so the partner
    adds positives of the same class seen in another context; set it to also take the partner's
    other-label pixels as negatives.

    Deviations from the reference: the partner is a fixed roll by one (the reference draws a random
    shuffle, which can pair an image with itself; kept with ``reference``, so every rank agrees on
    the partner); only the image's own pixels are anchors (the reference also anchors on the
    partner's pixels, which here are anchors in their own set); the own set holds both views, as
    in :class:`WithinImageLoss`. With ``reference`` only the partner rule differs: the set is view
    1 of the image and view 2 of its partner, all anchors, negatives from the pixel's own part.

    Args:
        temperature: softmax temperature (paper: 0.07).
        ignore_index: label of pixels that are neither anchors nor contrasts.
        binarize: map labels > 0 to 1 (background vs building, as the paper does for xBD).
        negatives_from_partner: also use the partner's other-label pixels as negatives.
        reference: the reference code's loss (see the module docstring), partner rule aside.

    Raises:
        ValueError: non-positive temperature, or ``reference`` with ``negatives_from_partner``
            (the reference takes negatives from a pixel's own part only).
    """

    def __init__(
        self,
        temperature: float = 0.07,
        ignore_index: int = 255,
        binarize: bool = False,
        negatives_from_partner: bool = False,
        reference: bool = False,
    ) -> None:
        super().__init__(temperature, ignore_index, binarize, reference)
        if reference and negatives_from_partner:
            raise ValueError(
                "negatives_from_partner=True contradicts reference=True: the reference takes a "
                "pixel's negatives from its own image only"
            )
        self.negatives_from_partner = bool(negatives_from_partner)

    @fp32_forward
    def forward(
        self, features1: Tensor, features2: Tensor, labels1: Tensor, labels2: Tensor
    ) -> Tensor:
        """Loss of one batch; see :meth:`WithinImageLoss.forward` for the arguments.

        Raises:
            ValueError: mismatched shapes, or fewer than 2 images in the global batch.
        """
        f1, l1, f2, l2 = self._prepare_views(features1, features2, labels1, labels2)  # [B, P, D], [B, P]
        b, p = l1.shape
        f2_all = gather(f2)  # [W*B, P, D], gradients reach the local shard
        l2_all = gather_no_grad(l2)  # [W*B, P]
        n_global = f2_all.shape[0]
        if n_global < 2:
            raise ValueError(
                f"CrossImageLoss needs at least 2 images in the global batch, got {n_global}"
            )
        partner = (torch.arange(b, device=f1.device) + rank() * b + 1) % n_global  # [B]
        if self.reference:  # view 1 of the image, view 2 of its partner
            f = torch.cat([f1, f2_all[partner]], dim=1)  # [B, 2P, D]
            lab = torch.cat([l1, l2_all[partner]], dim=1)  # [B, 2P]
            part = torch.arange(2 * p, device=f.device) // p  # [2P] 0: own, 1: partner
            return self._reference_loss(f, lab, part)
        f = torch.cat([f1, f2, f2_all[partner]], dim=1)  # [B, 3P, D]
        lab = torch.cat([l1, l2, l2_all[partner]], dim=1)  # [B, 3P]
        neg_cols = torch.ones(3 * p, dtype=torch.bool, device=f.device)  # [3P]
        neg_cols[2 * p :] = self.negatives_from_partner
        return self._loss(f, lab, 2 * p, neg_cols)
