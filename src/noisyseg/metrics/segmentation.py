"""Segmentation metrics from one confusion matrix accumulated over a whole split.

Averaging IoU per batch is biased (small batches with few pixels of a class weigh as much as large
ones); here the confusion matrix is summed over the split (and across DDP processes, as
torchmetrics reduces states with ``sum``) and the scores are computed once from it.
"""

from __future__ import annotations

import torch
from torchmetrics.classification import MulticlassConfusionMatrix

from noisyseg.data.sample import IGNORE_INDEX


class ConfusionMatrix(MulticlassConfusionMatrix):
    """Confusion matrix ``[K, K]`` (rows: truth, columns: prediction) over all valid pixels."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__(num_classes=num_classes, ignore_index=ignore_index, validate_args=False)


def scores_from_confusion(cm: torch.Tensor, class_names: list[str] | None = None) -> dict[str, float]:
    """Per-class IoU and F1, macro mIoU and F1, overall accuracy.

    Classes with no pixel in truth nor prediction have undefined IoU/F1 (NaN) and are left out of
    the macro means, so a split missing a class is not penalised for it.

    Args:
        cm: ``[K, K]`` counts, rows truth, columns prediction.
        class_names: names for the per-class keys (default ``0..K-1``).

    Returns:
        ``{"miou", "f1", "accuracy", "iou/<name>", "f1/<name>"}``.
    """
    cm = cm.double()
    tp = cm.diag()  # K
    fp = cm.sum(0) - tp  # predicted k, truth not k
    fn = cm.sum(1) - tp  # truth k, predicted not k
    iou = tp / (tp + fp + fn)  # NaN where the class never occurs
    f1 = 2 * tp / (2 * tp + fp + fn)
    names = class_names or [str(k) for k in range(cm.shape[0])]
    out = {
        "miou": float(torch.nanmean(iou)),
        "f1": float(torch.nanmean(f1)),
        "accuracy": float(tp.sum() / cm.sum().clamp_min(1)),
    }
    for k, name in enumerate(names):
        out[f"iou/{name}"] = float(iou[k])
        out[f"f1/{name}"] = float(f1[k])
    return out
