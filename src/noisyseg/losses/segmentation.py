"""Cross-entropy + Dice, the supervised noisy-label pretraining loss of Liu et al. (arXiv 2402.16164).

Dice is segmentation_models_pytorch's multiclass soft Dice (batch-wise per class, classes absent
from the target contribute 0, mean over classes). Both terms skip ``ignore_index`` pixels.
Computed in fp32 even under bf16 autocast (:func:`~noisyseg.runtime.fp32_forward`): softmax over a
few classes in bf16 loses the small probabilities Dice depends on.

Cross-entropy is the weighted mean over labelled pixels, computed as the sum of ``w[y] * -log p[y]``
over the summed weight of the labelled pixels, that weight clamped above 0: torch's
``reduction="mean"`` divides by that weight unclamped, which is 0/0 = NaN for an all-ignore batch
(an empty mask, a tile of no-data) and would stop the run. Otherwise both give the same mean, and
the clamp needs no device sync to decide; an all-ignore batch gives 0 with a gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.losses import DiceLoss
from torch import nn

from noisyseg.data.loading import IGNORE_INDEX
from noisyseg.data.stats import inverse_frequency
from noisyseg.runtime import fp32_forward


class CEDiceLoss(nn.Module):
    """``ce_weight * CE + dice_weight * Dice`` on logits ``[B, K, H, W]`` and labels ``[B, H, W]``.

    Args:
        ce_weight: weight of cross-entropy (>= 0).
        dice_weight: weight of Dice (>= 0); Liu et al. use equal weights.
        class_weights: optional per-class CE weights (e.g. inverse frequency).
        ignore_index: label skipped by both terms.

    Raises:
        ValueError: for negative weights or both weights zero.
    """

    def __init__(self, ce_weight: float = 1.0, dice_weight: float = 1.0, class_weights: Sequence[float] | None = None,
                 ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        if ce_weight < 0 or dice_weight < 0 or ce_weight + dice_weight == 0:
            raise ValueError(f"ce_weight={ce_weight} and dice_weight={dice_weight} must be >= 0 and not both 0")
        self.ce_weight, self.dice_weight, self.ignore_index = ce_weight, dice_weight, ignore_index
        w = None if class_weights is None else torch.as_tensor(list(class_weights), dtype=torch.float32)
        self.register_buffer("class_weights", w)
        self.dice = DiceLoss(mode="multiclass", from_logits=True, ignore_index=ignore_index)

    @fp32_forward
    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        w = self.class_weights  # K or None
        if w is not None and w.numel() != logits.shape[1]:
            raise ValueError(f"{w.numel()} class weights for {logits.shape[1]} classes")
        loss = logits.new_zeros(())
        if self.ce_weight:  # the clamped weighted mean of the module docstring
            total = F.cross_entropy(logits, target, weight=w, ignore_index=self.ignore_index, reduction="sum")
            valid = target != self.ignore_index  # B x H x W
            denom = (valid if w is None else w.to(logits.dtype)[target.where(valid, 0)] * valid).sum().to(logits.dtype)
            loss = loss + self.ce_weight * (total / denom.clamp_min(torch.finfo(logits.dtype).tiny))
        if self.dice_weight:
            loss = loss + self.dice_weight * self.dice(logits, target)
        return loss


def inverse_frequency_weights(counts: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """float32 ``[K]`` class weights ``N / (K * n_k)`` (:func:`~noisyseg.data.stats.inverse_frequency`)."""
    return torch.from_numpy(inverse_frequency(counts)).float()
