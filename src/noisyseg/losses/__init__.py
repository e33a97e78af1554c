"""Losses: tensors in, scalar out (see STYLE.md, "A loss is an nn.Module")."""

from noisyseg.losses.dense import CrossImageLoss, WithinImageLoss, downsample_labels
from noisyseg.losses.dino import DINOLoss
from noisyseg.losses.infonce import InfoNCELoss, detect_false_negatives
from noisyseg.losses.ntxent import NTXentLoss
from noisyseg.losses.robust import (
    BootstrappingCE,
    GeneralizedCE,
    LabelSmoothingCE,
    PixelLoss,
    SmallLossSelection,
    SymmetricCE,
    WithDice,
)
from noisyseg.losses.segmentation import CEDiceLoss, inverse_frequency_weights

__all__ = [
    "CEDiceLoss",
    "inverse_frequency_weights",
    "BootstrappingCE",
    "GeneralizedCE",
    "LabelSmoothingCE",
    "PixelLoss",
    "SmallLossSelection",
    "SymmetricCE",
    "WithDice",
    "CrossImageLoss",
    "DINOLoss",
    "InfoNCELoss",
    "NTXentLoss",
    "WithinImageLoss",
    "detect_false_negatives",
    "downsample_labels",
]
