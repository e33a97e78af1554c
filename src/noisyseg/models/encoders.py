"""ResNet encoders for any number of input bands (segmentation_models_pytorch).

An encoder maps ``[B, C, H, W]`` to a stride-ordered list of six feature maps (strides 1, 2, 4,
8, 16, 32; the first is the input itself) and states ``out_channels`` — the smp convention every
decoder here is built from. Weights start random: nothing is downloaded; pretrained weights come
only from an encoder file (:mod:`noisyseg.runfiles`) or an explicit import
(:mod:`noisyseg.interop`).
"""

from __future__ import annotations

import segmentation_models_pytorch as smp
import torch
from segmentation_models_pytorch.encoders.resnet import ResNetEncoder
from torch import nn


ENCODERS: dict[str, int] = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048}
"""Supported architectures -> channels of the last feature map (the one name -> model mapping)."""


def check_arch(arch: str) -> str:
    """Return ``arch`` if supported.

    Raises:
        ValueError: naming the valid architectures.
    """
    if arch not in ENCODERS:
        raise ValueError(f"unknown encoder architecture {arch!r}; valid: {sorted(ENCODERS)}")
    return arch


def build_encoder(arch: str = "resnet18", in_channels: int = 3, output_stride: int = 32) -> nn.Module:
    """A randomly initialised smp ResNet encoder of plain torch modules.

    Training speed-ups (matmul small-map convolutions) are applied by :mod:`noisyseg.runtime`.

    Args:
        arch: one of :data:`ENCODERS`.
        in_channels: input bands, any positive number.
        output_stride: 32, or 16/8 (dilated, as DeepLabV3+ uses); weights are the same shapes.

    Returns:
        Encoder whose ``forward(x [B,C,H,W])`` returns 6 maps and ``out_channels`` their widths.

    Raises:
        ValueError: for an unknown architecture or a non-positive band count.
    """
    check_arch(arch)
    if in_channels < 1:
        raise ValueError(f"in_channels={in_channels} must be >= 1")
    return smp.encoders.get_encoder(arch, in_channels=in_channels, depth=5, weights=None, output_stride=output_stride)


def last_features(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The last (stride-32) feature map alone: ``[B, C, H, W] -> [B, out_channels[-1], H/32, W/32]``.

    Equal to ``encoder(x)[-1]``, values and gradients. Why by hand: smp's ResNet forward applies
    the stem's ReLU before its max-pool because decoders take the stride-2 map as a skip. Without
    decoder, the max-pool can come first: max commutes with a monotone function, so
    ``relu(maxpool(y)) == maxpool(relu(y))`` exactly, and the gradient reaches the same input
    (each window's first maximum; zero where that maximum is <= 0 either way). ReLU and its
    backward then touch a quarter of the stem's elements (32x64x64x64 at 128 px, batch 32). Other
    encoders: ``encoder(x)[-1]``.
    """
    if type(encoder) is not ResNetEncoder or encoder._depth != 5:
        return encoder(x)[-1]
    y = encoder.bn1(encoder.conv1(x))
    y = encoder.relu(encoder.maxpool(y))  # pool first: identical result, 4x fewer elements for the ReLU
    return encoder.layer4(encoder.layer3(encoder.layer2(encoder.layer1(y))))


def pooled_features(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Global-average-pooled last feature map: ``[B, C, H, W] -> [B, out_channels[-1]]``."""
    return last_features(encoder, x).mean(dim=(2, 3))


def encoder_bands(encoder: nn.Module) -> int:
    """Input bands an encoder expects (from its first convolution)."""
    return int(encoder.conv1.weight.shape[1])
