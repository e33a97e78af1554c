"""A convolution whose weight gradient is one matmul when its output map is tiny (CPU, bf16).

Why by hand: on this project's CPU (oneDNN in torch 2.14, bf16, AMX) the weight gradient of a
3x3 convolution with a 4x4 output map — ResNet layer 4 at 128 px, the size MoCo and the UNet
train at here — takes 3.3x its forward (512 -> 512 channels, batch 32: forward 6.2 ms, weight
gradient 20.3 ms), while the same gradient as ``im2col(x)^T @ grad_y`` takes 8.0 ms; at 7x7 and
above oneDNN is as fast or faster (``benchmarks/README.md`` lists the shapes measured). No
library offers a switch for it, so :class:`SmallMapConv2d` takes the matmul route only where it
was measured to win — CPU, bfloat16, groups 1, no dilation, an output of at most
:data:`MAX_OUTPUT_PIXELS` pixels — and is a plain :class:`torch.nn.Conv2d` everywhere else
(same parameters, same state-dict names, same forward).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MAX_OUTPUT_PIXELS", "SmallMapConv2d", "use_small_map_convs"]

MAX_OUTPUT_PIXELS = 16  # 4x4: the matmul won at 2x2 and 4x4 and lost at 7x7 and 8x8 (batch 16-64)


def _im2col(x: Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]) -> Tensor:
    """``[N, C, H, W] -> [N*Ho*Wo, C*kh*kw]``, columns ordered as a conv weight ``[K, C, kh, kw]``."""
    ph, pw = padding
    xl = F.pad(x, (pw, pw, ph, ph)).permute(0, 2, 3, 1)  # N x H' x W' x C (free for channels-last)
    patches = xl.unfold(1, kernel[0], stride[0]).unfold(2, kernel[1], stride[1])  # N x Ho x Wo x C x kh x kw
    return patches.reshape(-1, x.shape[1] * kernel[0] * kernel[1])


class _MatmulWeightGradConv(torch.autograd.Function):
    """``conv2d(x, w, b)`` forward; backward: oneDNN for the input gradient, a matmul for the weight's."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, b: Tensor | None, stride: tuple[int, int], padding: tuple[int, int]) -> Tensor:
        ctx.save_for_backward(x, w)
        ctx.stride, ctx.padding, ctx.has_bias = stride, padding, b is not None
        return F.conv2d(x, w, b, stride, padding)

    @staticmethod
    def backward(ctx, gy: Tensor):
        x, w = ctx.saved_tensors
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = torch.ops.aten.convolution_backward(
                gy, x, w, None, list(ctx.stride), list(ctx.padding), [1, 1], False, [0, 0], 1, [True, False, False]
            )[0]
        if ctx.needs_input_grad[1]:
            g = gy.permute(0, 2, 3, 1).reshape(-1, gy.shape[1])  # N*Ho*Wo x K
            cols = _im2col(x, tuple(w.shape[2:]), ctx.stride, ctx.padding)  # N*Ho*Wo x C*kh*kw
            gw = (g.t() @ cols).view(w.shape)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = gy.sum(dim=(0, 2, 3))
        return gx, gw, gb, None, None


class SmallMapConv2d(nn.Conv2d):
    """:class:`torch.nn.Conv2d` with the matmul weight gradient for tiny bf16 CPU output maps."""

    def _matmul_route(self, x: Tensor) -> torch.dtype | None:
        """The compute dtype when the matmul route applies to ``x``, else ``None``."""
        if not (torch.is_grad_enabled() and self.weight.requires_grad and x.device.type == "cpu"):
            return None
        if self.groups != 1 or self.dilation != (1, 1) or self.padding_mode != "zeros" or isinstance(self.padding, str):
            return None
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        if dtype != torch.bfloat16:
            return None
        ho = (x.shape[2] + 2 * self.padding[0] - self.kernel_size[0]) // self.stride[0] + 1
        wo = (x.shape[3] + 2 * self.padding[1] - self.kernel_size[1]) // self.stride[1] + 1
        return dtype if ho * wo <= MAX_OUTPUT_PIXELS else None

    def forward(self, x: Tensor) -> Tensor:
        dtype = self._matmul_route(x)
        if dtype is None:
            return super().forward(x)
        # the casts autocast would make (differentiable: fp32 master weights get fp32 gradients)
        b = None if self.bias is None else self.bias.to(dtype)
        return _MatmulWeightGradConv.apply(x.to(dtype), self.weight.to(dtype), b, self.stride, self.padding)


def use_small_map_convs(module: nn.Module) -> nn.Module:
    """Turn every plain :class:`torch.nn.Conv2d` in ``module`` into a :class:`SmallMapConv2d`, in place.

    Parameters, buffers and their names are unchanged (checkpoints and exports are unaffected);
    a convolution only takes the matmul route when its call meets the conditions above.
    """
    for name, child in list(module.named_children()):
        if type(child) is nn.Conv2d:
            child.__class__ = SmallMapConv2d  # same attributes and state; only forward differs
        else:
            use_small_map_convs(child)
    return module
