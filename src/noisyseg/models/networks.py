"""The networks: ResNet encoders for any band count, projection heads and segmentation models.

**Encoders** (segmentation_models_pytorch). An encoder maps ``[B, C, H, W]`` to a stride-ordered list
of six feature maps (strides 1, 2, 4, 8, 16, 32; the first is the input itself) and states
``out_channels`` — the smp convention every decoder here is built from. Weights start random:
nothing is downloaded; pretrained weights come only from an encoder file (:mod:`noisyseg.runfiles`)
or an explicit import (:mod:`noisyseg.interop`). The builders return plain torch / smp modules;
training speed-ups (matmul small-map convolutions) are applied by :mod:`noisyseg.runtime`.

:func:`last_features` gives the last (stride-32) map alone, equal to ``encoder(x)[-1]`` in values and
gradients. Why by hand: smp's ResNet forward applies the stem's ReLU before its max-pool because
decoders take the stride-2 map as a skip. Without a decoder the max-pool can come first: max
commutes with a monotone function, so ``relu(maxpool(y)) == maxpool(relu(y))`` exactly, and the
gradient reaches the same input (each window's first maximum; zero where that maximum is <= 0
either way). ReLU and its backward then touch a quarter of the stem's elements (32x64x64x64 at
128 px, batch 32). Other encoders: ``encoder(x)[-1]``.

**Projection heads** sit on an encoder during contrastive / self-distillation pretraining and are
dropped afterwards (only the encoder goes into the checkpoint):

* :class:`ProjectionMLP` — MoCo v2 global head on the pooled last feature map.
* :class:`DenseProjection` — 1x1-conv pixel head for the dense losses (Zhao et al. 2021).
* :class:`DINOHead` — DINO's MLP, L2 bottleneck and weight-normalised prototype layer.

**Segmentation models**: a ResNet encoder plus one of four decoders (:data:`DECODERS`), logits at
input resolution. UNet, DeepLabV3+ and PSPNet are smp's; the FCN head (a 3x3 conv block and a 1x1
classifier on the last encoder map, upsampled) is written here because smp has none and a
linear-style probe on frozen features is the standard way to read an encoder's quality. Every model
exposes ``.encoder`` with the same state-dict keys, so one encoder file loads into any of them.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import segmentation_models_pytorch as smp
import torch.nn.functional as F
from segmentation_models_pytorch.encoders.resnet import ResNetEncoder
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

__all__ = [
    "DECODERS",
    "ENCODERS",
    "FCN",
    "DINOHead",
    "DenseProjection",
    "ProjectionMLP",
    "build_encoder",
    "build_segmentation_model",
    "check_encoder",
    "last_features",
    "pooled_features",
]

# ------------------------------------------------------------------------------------ encoders

ENCODERS: dict[str, int] = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048}
"""Supported architectures -> channels of the last feature map (the one name -> model mapping)."""


def check_encoder(arch: str, in_channels: int = 1) -> None:
    """Raise ``ValueError`` for an ``arch`` outside :data:`ENCODERS` (naming them) or ``in_channels < 1``."""
    if arch not in ENCODERS:
        raise ValueError(f"unknown encoder architecture {arch!r}; valid: {sorted(ENCODERS)}")
    if in_channels < 1:
        raise ValueError(f"in_channels={in_channels} must be >= 1")


def build_encoder(arch: str = "resnet18", in_channels: int = 3, output_stride: int = 32) -> nn.Module:
    """A random smp ResNet encoder: ``forward(x [B, C, H, W])`` returns 6 maps, ``out_channels`` their widths.

    Args:
        arch: one of :data:`ENCODERS`.
        in_channels: input bands, any positive number.
        output_stride: 32, or 16/8 (dilated, as DeepLabV3+ uses); weights are the same shapes.

    Raises:
        ValueError: for an unknown architecture or a non-positive band count.
    """
    check_encoder(arch, in_channels)
    return smp.encoders.get_encoder(arch, in_channels=in_channels, depth=5, weights=None, output_stride=output_stride)


def last_features(encoder: nn.Module, x: Tensor) -> Tensor:
    """``encoder(x)[-1]``: ``[B, C, H, W] -> [B, out_channels[-1], H/32, W/32]``, cheaper (module docstring)."""
    if type(encoder) is not ResNetEncoder or encoder._depth != 5:
        return encoder(x)[-1]
    y = encoder.bn1(encoder.conv1(x))
    y = encoder.relu(encoder.maxpool(y))  # pool first: identical result, 4x fewer elements for the ReLU
    return encoder.layer4(encoder.layer3(encoder.layer2(encoder.layer1(y))))


def pooled_features(encoder: nn.Module, x: Tensor) -> Tensor:
    """Global-average-pooled last feature map: ``[B, C, H, W] -> [B, out_channels[-1]]``."""
    return last_features(encoder, x).mean(dim=(2, 3))


# ------------------------------------------------------------------------------- projection heads


def _check_dims(**dims: int) -> None:
    for name, value in dims.items():
        if value < 1:
            raise ValueError(f"{name}={value} must be >= 1")


def _pool(x: Tensor) -> Tensor:
    """``[N, C, H, W]`` -> ``[N, C]`` by global average pooling; ``[N, C]`` passes through."""
    if x.ndim not in (2, 4):
        raise ValueError(f"expected [N, C, H, W] or [N, C], got {tuple(x.shape)}")
    return x.mean(dim=(2, 3)) if x.ndim == 4 else x  # [N, C]


class ProjectionMLP(nn.Module):
    """MoCo v2 projection head: global average pool, Linear-ReLU-Linear.

    Chen et al. 2020, "Improved Baselines with Momentum Contrastive Learning";
    facebookresearch/moco ``main_moco.py`` (``--mlp``: ``fc`` replaced by Linear-ReLU-Linear).
    ``forward``: ``[N, C, H, W]`` (pooled here) or ``[N, C]`` -> ``[N, out_dim]`` (not normalised).

    Args:
        in_dim: C, channels of the encoder's last feature map.
        hidden_dim: width of the hidden layer (MoCo v2: 2048).
        out_dim: embedding size (MoCo v2: 128).

    Raises:
        ValueError: a dimension below 1.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 2048, out_dim: int = 128) -> None:
        super().__init__()
        _check_dims(in_dim=in_dim, hidden_dim=hidden_dim, out_dim=out_dim)
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(_pool(x))  # [N, out_dim]


class DenseProjection(nn.Module):
    """Pixel projection head: Conv1x1-BN-ReLU-Conv1x1, ``[B, in_channels, H, W]`` -> ``[B, out, H, W]``.

    Zhao et al., ICCV 2021 (two 1x1 conv layers, 256 channels); google-research
    ``supervised_pixel_contrastive_loss/contrastive_loss.py`` ``projection_head``. Deviation: the
    reference L2-normalises the output here; our dense losses normalise per pixel themselves.

    Args:
        in_channels: channels of the feature map it projects.
        hidden: channels of the hidden layer.
        out: channels of the projected map.

    Raises:
        ValueError: a dimension below 1.
    """

    def __init__(self, in_channels: int, hidden: int = 256, out: int = 256) -> None:
        super().__init__()
        _check_dims(in_channels=in_channels, hidden=hidden, out=out)
        self.proj = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1, bias=False),  # bias is redundant before BN
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, out, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4:
            raise ValueError(f"expected [B, C, H, W], got {tuple(x.shape)}")
        return self.proj(x)  # [B, out, H, W]


class DINOHead(nn.Module):
    """DINO projection head: MLP, L2-normalised bottleneck, weight-normalised last layer.

    Caron et al., ICCV 2021; facebookresearch/dino ``vision_transformer.py`` ``DINOHead``
    (``use_bn=False``, GELU, truncated-normal init std 0.02). The last layer is
    ``weight_norm(Linear(bottleneck_dim, out_dim, bias=False))`` with its magnitude fixed to 1
    and frozen when ``norm_last_layer`` (reference default). Deviation: ``out_dim`` defaults to
    4096 rather than 65536, sized for small remote-sensing sets (the reference's ``--out_dim`` help
    recommends large values like 65k for large, complex datasets);
    ``torch.nn.utils.parametrizations.weight_norm`` replaces the deprecated hook version, so the
    magnitude is ``last_layer.parametrizations.weight.original0``. ``forward``: ``[N, C, H, W]``
    (pooled here) or ``[N, C]`` -> ``[N, out_dim]`` logits.

    Args:
        in_dim: C, the encoder's pooled feature size.
        out_dim: K, number of prototypes (the DINO loss's ``out_dim``).
        hidden_dim: MLP width.
        bottleneck_dim: size of the L2-normalised bottleneck.
        nlayers: number of Linear layers before the last layer (>= 1).
        norm_last_layer: freeze the weight-norm magnitude at 1.

    Raises:
        ValueError: a dimension or ``nlayers`` below 1.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 4096,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        _check_dims(
            in_dim=in_dim, out_dim=out_dim, hidden_dim=hidden_dim,
            bottleneck_dim=bottleneck_dim, nlayers=nlayers,
        )
        if nlayers == 1:
            self.mlp: nn.Module = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim), nn.GELU()]
            for _ in range(nlayers - 2):
                layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        magnitude = self.last_layer.parametrizations.weight.original0  # [out_dim, 1]
        magnitude.data.fill_(1.0)
        magnitude.requires_grad_(not norm_last_layer)

    def forward(self, x: Tensor) -> Tensor:
        z = self.mlp(_pool(x))  # [N, bottleneck_dim]
        z = F.normalize(z, dim=-1)  # [N, bottleneck_dim] on the unit sphere
        return self.last_layer(z)  # [N, out_dim]


# --------------------------------------------------------------------------- segmentation models


class FCN(nn.Module):
    """Encoder + FCN head on the stride-32 map (Long et al. 2015, head only; no skip layers).

    ``forward``: ``[B, C, H, W]`` -> ``[B, classes, H, W]`` logits (bilinear upsampling).

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

    def forward(self, x: Tensor) -> Tensor:
        f = last_features(self.encoder, x)  # last map: B x C x H/32 x W/32
        logits = self.head(f)  # B x K x H/32 x W/32
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)  # B x K x H x W


DECODERS: dict[str, Callable[..., nn.Module]] = {
    "unet": partial(smp.Unet, encoder_weights=None),
    "deeplabv3plus": partial(smp.DeepLabV3Plus, encoder_weights=None),
    "pspnet": partial(smp.PSPNet, encoder_weights=None),
    "fcn": FCN,
}
"""Decoder name -> model class, called as ``(arch, in_channels=..., classes=...)`` with a random encoder."""


def build_segmentation_model(
    decoder: str = "unet", arch: str = "resnet18", in_channels: int = 3, num_classes: int = 2
) -> nn.Module:
    """A :data:`DECODERS` model with a random encoder: ``[B, in_channels, H, W] -> [B, num_classes, H, W]``.

    Raises:
        ValueError: naming the valid decoders or architectures, or a bad class/band count.
    """
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; valid: {sorted(DECODERS)}")
    check_encoder(arch, in_channels)
    if num_classes < 2:
        raise ValueError(f"num_classes={num_classes} must be >= 2")
    return DECODERS[decoder](arch, in_channels=in_channels, classes=num_classes)
