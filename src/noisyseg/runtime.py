"""How a run uses the machine: processes, precision, matmul convolutions, malloc, threads.

**Processes.** The losses, the key queue and the samplers reach the other training processes
through :func:`gather`, :func:`gather_no_grad`, :func:`all_reduce_sum`, :func:`rank` and
:func:`world_size`, which do nothing without an initialised process group (:func:`gather` is the
identity, :func:`rank` 0, :func:`world_size` 1), so the same code runs in one CPU process (tests,
the demo) and under DDP. Under DDP all ranks call them collectively with tensors of the same shape
(all_gather does not pad); the tasks use ``drop_last=True`` for the contrastive data for that
reason. :func:`gather` keeps gradients: in backward each shard's gradient is summed across ranks
and every rank gets the sum for its own shard, so a loss that uses negatives from other ranks
trains the local encoder as if the whole global batch were here (vissl ``gather_from_all`` and
``GatherLayer``; lightly ``utils/dist.py``); with DDP averaging parameter gradients, this is the
gradient of the mean of the ranks' losses. It is written here rather than taken from
``torch.distributed.nn.functional.all_gather``, which torch 2.14 deprecates in favour of a private
module. :func:`gather_no_grad` is MoCo's ``concat_all_gather``; :func:`all_reduce_sum` sums DINO's
center.

**The acceleration layer.** Precision is the Trainer's ``precision``, chosen for the machine; the
switch :class:`Acceleration` (``mode="auto"``, the default, ``"on"`` or ``"off"``) adds what pays
off at that precision on that device:

* **precision** — :func:`auto_precision` is the Trainer's default wherever noisyseg builds one
  (``noisyseg fit``, sweeps, the demo): ``bf16-mixed`` on CPUs with AMX or AVX-512-BF16 (oneDNN's
  bf16 kernels; the tasks' ``channels_last`` gives them channels-last tensors), mixed precision on
  CUDA (bf16 where supported), ``32-true`` elsewhere. ``--trainer.precision 32-true`` forces fp32.
  Losses state their own precision once, with :func:`fp32_forward`: floating tensor arguments are
  cast to fp32 (differentiably: a bf16 input gets a bf16 gradient) and autocast is off inside, so
  logits, softmax and similarities are fp32 and the loss is an fp32 scalar. Why: bf16 keeps 8
  significant bits, so a logit of 1/T = 5 moves in steps of 0.03 and a softmax over a few classes
  loses the small probabilities.
* **matmul convolutions** (switched) — on a CPU run at bf16 precision on a CPU with AMX (``auto``;
  ``on``: any CPU), the convolutions of the task's networks (:data:`NETWORKS`: smp encoders and
  segmentation models, :class:`~noisyseg.models.networks.FCN`, their momentum copies included) become
  :class:`SmallMapConv2d` (:func:`use_matmul_convs`). Projection heads keep torch's convolution.
  Parameters (the same tensors, so an optimiser built before holds them still), buffers and
  state-dict names do not change, so checkpoints and exported encoder files are the same with and
  without; converting twice changes nothing.
* **malloc** (switched) — when a fit starts on the CPU, glibc malloc keeps freed activation-sized
  blocks (:func:`keep_freed_memory`; ``NOISYSEG_MALLOC=system`` leaves malloc alone).

Model builders return plain torch / smp modules; :class:`Acceleration` converts the task's
networks when a Trainer runs it, and every :class:`~noisyseg.tasks.base.BaseTask` adds
``Acceleration()`` to a Trainer that has none. ``benchmarks/bench_moco.py`` and
``benchmarks/bench_unet.py`` (``make bench``; ``--system-malloc`` for glibc's defaults) measure
the steps these settings are for; the measurements behind the rules below are in
``benchmarks/HISTORY.md``.

**Why matmul convolutions.** With oneDNN's bf16 kernels, convolutions whose output map is tiny
(ResNet layer 4 at 128 px, the size the MoCo and UNet benchmarks train at: 4x4) are slow in all
three passes, the weight gradient most. The same convolution as ``im2col(x) @ W^T`` (forward),
``col2im(grad_y @ W)`` (input gradient) and ``grad_y^T @ im2col(x)`` (weight gradient) is faster
there with AMX; at 8x8 maps the im2col copy competes for memory bandwidth and the matmul loses or
breaks even, so the limit is 4x4 (:data:`MAX_OUTPUT_PIXELS`). On a CPU with AVX-512-BF16 but no AMX
the whole MoCo and UNet steps were not faster with them, so ``auto`` leaves them off there. No
library offers a switch for it.
:class:`SmallMapConv2d` takes the matmul route only for a call on the CPU, in bfloat16 (autocast
or bf16 input), with groups 1, no dilation, zero padding and an output of at most
:data:`MAX_OUTPUT_PIXELS` pixels, with or without gradients (the MoCo key encoder runs under
``no_grad``); everywhere else it is a plain :class:`torch.nn.Conv2d`. The call itself decides,
because the same module also runs outside the training's autocast (fp32 evaluation, analysis).

**Why malloc by hand** (:func:`keep_freed_memory`: applied once per process; it returns whether the
settings are in force, ``False`` on a non-glibc platform, when ``mallopt`` refuses a value, or with
``NOISYSEG_MALLOC=system``). A CPU training step allocates and frees dozens of 1-17 MB tensors
(activations, their gradients, im2col buffers). glibc serves blocks above its mmap threshold with
fresh ``mmap`` calls and trims the top of the heap after large frees, so the next step faults every
page in again and the kernel zeroes it. Caching allocators (jemalloc, tcmalloc; PyTorch's CPU
performance guide recommends preloading one) avoid this, but need ``LD_PRELOAD`` before Python
starts. ``mallopt`` does the same for glibc at run time: mmap threshold 32 MiB (glibc's largest),
trim threshold 1 GiB, top pad 64 MiB. Results are unchanged; the process may keep up to 1 GiB of
freed heap resident. ``python benchmarks/run_all.py --only moco --system-malloc`` measures the
step without it.

**Threads.** :func:`set_threads` sets torch's compute threads per process (``--threads``); its
default, :func:`default_threads`, is ``OMP_NUM_THREADS`` when set (the user's own choice), else the
physical cores available (:func:`physical_cores`: the CPU affinity, one per core)
shared out over the training processes, at least 1. Hyper-threads share a core's floating-point
units, so a compute thread per logical CPU gains nothing and two processes of that many threads
each spin against each other.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
import torch.nn.functional as F
from segmentation_models_pytorch.base import SegmentationModel
from segmentation_models_pytorch.encoders._base import EncoderMixin
from torch import Tensor, nn

from noisyseg.models.networks import FCN

# ----------------------------------------------------------------------------- processes


def is_dist() -> bool:
    """Whether a ``torch.distributed`` process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """Rank of this process, 0 without a process group."""
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    """Number of processes, 1 without a process group."""
    return dist.get_world_size() if is_dist() else 1


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums each shard's gradient over ranks (vissl ``GatherLayer``)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.n = x.shape[0]
        return torch.cat(parts, dim=0)  # [W*N, ...]

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()  # [W*N, ...]
        dist.all_reduce(grad)  # every rank's loss used every shard
        start = dist.get_rank() * ctx.n
        return grad[start : start + ctx.n]  # [N, ...] this rank's shard


def gather(x: Tensor) -> Tensor:
    """``x [N, ...]`` of every rank (same shape) -> ``[world_size * N, ...]`` in rank order, with gradients."""
    return _GatherWithGrad.apply(x) if world_size() > 1 else x  # [W*N, ...]


@torch.no_grad()
def gather_no_grad(x: Tensor) -> Tensor:
    """``x [N, ...]`` of every rank (same shape) -> ``[world_size * N, ...]`` in rank order, detached."""
    if world_size() == 1:
        return x.detach()
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    return torch.cat(parts, dim=0)  # [W*N, ...]


@torch.no_grad()
def all_reduce_sum(x: Tensor) -> Tensor:
    """A new tensor holding the sum of ``x`` (any shape, the same on every rank) over ranks, detached."""
    out = x.detach().clone()
    if world_size() > 1:
        dist.all_reduce(out)
    return out


# ----------------------------------------------------------------------------- precision


@functools.lru_cache(maxsize=2)
def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU's feature flags: the ``flags`` lines of ``cpuinfo`` (read from ``/proc/cpuinfo`` when
    None; empty where there is none)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return frozenset()
    return frozenset(w for ln in cpuinfo.splitlines() if ln.startswith("flags") for w in ln.split(":", 1)[1].split())


def cpu_has_fast_bf16() -> bool:
    """True when the CPU has bf16 matmul units: AMX-BF16 or AVX512-BF16."""
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


def cpu_has_amx() -> bool:
    """True when the CPU has AMX-BF16 tiles (Intel Sapphire Rapids and later)."""
    return "amx_bf16" in cpu_flags()


def auto_precision() -> str:
    """Lightning precision string for this machine: ``bf16-mixed`` where bf16 is fast, else ``32-true``."""
    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_has_fast_bf16() else "32-true"


def resolve_precision(precision: str | int | None) -> str | int:
    """``None``/``"auto"`` -> :func:`auto_precision`; anything else passes through."""
    if precision is None or precision == "auto":
        return auto_precision()
    return precision


def _fp32(value: Any) -> Any:
    return value.float() if isinstance(value, torch.Tensor) and value.is_floating_point() else value


def fp32_forward(forward: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Decorate a loss's ``forward``: it runs in fp32 whatever autocast says (see the module docstring)."""

    @functools.wraps(forward)
    def run(self: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        args, kwargs = tuple(_fp32(a) for a in args), {k: _fp32(v) for k, v in kwargs.items()}
        device = next((a.device.type for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), "cpu")
        with torch.autocast(device_type=device, enabled=False):
            return forward(self, *args, **kwargs)

    return run


# ----------------------------------------------------------------------------- matmul convolutions

MAX_OUTPUT_PIXELS = 16  # 4x4: at 8x8 the matmul route loses or breaks even (module docstring)


def _out_size(hw: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int],
              padding: tuple[int, int]) -> tuple[int, int]:
    """Output ``(Ho, Wo)`` of a convolution without dilation."""
    return tuple((n + 2 * p - k) // s + 1 for n, k, s, p in zip(hw, kernel, stride, padding))


def _im2col(x: Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]) -> Tensor:
    """``[N, C, H, W] -> [N*Ho*Wo, kh*kw*C]``: columns in channels-last weight order ``[K, kh, kw, C]``."""
    ph, pw = padding
    xl = F.pad(x, (pw, pw, ph, ph)).permute(0, 2, 3, 1)  # N x H' x W' x C (free for channels-last)
    patches = xl.unfold(1, kernel[0], stride[0]).unfold(2, kernel[1], stride[1])  # N x Ho x Wo x C x kh x kw
    # channels innermost: the copy moves runs of C contiguous values of a channels-last input
    return patches.permute(0, 1, 2, 4, 5, 3).reshape(-1, kernel[0] * kernel[1] * x.shape[1])


def _col2im(cols: Tensor, shape: torch.Size, out_hw: tuple[int, int], kernel: tuple[int, int],
            stride: tuple[int, int], padding: tuple[int, int]) -> Tensor:
    """Adjoint of :func:`_im2col`: ``[N*Ho*Wo, kh*kw*C] -> [N, C, H, W]`` (channels-last), overlaps summed."""
    n, c, h, w = shape
    (ho, wo), (kh, kw), (sh, sw), (ph, pw) = out_hw, kernel, stride, padding
    patches = cols.view(n, ho, wo, kh, kw, c)
    # overlapping patches summed in fp32 and rounded once, as oneDNN's input gradient is
    acc = cols.new_zeros((n, h + 2 * ph, w + 2 * pw, c), dtype=torch.float32)  # N x H' x W' x C
    for i in range(kh):
        for j in range(kw):
            acc[:, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw] += patches[:, :, :, i, j]
    crop = acc[:, ph : ph + h, pw : pw + w].to(cols.dtype)  # N x H x W x C
    return crop.permute(0, 3, 1, 2)  # N x C x H x W, channels-last strides


class _MatmulConv(torch.autograd.Function):
    """A convolution as matmuls: forward ``im2col(x) @ W^T``, input gradient ``col2im(gy @ W)``,
    weight gradient ``gy^T @ im2col(x)``; ``W`` as ``[K, kh*kw*C]``, a view of a channels-last weight."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, b: Tensor | None, stride: tuple[int, int], padding: tuple[int, int]) -> Tensor:
        k, out_hw = w.shape[0], _out_size(x.shape[2:], w.shape[2:], stride, padding)
        cols = _im2col(x, w.shape[2:], stride, padding)  # kept for the weight gradient: no second im2col
        # the matmul writes straight into a channels-last [N, K, Ho, Wo] tensor: no copy, and the
        # output is no view (a following in-place op, e.g. ReLU(inplace=True), must be allowed)
        y = torch.empty((x.shape[0], k, *out_hw), dtype=cols.dtype, device=cols.device, memory_format=torch.channels_last)
        rows = y.permute(0, 2, 3, 1).view(-1, k)  # N*Ho*Wo x K, y's own memory
        wm = w.permute(0, 2, 3, 1).reshape(k, -1)  # K x kh*kw*C
        if b is None:
            torch.mm(cols, wm.t(), out=rows)
        else:
            torch.addmm(b, cols, wm.t(), out=rows)
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
            wm = w.permute(0, 2, 3, 1).reshape(k, -1)  # K x kh*kw*C
            gx = _col2im(g_rows @ wm, ctx.x_shape, gy.shape[2:], (kh, kw), ctx.stride, ctx.padding)
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
        """The compute dtype (bf16) when the matmul route applies to ``x``, else ``None``."""
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        if (x.device.type != "cpu" or dtype != torch.bfloat16 or self.groups != 1 or self.dilation != (1, 1)
                or self.padding_mode != "zeros" or isinstance(self.padding, str)):
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


NETWORKS = (EncoderMixin, SegmentationModel, FCN)
"""Module types whose convolutions :func:`use_matmul_convs` converts (an smp ``Unet`` with its
decoder, an smp encoder alone, the FCN probe); projection heads are none of them."""


def use_matmul_convs(module: nn.Module) -> nn.Module:
    """Make each plain ``Conv2d`` of every :data:`NETWORKS` in ``module`` a :class:`SmallMapConv2d`; returns ``module``."""
    for net in [m for m in module.modules() if isinstance(m, NETWORKS)]:
        for conv in net.modules():
            if type(conv) is nn.Conv2d:
                conv.__class__ = SmallMapConv2d  # same attributes and state; only forward differs
    return module


# ----------------------------------------------------------------------------- memory

MALLOC_ENV = "NOISYSEG_MALLOC"
# glibc <malloc.h> mallopt parameters
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
MALLOC_SETTINGS = {  # the largest mmap threshold glibc accepts on 64-bit is 32 MiB
    "mmap_threshold": (_M_MMAP_THRESHOLD, 32 << 20),
    "trim_threshold": (_M_TRIM_THRESHOLD, 1 << 30),
    "top_pad": (_M_TOP_PAD, 64 << 20),
}


@functools.cache  # process-wide settings: the first call decides, later calls report it
def keep_freed_memory() -> bool:
    """Make glibc malloc keep freed activation-sized blocks (module docstring); whether the settings hold."""
    if os.environ.get(MALLOC_ENV, "").lower() == "system" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt  # the process's own C library: glibc, which has mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in MALLOC_SETTINGS.values())


# ----------------------------------------------------------------------------- the switch

ACCELERATION_MODES = ("auto", "on", "off")


class Acceleration(L.Callback):
    """The acceleration switch of a run: matmul small-map convolutions and malloc settings.

    ``mode="auto"``: on a run whose root device is a CPU with AMX and whose precision is bf16, the
    task's networks get :func:`use_matmul_convs` (measured faster there; on CPUs without AMX they
    were not, ``benchmarks/HISTORY.md``); when a fit starts on the CPU, :func:`keep_freed_memory`.
    ``mode="on"``: the same, with matmul convolutions on any CPU at bf16 (to measure them on
    another CPU). ``mode="off"``: neither, the networks stay plain torch modules (precision is the
    Trainer's own ``precision``).

    Every :class:`~noisyseg.tasks.base.BaseTask` adds ``Acceleration()`` to a Trainer without one,
    so every way of running a task gets ``auto``. To choose another mode, give the Trainer this callback::

        trainer:
          callbacks:
            - class_path: noisyseg.runtime.Acceleration
              init_args: {mode: off}

    The networks are converted at ``setup`` (before the optimiser is built: networks made in
    ``__init__``, momentum copies included) and again when each loop starts (networks a task
    makes in ``configure_model``; the conversion keeps every parameter tensor, so the optimiser
    is unaffected).

    Args:
        mode: ``"auto"``, ``"on"`` or ``"off"``; ``True`` / ``False`` mean ``"on"`` / ``"off"``
            (YAML reads an unquoted ``on`` as ``true`` and ``off`` as ``false``).

    Raises:
        ValueError: any other ``mode``.
    """

    def __init__(self, mode: str | bool = "auto") -> None:
        if isinstance(mode, bool):  # YAML's unquoted on/off, true/false
            mode = "on" if mode else "off"
        if mode not in ACCELERATION_MODES:
            raise ValueError(f"Acceleration mode={mode!r}; valid: {list(ACCELERATION_MODES)}")
        self.mode = mode

    def matmul_convs_apply(self, trainer: L.Trainer) -> bool:
        """Whether this run's networks get matmul convolutions: on the CPU at bf16, ``on``, or ``auto`` with AMX."""
        bf16 = str(trainer.precision).startswith("bf16")
        wanted = self.mode == "on" or (self.mode == "auto" and cpu_has_amx())
        return wanted and trainer.strategy.root_device.type == "cpu" and bf16

    def _convert(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str | None = None) -> None:
        if self.matmul_convs_apply(trainer):
            use_matmul_convs(pl_module)

    setup = on_validation_start = on_test_start = on_predict_start = _convert  # setup and each loop's start

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._convert(trainer, pl_module)
        if self.mode != "off" and trainer.strategy.root_device.type == "cpu":
            keep_freed_memory()  # no page faults for re-allocated activations (NOISYSEG_MALLOC=system: off)


# ----------------------------------------------------------------------------- threads


def physical_cores(sysfs: str | Path = "/sys/devices/system/cpu") -> int:
    """Physical cores this process may run on: the CPUs of its affinity, one per core.

    Hyper-threads of one core list the same ``cpu<N>/topology/thread_siblings_list`` under
    ``sysfs`` (Linux; any architecture); a CPU without that file (other systems) counts as a core.
    """
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))

    def core(cpu: int) -> str:
        try:
            return Path(sysfs, f"cpu{cpu}", "topology", "thread_siblings_list").read_text().strip()
        except OSError:
            return f"cpu {cpu}"

    return max(1, len({core(c) for c in allowed}))


THREADS_ENV = "OMP_NUM_THREADS"


def default_threads(processes: int = 1) -> int:
    """``OMP_NUM_THREADS`` when set, else :func:`physical_cores` shared out over ``processes``, at least 1."""
    env = os.environ.get(THREADS_ENV, "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, physical_cores() // max(1, processes))


def set_threads(threads: int | None = None, processes: int = 1) -> int:
    """``torch.set_num_threads`` to ``threads``, or :func:`default_threads` when None; returns it.

    Raises:
        ValueError: ``threads`` is not a positive integer.
    """
    if threads is None:
        threads = default_threads(processes)
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads={threads!r} must be a positive integer (torch compute threads per process)")
    torch.set_num_threads(threads)
    return threads
