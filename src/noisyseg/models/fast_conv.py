"""A convolution computed as matmuls when its output map is small (CPU, bf16).

Why by hand: with oneDNN's bf16 kernels, convolutions whose output map is tiny (ResNet layer 4 at
128 px, the size the MoCo and UNet benchmarks train at: 4x4) are slow in all three passes, the
weight gradient most. The same convolution as ``im2col(x) @ W^T`` (forward), ``col2im(grad_y @ W)``
(input gradient) and ``grad_y^T @ im2col(x)`` (weight gradient) is faster there; at 8x8 maps the
im2col copy competes for memory bandwidth and the matmul loses or breaks even, so the limit is
4x4 (:data:`MAX_OUTPUT_PIXELS`). No library offers a switch for it.

The rule: :class:`SmallMapConv2d` takes the matmul route only for a call on the CPU, in
bfloat16 (autocast or bf16 input), with groups 1, no dilation, zero padding and an output of at
most :data:`MAX_OUTPUT_PIXELS` pixels, with or without gradients (the MoCo key encoder runs under
``no_grad``); everywhere else it is a plain :class:`torch.nn.Conv2d` (same parameters, same
state-dict names). The call itself decides, because the same module also runs outside the
training's autocast (fp32 evaluation, analysis). Which modules are converted, and when, is
decided by the acceleration switch (:class:`noisyseg.runtime.Acceleration`), not here.
``benchmarks/bench_moco.py`` and ``benchmarks/bench_unet.py`` (``make bench``) measure the
training steps it is for; the measurements behind the rule are in ``benchmarks/HISTORY.md``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MAX_OUTPUT_PIXELS", "SmallMapConv2d", "use_small_map_convs"]

MAX_OUTPUT_PIXELS = 16  # 4x4: at 8x8 the matmul route loses or breaks even (module docstring)


def _im2col(x: Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]) -> Tensor:
    """``[N, C, H, W] -> [N*Ho*Wo, kh*kw*C]``: columns in channels-last weight order ``[K, kh, kw, C]``.

    Channels innermost, so the copy moves runs of ``C`` contiguous values of a channels-last input.
    """
    ph, pw = padding
    xl = F.pad(x, (pw, pw, ph, ph)).permute(0, 2, 3, 1)  # N x H' x W' x C (free for channels-last)
    patches = xl.unfold(1, kernel[0], stride[0]).unfold(2, kernel[1], stride[1])  # N x Ho x Wo x C x kh x kw
    return patches.permute(0, 1, 2, 4, 5, 3).reshape(-1, kernel[0] * kernel[1] * x.shape[1])


def _col2im(cols: Tensor, shape: torch.Size, out_hw: tuple[int, int], kernel: tuple[int, int],
            stride: tuple[int, int], padding: tuple[int, int]) -> Tensor:
    """Adjoint of :func:`_im2col`: ``[N*Ho*Wo, kh*kw*C] -> [N, C, H, W]`` (channels-last), overlaps summed.

    The overlapping patches are summed in fp32 and rounded once, as oneDNN's input gradient is.
    """
    n, c, h, w = shape
    (ho, wo), (kh, kw), (sh, sw), (ph, pw) = out_hw, kernel, stride, padding
    patches = cols.view(n, ho, wo, kh, kw, c)
    acc = cols.new_zeros((n, h + 2 * ph, w + 2 * pw, c), dtype=torch.float32)  # N x H' x W' x C
    for i in range(kh):
        for j in range(kw):
            acc[:, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw] += patches[:, :, :, i, j]
    crop = acc[:, ph : ph + h, pw : pw + w].to(cols.dtype)  # N x H x W x C
    return crop.permute(0, 3, 1, 2)  # N x C x H x W, channels-last strides


def _weight_matrix(w: Tensor) -> Tensor:
    """``[K, C, kh, kw] -> [K, kh*kw*C]`` (a view when the weight is channels-last)."""
    return w.permute(0, 2, 3, 1).reshape(w.shape[0], -1)


def _out_size(hw: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int],
              padding: tuple[int, int]) -> tuple[int, int]:
    """Output ``(Ho, Wo)`` of a convolution without dilation."""
    return tuple((n + 2 * p - k) // s + 1 for n, k, s, p in zip(hw, kernel, stride, padding))


def _conv_matmul(cols: Tensor, w: Tensor, b: Tensor | None, n: int, out_hw: tuple[int, int]) -> Tensor:
    """``im2col(x) @ W^T (+ b)`` from the columns ``[N*Ho*Wo, kh*kw*C]``: ``[N, K, Ho, Wo]`` channels-last."""
    k = w.shape[0]
    wm = _weight_matrix(w)
    # the matmul writes straight into a channels-last [N, K, Ho, Wo] tensor: no copy, and the
    # output is no view (a following in-place op, e.g. ReLU(inplace=True), must be allowed)
    y = torch.empty((n, k, *out_hw), dtype=cols.dtype, device=cols.device, memory_format=torch.channels_last)
    rows = y.permute(0, 2, 3, 1).view(-1, k)  # N*Ho*Wo x K, y's own memory
    if b is None:
        torch.mm(cols, wm.t(), out=rows)
    else:
        torch.addmm(b, cols, wm.t(), out=rows)
    return y


class _MatmulConv(torch.autograd.Function):
    """A convolution as matmuls: forward ``im2col(x) @ W^T``, input gradient ``col2im(gy @ W)``,
    weight gradient ``gy^T @ im2col(x)``."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, b: Tensor | None, stride: tuple[int, int], padding: tuple[int, int]) -> Tensor:
        cols = _im2col(x, w.shape[2:], stride, padding)  # kept for the weight gradient: no second im2col
        y = _conv_matmul(cols, w, b, x.shape[0], _out_size(x.shape[2:], w.shape[2:], stride, padding))
        ctx.save_for_backward(cols, w)
        ctx.x_shape, ctx.stride, ctx.padding, ctx.has_bias = x.shape, stride, padding, b is not None
        return y

    @staticmethod
    def backward(ctx, gy: Tensor):
        cols, w = ctx.saved_tensors
        k, c, kh, kw = w.shape
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            g_rows = gy.permute(0, 2, 3, 1).reshape(-1, k)  # N*Ho*Wo x K (a view for channels-last gy)
            gx = _col2im(g_rows @ _weight_matrix(w), ctx.x_shape, gy.shape[2:], (kh, kw), ctx.stride, ctx.padding)
        if ctx.needs_input_grad[1]:
            # K x N*Ho*Wo row-major: a faster GEMM than on the transposed view (bf16, AMX)
            g = gy.permute(1, 0, 2, 3).reshape(k, -1)  # K x N*Ho*Wo
            # K x kh*kw*C is the channels-last layout of the weight: no copy when accumulating it
            gw = (g @ cols).view(k, kh, kw, c).permute(0, 3, 1, 2)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = gy.sum(dim=(0, 2, 3))
        return gx, gw, gb, None, None


class SmallMapConv2d(nn.Conv2d):
    """:class:`torch.nn.Conv2d` computed as matmuls for small bf16 CPU output maps (see the module)."""

    def _matmul_route(self, x: Tensor) -> torch.dtype | None:
        """The compute dtype when the matmul route applies to ``x``, else ``None``."""
        if x.device.type != "cpu":
            return None
        if self.groups != 1 or self.dilation != (1, 1) or self.padding_mode != "zeros" or isinstance(self.padding, str):
            return None
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        if dtype != torch.bfloat16:
            return None
        ho, wo = _out_size(x.shape[2:], self.kernel_size, self.stride, self.padding)
        return dtype if ho * wo <= MAX_OUTPUT_PIXELS else None

    def forward(self, x: Tensor) -> Tensor:
        dtype = self._matmul_route(x)
        if dtype is None:
            return super().forward(x)
        # the casts autocast would make (differentiable: fp32 master weights get fp32 gradients)
        b = None if self.bias is None else self.bias.to(dtype)
        return _MatmulConv.apply(x.to(dtype), self.weight.to(dtype), b, self.stride, self.padding)


def use_small_map_convs(module: nn.Module) -> nn.Module:
    """Turn every plain :class:`torch.nn.Conv2d` in ``module`` into a :class:`SmallMapConv2d`, in place.

    Parameters, buffers and their names are unchanged (checkpoints and exports are unaffected);
    a convolution only takes the matmul route when its call meets the conditions above. Called
    by the acceleration layer (:func:`noisyseg.runtime.use_matmul_convs`), not by model builders.
    """
    for child in module.children():
        if type(child) is nn.Conv2d:
            child.__class__ = SmallMapConv2d  # same attributes and state; only forward differs
        else:
            use_small_map_convs(child)
    return module
