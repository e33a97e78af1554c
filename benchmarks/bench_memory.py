"""Peak resident memory of ``noisyseg demo --quick``, run as a child process.

The child's peak RSS is read with ``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`` (kilobytes
on Linux) after it exits; this process starts no other child before, so the value is the
demo's. No peer: torchgeo has no equivalent end-to-end demo.

Run: ``python benchmarks/bench_memory.py``.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402


def demo_peak_rss_mb(extra: list[str] | None = None) -> tuple[float, float]:
    """Run ``noisyseg demo --quick`` in a child process; ``(peak RSS in MB, seconds)``.

    Raises:
        RuntimeError: the demo failed (its last output lines are in the message).
    """
    with tempfile.TemporaryDirectory(prefix="noisyseg-bench-mem-") as out:
        cmd = [sys.executable, "-m", "noisyseg", "demo", "--quick", "--out", out, *(extra or [])]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=common.ROOT.parent)
        seconds = time.perf_counter() - t0
        if proc.returncode:
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
            raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}:\n{tail}")
    kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # max over children waited for
    return kb / 1024, seconds


def run(quick: bool = False) -> list[dict]:
    mb, seconds = demo_peak_rss_mb()
    print(f"noisyseg demo --quick: peak RSS {mb:.0f} MB, {seconds:.0f} s")
    return [common.row("memory", "demo --quick peak RSS", mb, None, "", "MB", note=f"child process, {seconds:.0f} s")]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="same as without (the demo is always --quick)")
    ap.parse_args(argv)
    print(common.table(run()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
