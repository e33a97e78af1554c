"""Projection heads: output shapes, DINO's weight-normalised last layer, argument checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from noisyseg.models.networks import DenseProjection, DINOHead, ProjectionMLP


def test_projection_mlp_pools_maps_and_accepts_vectors() -> None:
    head = ProjectionMLP(16, hidden_dim=32, out_dim=8)
    x = torch.randn(3, 16, 5, 5)
    out = head(x)
    assert out.shape == (3, 8)
    torch.testing.assert_close(out, head(x.mean(dim=(2, 3))))
    assert [type(m).__name__ for m in head.mlp] == ["Linear", "ReLU", "Linear"]


def test_dense_projection_keeps_the_grid() -> None:
    head = DenseProjection(16, hidden=24, out=12)
    assert head(torch.randn(2, 16, 7, 9)).shape == (2, 12, 7, 9)
    assert [type(m).__name__ for m in head.proj] == ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d"]
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        head(torch.randn(2, 16))


def test_dino_head_last_layer_is_unit_norm_frozen_weight_norm() -> None:
    torch.manual_seed(0)
    head = DINOHead(16, out_dim=40, hidden_dim=32, bottleneck_dim=8, nlayers=3)
    x = torch.randn(4, 16, 3, 3)
    out = head(x)
    assert out.shape == (4, 40)
    magnitude = head.last_layer.parametrizations.weight.original0
    assert not magnitude.requires_grad and torch.equal(magnitude, torch.ones(40, 1))
    direction = head.last_layer.parametrizations.weight.original1  # [40, 8]
    z = F.normalize(head.mlp(x.mean(dim=(2, 3))), dim=-1)  # [4, 8]
    torch.testing.assert_close(out, z @ F.normalize(direction, dim=1).T)
    linears = [m for m in head.mlp.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 3 and all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in linears)
    trainable = DINOHead(16, out_dim=40, norm_last_layer=False, nlayers=1)
    assert trainable.last_layer.parametrizations.weight.original0.requires_grad
    assert trainable(torch.randn(2, 16)).shape == (2, 40)


@pytest.mark.parametrize(
    ("build", "named"),
    [
        (lambda: ProjectionMLP(0), "in_dim=0"),
        (lambda: DenseProjection(8, hidden=0), "hidden=0"),
        (lambda: DINOHead(8, nlayers=0), "nlayers=0"),
        (lambda: DINOHead(8, out_dim=-1), "out_dim=-1"),
    ],
)
def test_bad_dimensions_name_the_value(build, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        build()
