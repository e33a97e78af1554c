"""How a run uses the machine: precision, matmul convolutions, malloc, threads — decided here.

The acceleration layer. Precision is the Trainer's ``precision``, chosen for the machine; the
switch :class:`Acceleration` (``mode="auto"``, the default, or ``"off"``) adds what pays off at
that precision on that device:

* **precision** — :func:`auto_precision` is the Trainer's default wherever noisyseg builds one
  (``noisyseg fit``, sweeps, the demo): ``bf16-mixed`` on CPUs with AMX or AVX-512-BF16 (oneDNN's
  bf16 kernels; the tasks' ``channels_last`` gives them channels-last tensors), mixed precision on
  CUDA (bf16 where supported), ``32-true`` elsewhere. ``--trainer.precision 32-true`` forces fp32.
  Losses state their own precision once, with :func:`fp32_forward`.
* **matmul convolutions** (switched) — on a CPU run at bf16 precision, the convolutions of the task's
  networks (smp encoders and segmentation models, :class:`~noisyseg.models.segmentation.FCN`,
  their momentum copies included) become :class:`~noisyseg.models.fast_conv.SmallMapConv2d`,
  which computes maps of at most 4x4 pixels as matmuls (:func:`use_matmul_convs`). Projection
  heads keep torch's convolution. Parameters, buffers and state-dict names do not change, so
  checkpoints and exported encoder files are the same with and without.
* **malloc** (switched) — when a fit starts on the CPU, glibc malloc keeps freed activation-sized blocks
  (:func:`keep_freed_memory`; ``NOISYSEG_MALLOC=system`` leaves malloc alone).

Model builders return plain torch / smp modules; :class:`Acceleration` converts the task's
networks when a Trainer runs it, and every :class:`~noisyseg.tasks.base.BaseTask` adds
``Acceleration()`` to a Trainer that has none. ``benchmarks/bench_moco.py`` and
``benchmarks/bench_unet.py`` (``make bench``; ``--system-malloc`` for glibc's defaults) measure
the steps these settings are for.

:func:`set_threads` sets torch's compute threads per process (``--threads``); its default,
:func:`default_threads`, shares the physical cores out over the training processes.
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
from segmentation_models_pytorch.base import SegmentationModel
from segmentation_models_pytorch.encoders._base import EncoderMixin
from torch import nn

from noisyseg.models.fast_conv import use_small_map_convs
from noisyseg.models.segmentation import FCN

# ----------------------------------------------------------------------------- precision


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """True when the CPU advertises AMX-BF16 or AVX512-BF16 (read from /proc/cpuinfo on Linux)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


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
    """Decorate a loss's ``forward``: it runs in fp32 whatever autocast says.

    Floating tensor arguments are cast to fp32 (differentiably: a bf16 input gets a bf16
    gradient) and autocast is off inside, so logits, softmax and similarities are fp32 and the
    loss is an fp32 scalar. Why: bf16 keeps 8 significant bits, so a logit of 1/T = 5 moves in
    steps of 0.03 and a softmax over a few classes loses the small probabilities.
    """

    @functools.wraps(forward)
    def run(self: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        args, kwargs = tuple(_fp32(a) for a in args), {k: _fp32(v) for k, v in kwargs.items()}
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        device = tensors[0].device.type if tensors else "cpu"
        with torch.autocast(device_type=device, enabled=False):
            return forward(self, *args, **kwargs)

    return run


# ----------------------------------------------------------------------------- convolutions

NETWORKS = (EncoderMixin, SegmentationModel, FCN)
"""Module types whose convolutions :func:`use_matmul_convs` converts (an smp ``Unet`` with its
decoder, an smp encoder alone, the FCN probe); projection heads are none of them."""


def use_matmul_convs(module: nn.Module) -> nn.Module:
    """Give every network inside ``module`` (:data:`NETWORKS`) matmul small-map convolutions, in place.

    Each plain :class:`torch.nn.Conv2d` of such a network becomes a
    :class:`~noisyseg.models.fast_conv.SmallMapConv2d`: same parameters (the same tensors, so an
    optimiser built before holds them still), buffers and state-dict names; only its forward
    differs, and only under the conditions that module states. Calling it again changes nothing.

    Returns:
        ``module``.
    """
    for sub in module.modules():
        if isinstance(sub, NETWORKS):
            use_small_map_convs(sub)
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
    """Make glibc malloc keep freed activation-sized blocks for reuse (once per process).

    Why by hand: a CPU training step allocates and frees dozens of 1-17 MB tensors (activations,
    their gradients, im2col buffers). glibc serves blocks above its mmap threshold with fresh
    ``mmap`` calls and trims the top of the heap after large frees, so the next step faults every
    page in again and the kernel zeroes it. Caching allocators (jemalloc, tcmalloc; PyTorch's CPU
    performance guide recommends preloading one) avoid this, but need ``LD_PRELOAD`` before Python
    starts. ``mallopt`` does the same for glibc at run time: mmap threshold 32 MiB (glibc's
    largest), trim threshold 1 GiB, top pad 64 MiB. Results are unchanged; the process may keep up
    to 1 GiB of freed heap resident. ``python benchmarks/run_all.py --only moco --system-malloc``
    measures the step without it.

    Returns:
        ``True`` when the settings are in force (now or from an earlier call); ``False`` on a
        non-glibc platform, when ``mallopt`` refuses a value, or when ``NOISYSEG_MALLOC=system``.
    """
    if os.environ.get(MALLOC_ENV, "").lower() == "system" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in MALLOC_SETTINGS.values())


# ----------------------------------------------------------------------------- the switch

ACCELERATION_MODES = ("auto", "off")


class Acceleration(L.Callback):
    """The acceleration switch of a run: matmul small-map convolutions and malloc settings.

    ``mode="auto"``: on a run whose root device is the CPU and whose precision is bf16, the
    task's networks get :func:`use_matmul_convs`; when a fit starts on the CPU,
    :func:`keep_freed_memory`. ``mode="off"``: neither, the networks stay plain torch modules
    (precision is the Trainer's own ``precision``).

    Every :class:`~noisyseg.tasks.base.BaseTask` adds ``Acceleration()`` to a Trainer without one,
    so every way of running a task gets ``auto``. To switch it off, give the Trainer this callback::

        trainer:
          callbacks:
            - class_path: noisyseg.runtime.Acceleration
              init_args: {mode: off}

    The networks are converted at ``setup`` (before the optimiser is built: networks made in
    ``__init__``, momentum copies included) and again when each loop starts (networks a task
    makes in ``configure_model``; the conversion keeps every parameter tensor, so the optimiser
    is unaffected).

    Args:
        mode: ``"auto"`` or ``"off"``; ``True`` / ``False`` mean the same (YAML reads an unquoted
            ``off`` as ``false``).

    Raises:
        ValueError: any other ``mode``.
    """

    def __init__(self, mode: str | bool = "auto") -> None:
        if isinstance(mode, bool):
            mode = "auto" if mode else "off"
        if mode not in ACCELERATION_MODES:
            raise ValueError(f"Acceleration mode={mode!r}; valid: {list(ACCELERATION_MODES)}")
        self.mode = mode

    def matmul_convs_apply(self, trainer: L.Trainer) -> bool:
        """Whether this run's networks get matmul convolutions: ``auto``, on the CPU, at bf16."""
        bf16 = str(trainer.precision).startswith("bf16")
        return self.mode == "auto" and trainer.strategy.root_device.type == "cpu" and bf16

    def _convert(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.matmul_convs_apply(trainer):
            use_matmul_convs(pl_module)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._convert(trainer, pl_module)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._convert(trainer, pl_module)
        if self.mode == "auto" and trainer.strategy.root_device.type == "cpu":
            keep_freed_memory()  # no page faults for re-allocated activations (NOISYSEG_MALLOC=system: off)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._convert(trainer, pl_module)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._convert(trainer, pl_module)

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._convert(trainer, pl_module)


# ----------------------------------------------------------------------------- threads


def physical_cores(cpuinfo: str | None = None) -> int:
    """Physical cores this process may run on: CPU affinity, one per (socket, core) pair.

    Hyper-threads share a core's floating-point units, so a compute thread per logical CPU
    gains nothing and two processes of that many threads each spin against each other.

    Args:
        cpuinfo: the text of ``/proc/cpuinfo`` (read when None); where it names no cores
            (non-Linux), the logical CPUs available are counted instead.
    """
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    cores = set()
    for block in cpuinfo.split("\n\n"):
        fields = dict(line.split(":", 1) for line in block.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        if "processor" in fields and "core id" in fields and int(fields["processor"]) in allowed:
            cores.add((fields.get("physical id", "0"), fields["core id"]))
    return max(1, len(cores) or len(allowed))


THREADS_ENV = "OMP_NUM_THREADS"


def default_threads(processes: int = 1) -> int:
    """Torch compute threads per process that do not oversubscribe the machine.

    ``OMP_NUM_THREADS`` when set (the user's own choice); otherwise the physical cores available
    (:func:`physical_cores`) shared out over ``processes`` training processes, at least 1.
    """
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
