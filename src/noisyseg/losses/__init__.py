"""Losses: tensors in, scalar out (see STYLE.md, "A loss is an nn.Module")."""

from noisyseg.losses.dense import CrossImageLoss, WithinImageLoss, downsample_labels
from noisyseg.losses.dino import DINOLoss
from noisyseg.losses.infonce import InfoNCELoss, detect_false_negatives

__all__ = [
    "CrossImageLoss",
    "DINOLoss",
    "InfoNCELoss",
    "WithinImageLoss",
    "detect_false_negatives",
    "downsample_labels",
]
