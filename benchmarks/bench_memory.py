"""Peak resident memory of ``noisyseg demo --quick``, run as a child process.

The child's peak RSS is read with ``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`` (kilobytes
on Linux) after it exits — in a small launcher process, not in the benchmark process: Linux
carries a process's RSS high-water mark across ``exec``, so a demo forked from ``run_all.py``
(torch, torchgeo and models loaded) would report the *parent's* peak (measured: 3.5 GB instead
of the 2.6 GB that ``/usr/bin/time -v`` shows). No peer: torchgeo has no end-to-end demo.

Run: ``python benchmarks/bench_memory.py``.
"""

from __future__ import annotations

import argparse
import json
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
        launcher = [sys.executable, "-c", _LAUNCHER, json.dumps(cmd)]
        t0 = time.perf_counter()
        proc = subprocess.run(launcher, capture_output=True, text=True, cwd=common.ROOT.parent)
        seconds = time.perf_counter() - t0
        if proc.returncode:
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
            raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}:\n{tail}")
    kb = int(proc.stdout.strip().splitlines()[-1])  # the launcher's last line: the demo's ru_maxrss
    return kb / 1024, seconds


# a fresh, small process runs the demo and prints its peak RSS in kB (see the module docstring)
_LAUNCHER = """
import json, resource, subprocess, sys
rc = subprocess.run(json.loads(sys.argv[1]), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
if rc.returncode:
    sys.stderr.write(rc.stderr[-4000:])
    sys.exit(rc.returncode)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


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
