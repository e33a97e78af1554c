"""runtime.SmallMapConv2d: the matmul convolution and its gradients equal oneDNN's, and apply only where meant."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from noisyseg.models.networks import build_encoder
from noisyseg.runtime import SmallMapConv2d, _MatmulConv, use_matmul_convs


def small_map(conv: nn.Conv2d) -> SmallMapConv2d:
    """A copy of ``conv`` made a :class:`SmallMapConv2d` the way :func:`use_matmul_convs` makes a network's."""
    fast = copy.deepcopy(conv)
    fast.__class__ = SmallMapConv2d
    return fast


@pytest.mark.parametrize(
    ("cin", "cout", "kernel", "stride", "padding", "size", "bias"),
    [(8, 6, 3, 1, 1, 4, False), (8, 6, 3, 2, 1, 8, True), (5, 7, 1, 2, 0, 7, False), (4, 4, (3, 1), 1, (1, 0), 3, True)],
)
def test_matmul_route_gives_the_gradients_of_the_convolution(cin, cout, kernel, stride, padding, size, bias) -> None:
    torch.manual_seed(0)
    ref = nn.Conv2d(cin, cout, kernel, stride, padding, bias=bias)
    fast = small_map(ref)
    x = torch.randn(3, cin, size, size).contiguous(memory_format=torch.channels_last)
    x_ref, x_fast = x.clone().requires_grad_(), x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fast._matmul_route(x_fast) is torch.bfloat16  # every case here has <= 16 output pixels
        y_ref, y_fast = ref(x_ref), fast(x_fast)
    torch.testing.assert_close(y_fast, y_ref)
    g = torch.randn_like(y_ref.float())
    y_ref.float().backward(g)
    y_fast.float().backward(g)
    # bf16 products, fp32 accumulation on both routes: equal to bf16 rounding
    torch.testing.assert_close(fast.weight.grad, ref.weight.grad, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(x_fast.grad, x_ref.grad, rtol=2e-2, atol=2e-2)
    assert x_fast.grad.is_contiguous(memory_format=torch.channels_last)
    assert fast.weight.grad.dtype == torch.float32
    if bias:
        torch.testing.assert_close(fast.bias.grad, ref.bias.grad, rtol=2e-2, atol=2e-2)


def test_matmul_route_without_gradients_matches_the_convolution() -> None:
    """The momentum encoder runs under ``no_grad``: its small maps take the matmul forward too."""
    torch.manual_seed(0)
    ref = nn.Conv2d(16, 8, 3, 2, 1)
    fast = small_map(ref)
    x = torch.randn(4, 16, 8, 8).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert fast._matmul_route(x) is torch.bfloat16
        y_ref, y_fast = ref(x), fast(x)
    assert y_fast.dtype == torch.bfloat16 and y_fast.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y_fast, y_ref)


def test_matmul_route_is_taken_only_for_tiny_bf16_maps(monkeypatch) -> None:
    conv = SmallMapConv2d(4, 4, 3, padding=1)
    small, large = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 8, 8)
    assert conv._matmul_route(small) is None  # fp32: oneDNN as is
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv._matmul_route(small) is torch.bfloat16
        assert conv._matmul_route(large) is None  # 64 output pixels
        with torch.no_grad():
            assert conv._matmul_route(small) is torch.bfloat16  # inference too (the key encoder)
    dilated = SmallMapConv2d(4, 4, 3, padding=2, dilation=2)
    grouped = SmallMapConv2d(4, 4, 3, padding=1, groups=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert dilated._matmul_route(small) is None and grouped._matmul_route(small) is None
    calls = []
    original = _MatmulConv.apply
    monkeypatch.setattr(_MatmulConv, "apply", lambda *a: calls.append(a) or original(*a))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        conv(small).sum().backward()
        conv(large).sum().backward()
    assert len(calls) == 1  # the 4x4 call only


def test_encoders_keep_their_state_dict_names() -> None:
    enc = use_matmul_convs(build_encoder("resnet18"))
    assert isinstance(enc.layer4[0].conv1, SmallMapConv2d)
    plain = copy.deepcopy(enc)
    for m in plain.modules():
        if isinstance(m, SmallMapConv2d):
            m.__class__ = nn.Conv2d
    assert list(enc.state_dict()) == list(plain.state_dict())
    plain.load_state_dict(enc.state_dict(), strict=True)


@pytest.mark.parametrize("decoder", ["unet", "deeplabv3plus", "pspnet", "fcn"])
def test_segmentation_models_take_the_route_and_load_into_plain_smp(decoder, monkeypatch) -> None:
    """smp builds its own encoder: the acceleration layer converts the whole model, keeping every state-dict name."""
    import segmentation_models_pytorch as smp

    from noisyseg.models.networks import build_segmentation_model

    model = use_matmul_convs(build_segmentation_model(decoder, "resnet18", 3, 2))
    assert isinstance(model.encoder.layer4[1].conv1, SmallMapConv2d)
    assert not any(type(m) is nn.Conv2d for m in model.modules())
    if decoder != "fcn":
        plain = {"unet": smp.Unet, "deeplabv3plus": smp.DeepLabV3Plus, "pspnet": smp.PSPNet}[decoder]
        plain(encoder_name="resnet18", encoder_weights=None, classes=2).load_state_dict(model.state_dict(), strict=True)
    calls = []
    original = _MatmulConv.apply
    monkeypatch.setattr(_MatmulConv, "apply", lambda *a: calls.append(a) or original(*a))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        # layer 4 at 4x4 (PSPNet: its pyramid's 1x1-6x6 pooled maps, followed by in-place ReLUs)
        model(torch.randn(2, 3, 128, 128)).float().mean().backward()
    assert calls
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
