"""What every benchmark shares: the data both sides train on, step timing, interleaving, results.

Measurement rules (issue 6):

* **same work on both sides** — one in-memory pool of VTS images (generated once, outside any
  timing) feeds noisyseg and the peer through the same ``DataLoader`` settings, same batch size,
  same number of steps;
* **warm-up excluded** — :class:`StepClock` times from the end of the last warm-up step to the end
  of the last step, so loader, augmentation, forward, backward and optimiser of every measured
  step are inside the window and first-call costs (oneDNN primitive creation, allocator growth)
  are not;
* **A B A B ...** — the two sides alternate and the median of the repeats is reported, because the
  2-core machine is shared and its load drifts; only same-run ratios mean anything;
* **one process, one allocator** — both sides share the process, so both run with noisyseg's
  malloc settings (:func:`noisyseg.runtime.keep_freed_memory`, applied before the first side), or
  both with glibc's defaults (``--system-malloc``): a ratio measures code, not allocator settings.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
sys.path.insert(0, str(ROOT.parent / "src"))  # run from a checkout without installing

from noisyseg.runfiles import atomic_write  # noqa: E402


def quiet() -> None:
    """Silence the per-run chatter of Lightning and torchgeo so the tables stay readable."""
    import logging

    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)


def add_process_args(ap, threads: int | None = None) -> None:
    """The options every benchmark entry point shares: threads and allocator, for both sides."""
    ap.add_argument("--threads", type=int, default=threads, help="intra-op threads for both sides (0: torch default)")
    ap.add_argument("--system-malloc", action="store_true",
                    help="glibc malloc defaults for both sides (default: noisyseg's settings for both)")


def setup_process(args) -> int:
    """Apply :func:`add_process_args` options and silence chatter; returns the thread count."""
    set_malloc(args.system_malloc)
    quiet()
    return set_threads(args.threads)


def set_malloc(system: bool) -> bool:
    """Both sides with noisyseg's malloc settings (``False``) or glibc's defaults (``True``).

    The settings are process-wide and cannot be undone, so they are chosen once, before either side
    runs; the noisyseg side's own call (its acceleration switch, :class:`noisyseg.runtime.Acceleration`,
    when ``fit`` starts) then finds them in force or, with ``NOISYSEG_MALLOC=system``, leaves malloc
    alone. Returns whether the settings are in force.
    """
    from noisyseg.runtime import MALLOC_ENV, keep_freed_memory

    if system:
        os.environ[MALLOC_ENV] = "system"
    return keep_freed_memory()


def set_threads(n: int | None) -> int:
    """Use ``n`` intra-op threads on both sides (``None``/0: torch's default); returns the count.

    Both sides always share one setting, so a ratio never mixes thread counts. On this shared
    2-core machine, under load from other processes, 1 thread is often *faster* than 2: every
    OpenMP barrier waits for a descheduled sibling thread (see README).
    """
    if n:
        torch.set_num_threads(int(n))
    return torch.get_num_threads()


# ----------------------------------------------------------------------------- data


class ImagePool(Dataset):
    """``length`` samples cycling over a fixed pool of VTS images (no generation inside timing).

    Each sample holds ``image [C,S,S]`` float32 and ``mask [S,S]`` int64 — the keys both
    noisyseg and torchgeo read (``batch["image"]``, ``batch["mask"]``).
    """

    def __init__(self, length: int, size: int = 128, pool: int = 64, num_classes: int = 2, seed: int = 0) -> None:
        from noisyseg.data import VTSSegmentation

        ds = VTSSegmentation("train", length=pool, size=size, seed=seed, third_class=num_classes == 3)
        samples = [ds[i] for i in range(pool)]
        self.images = torch.stack([s["image"] for s in samples])  # P x C x S x S
        self.masks = torch.stack([s["mask"] for s in samples])  # P x S x S
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        j = i % len(self.images)
        return {"image": self.images[j], "mask": self.masks[j]}


def loader(ds: Dataset, batch_size: int):
    """The one loader both sides use: shuffled, full batches, main process (no worker noise)."""
    from torch.utils.data import DataLoader

    from noisyseg.data.loading import collate

    return DataLoader(ds, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=0, collate_fn=collate)


# ----------------------------------------------------------------------------- timing


def step_clock_callback(warmup: int):
    """A Lightning callback that records the wall time at the end of every training batch.

    Raises:
        ValueError: ``warmup < 1`` (the window starts at the end of a warm-up step).
    """
    if warmup < 1:
        raise ValueError(f"warmup={warmup} must be >= 1: the timing window starts after a warm-up step")
    import lightning as L

    class StepClock(L.Callback):
        """``rate(batch)``: images/s over the steps after ``warmup`` (loader to optimiser, all inside)."""

        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.ends.append(time.perf_counter())

        def rate(self, batch_size: int) -> float:
            if len(self.ends) <= warmup:
                raise RuntimeError(f"only {len(self.ends)} steps ran; need more than {warmup} warm-up steps")
            timed = len(self.ends) - warmup  # steps inside the window
            return timed * batch_size / (self.ends[-1] - self.ends[warmup - 1])

    return StepClock()


def fit_rate(task, ds: Dataset, batch_size: int, steps: int, warmup: int, precision: Any) -> float:
    """Train ``task`` for ``warmup + steps`` steps through a plain Lightning Trainer; images/s.

    The Trainer is configured as a user would (``fit`` on a loader), with logging, checkpointing,
    progress bar and validation off on both sides so that only training is timed.
    """
    import lightning as L

    clock = step_clock_callback(warmup)
    trainer = L.Trainer(
        max_steps=warmup + steps,
        max_epochs=1,
        precision=precision,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[clock],
    )
    trainer.fit(task, train_dataloaders=loader(ds, batch_size))
    return clock.rate(batch_size)


def interleave(sides: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Run the sides A B A B ... ``repeats`` times; ``{name: [rate per repeat]}``."""
    out: dict[str, list[float]] = {k: [] for k in sides}
    for r in range(repeats):
        for name, fn in sides.items():
            rate = fn()
            out[name].append(rate)
            print(f"  repeat {r + 1}/{repeats} {name:<28} {rate:8.2f}", flush=True)
    return out


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def matmul_rate(dtype: torch.dtype, n: int = 2048, seconds: float = 1.5) -> float:
    """Achieved GFLOP/s of an ``n x n`` matmul in ``dtype`` (best of several timed windows)."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    for _ in range(3):  # warm-up: oneDNN/AMX kernels, page faults
        a @ b
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        for _ in range(4):
            a @ b
        best = max(best, 4 * 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return best


def environment() -> dict[str, Any]:
    """What the numbers were measured on."""
    from noisyseg.runtime import auto_precision, cpu_has_amx, cpu_has_fast_bf16, keep_freed_memory

    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "fast_bf16_cpu": cpu_has_fast_bf16(),
        "amx_cpu": cpu_has_amx(),  # where noisyseg's default switch uses matmul small-map convolutions
        "auto_precision": auto_precision(),
        "malloc_kept": keep_freed_memory(),  # True: noisyseg's settings for both sides
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


# ----------------------------------------------------------------------------- results


def row(bench: str, metric: str, noisyseg: float, peer: float | None, peer_name: str, unit: str,
        goal: str = "", runs: dict[str, list[float]] | None = None, note: str = "") -> dict[str, Any]:
    """One line of the results table; ``ratio`` is noisyseg / peer when there is a peer."""
    return {
        "bench": bench,
        "metric": metric,
        "noisyseg": noisyseg,
        "peer": peer,
        "peer_name": peer_name,
        "ratio": (noisyseg / peer) if peer else None,
        "unit": unit,
        "goal": goal,
        "runs": runs or {},
        "note": note,
    }


def _fmt(x: float | None, digits: int = 1) -> str:
    return "—" if x is None else f"{x:,.{digits}f}"


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| bench | metric | noisyseg | peer | ratio | goal | note |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for r in rows:
        peer = f"{_fmt(r['peer'])} ({r['peer_name']})" if r["peer"] is not None else (r["peer_name"] or "—")
        ratio = f"{r['ratio']:.2f}×" if r["ratio"] is not None else "—"
        lines.append(
            f"| {r['bench']} | {r['metric']} [{r['unit']}] | {_fmt(r['noisyseg'])} | {peer} | {ratio} | "
            f"{r['goal']} | {r['note']} |"
        )
    return "\n".join(lines)


def write_results(rows: list[dict[str, Any]], env: dict[str, Any], args: dict[str, Any], name: str = "latest") -> Path:
    """Write ``results/<name>.md`` and ``results/<name>.json`` atomically; return the .md path."""
    md = f"# noisyseg benchmarks ({env['time']})\n\n{table(rows)}\n\nEnvironment: `{json.dumps(env)}`\n\nOptions: `{json.dumps(args)}`\n"
    payload = json.dumps({"env": env, "args": args, "rows": rows}, indent=2)
    atomic_write(RESULTS / f"{name}.json", lambda t: Path(t).write_text(payload))
    return atomic_write(RESULTS / f"{name}.md", lambda t: Path(t).write_text(md))
