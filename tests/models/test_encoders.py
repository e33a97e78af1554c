"""last_features: the pool-before-ReLU stem gives encoder(x)[-1] exactly, values and gradients."""

from __future__ import annotations

import copy

import pytest
import torch

from noisyseg.models.networks import build_encoder, last_features
from noisyseg.models.momentum import split_batchnorm


@pytest.mark.parametrize("split", [False, True])
def test_last_features_equal_the_encoders_last_map_and_its_gradients(split) -> None:
    torch.manual_seed(0)
    enc = build_encoder("resnet18", in_channels=4)
    if split:  # the MoCo key encoder's BatchNorm
        split_batchnorm(enc, 2)
    ref = copy.deepcopy(enc)
    x = torch.randn(4, 4, 64, 64)
    x[:, :, :8] = -5.0  # windows whose maximum is negative: the ReLU zeroes them on both routes
    x_ref, x_new = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ref, y_new = ref(x_ref)[-1], last_features(enc, x_new)
    assert torch.equal(y_new, y_ref)  # same ops on the same values, only ReLU and max-pool swapped
    g = torch.randn_like(y_ref)
    y_ref.backward(g)
    y_new.backward(g)
    torch.testing.assert_close(x_new.grad, x_ref.grad)
    for (name, p), q in zip(enc.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
    for (name, b), c in zip(enc.named_buffers(), ref.buffers()):
        assert torch.equal(b, c), name  # BatchNorm running statistics updated alike


def test_last_features_of_other_encoders_is_their_last_map() -> None:
    enc = build_encoder("resnet18")
    enc._depth = 4  # not the five-stage trunk: plain forward
    x = torch.randn(2, 3, 64, 64)
    enc.eval()
    assert torch.equal(last_features(enc, x), enc(x)[-1])
