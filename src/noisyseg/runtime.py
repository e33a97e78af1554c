"""Where to run and at what precision: the fast path, chosen once.

On CPUs with AMX or AVX-512-BF16 (Sapphire Rapids and later), bf16 autocast with channels-last
tensors roughly doubles ResNet training speed over fp32 (oneDNN bf16 kernels); on CUDA, mixed
precision (bf16 where supported). Elsewhere fp32. ``precision="32-true"`` forces fp32 everywhere.
On the CPU, :func:`keep_freed_memory` stops glibc malloc from handing activation-sized blocks back
to the kernel after every step (set ``NOISYSEG_MALLOC=system`` to leave malloc alone).
:func:`set_threads` sets torch's compute threads per process (``--threads``); its default,
:func:`default_threads`, shares the physical cores out over the training processes.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
from pathlib import Path

import torch


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
    page in again and the kernel zeroes it: 35-50 k page faults a MoCo step at 128 px, batch 32,
    ~12 % of the step on this project's CPU (575 -> 507 ms; torchgeo's fp32 MoCo step gains ~7 %).
    Caching allocators (jemalloc, tcmalloc; PyTorch's CPU performance guide recommends preloading
    one) avoid this, but need ``LD_PRELOAD`` before Python starts. ``mallopt`` does the same for
    glibc at run time: mmap threshold 32 MiB (glibc's largest), trim threshold 1 GiB, top pad
    64 MiB. Results are unchanged; the process may keep up to 1 GiB of freed heap resident.

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
