"""Projection heads that sit on an encoder during contrastive / self-distillation pretraining.

* :class:`ProjectionMLP` — MoCo v2 global head on the pooled last feature map.
* :class:`DenseProjection` — 1x1-conv pixel head for the dense losses (Zhao et al. 2021).
* :class:`DINOHead` — DINO's MLP, L2 bottleneck and weight-normalised prototype layer.

They are dropped after pretraining: only the encoder goes into the checkpoint.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

__all__ = ["DINOHead", "DenseProjection", "ProjectionMLP"]


def _check_dims(**dims: int) -> None:
    for name, value in dims.items():
        if value < 1:
            raise ValueError(f"{name}={value} must be >= 1")


def _pool(x: Tensor) -> Tensor:
    """``[N, C, H, W]`` -> ``[N, C]`` by global average pooling; ``[N, C]`` passes through."""
    if x.ndim == 4:
        return x.mean(dim=(2, 3))  # [N, C]
    if x.ndim == 2:
        return x
    raise ValueError(f"expected [N, C, H, W] or [N, C], got {tuple(x.shape)}")


class ProjectionMLP(nn.Module):
    """MoCo v2 projection head: global average pool, Linear-ReLU-Linear.

    Chen et al. 2020, "Improved Baselines with Momentum Contrastive Learning";
    facebookresearch/moco ``main_moco.py`` (``--mlp``: ``fc`` replaced by Linear-ReLU-Linear).

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
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim)
        )

    def forward(self, x: Tensor) -> Tensor:
        """``[N, C, H, W]`` (pooled here) or ``[N, C]`` -> ``[N, out_dim]`` (not normalised)."""
        return self.mlp(_pool(x))  # [N, out_dim]


class DenseProjection(nn.Module):
    """Pixel projection head: Conv1x1-BN-ReLU-Conv1x1.

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
        """``[B, in_channels, H, W]`` -> ``[B, out, H, W]``."""
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
    magnitude is ``last_layer.parametrizations.weight.original0``.

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
        """``[N, C, H, W]`` (pooled here) or ``[N, C]`` -> ``[N, out_dim]`` logits."""
        z = self.mlp(_pool(x))  # [N, bottleneck_dim]
        z = F.normalize(z, dim=-1)  # [N, bottleneck_dim] on the unit sphere
        return self.last_layer(z)  # [N, out_dim]
