"""Segmentation models: a ResNet encoder plus one of four decoders, logits at input resolution.

UNet, DeepLabV3+ and PSPNet are segmentation_models_pytorch's; the FCN head (a 3x3 conv block and a
1x1 classifier on the last encoder map, upsampled) is written here because smp has none and a
linear-style probe on frozen features is the standard way to read an encoder's quality.
Every model exposes ``.encoder`` with the same state-dict keys, so one encoder file loads into
any of them.
"""

from __future__ import annotations

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import nn

from noisyseg.models.encoders import build_encoder, check_arch, last_features


class FCN(nn.Module):
    """Encoder + FCN head on the stride-32 map (Long et al. 2015, head only; no skip layers).

    Args:
        arch: encoder architecture.
        in_channels: input bands.
        classes: output classes.
        hidden: channels of the head's 3x3 block.
    """

    def __init__(self, arch: str = "resnet18", in_channels: int = 3, classes: int = 2, hidden: int = 256) -> None:
        super().__init__()
        self.encoder = build_encoder(arch, in_channels)
        c = self.encoder.out_channels[-1]
        self.head = nn.Sequential(
            nn.Conv2d(c, hidden, 3, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Dropout2d(0.1),
            nn.Conv2d(hidden, classes, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = last_features(self.encoder, x)  # last map: B x C x H/32 x W/32
        logits = self.head(f)  # B x K x H/32 x W/32
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)  # B x K x H x W


def _smp(cls):
    def build(arch: str, in_channels: int, classes: int) -> nn.Module:
        return cls(encoder_name=arch, encoder_weights=None, in_channels=in_channels, classes=classes)

    return build


DECODERS = {
    "unet": _smp(smp.Unet),
    "deeplabv3plus": _smp(smp.DeepLabV3Plus),
    "pspnet": _smp(smp.PSPNet),
    "fcn": lambda arch, in_channels, classes: FCN(arch, in_channels, classes),
}
"""Decoder name -> builder ``(arch, in_channels, classes) -> model``."""


def build_segmentation_model(
    decoder: str = "unet", arch: str = "resnet18", in_channels: int = 3, num_classes: int = 2
) -> nn.Module:
    """A segmentation model with a random encoder (plain torch / smp modules).

    Raises:
        ValueError: naming the valid decoders or architectures, or a bad class/band count.
    """
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; valid: {sorted(DECODERS)}")
    check_arch(arch)
    if num_classes < 2:
        raise ValueError(f"num_classes={num_classes} must be >= 2")
    if in_channels < 1:
        raise ValueError(f"in_channels={in_channels} must be >= 1")
    return DECODERS[decoder](arch, in_channels, num_classes)


def decoder_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter outside ``model.encoder``."""
    enc = {id(p) for p in model.encoder.parameters()}
    return [p for p in model.parameters() if id(p) not in enc]
