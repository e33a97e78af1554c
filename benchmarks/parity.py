"""Accuracy parity of the fast path: the demo study in fp32 and at the default (bf16) precision.

Runs ``noisyseg demo --precision 32-true`` and ``noisyseg demo`` (``auto``: bf16-mixed +
channels-last on AMX/AVX-512-BF16 CPUs) with the same seed, each as a child process, then prints
both mIoU tables (test split, per arm and mode) and the differences in mIoU points. The goal of
issue 6: every difference within 1 point. ``--quick`` runs the tiny demo (a smoke test of this
script, not a parity result: its scores are noise).

Run: ``python benchmarks/parity.py [--quick] [--out runs/parity] [--seed 0]``.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

VARIANTS = {"fp32": "32-true", "fast": "auto"}


def run_demo(out: Path, precision: str, seed: int, quick: bool) -> dict[tuple[str, str], float]:
    """One demo run in a child process; ``{(arm, mode): test mIoU}`` from its ``results.csv``.

    Raises:
        RuntimeError: the demo failed (its last output lines are in the message).
    """
    cmd = [sys.executable, "-m", "noisyseg", "demo", "--out", str(out), "--precision", precision, "--seed", str(seed)]
    if quick:
        cmd.append("--quick")
    print("$ " + " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=common.ROOT.parent)
    if proc.returncode:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
        raise RuntimeError(f"demo exited with {proc.returncode}:\n{tail}")
    with open(out / "results.csv", newline="") as f:
        return {(r["arm"], r["mode"]): float(r["value"]) for r in csv.DictReader(f) if r["metric"] == "miou"}


def compare(a: dict, b: dict, names: tuple[str, str]) -> tuple[str, float]:
    """Markdown table of both mIoU sets (in %) and their difference; also the largest |difference|."""
    lines = [f"| arm | mode | {names[0]} mIoU | {names[1]} mIoU | diff (points) |", "|---|---|---:|---:|---:|"]
    worst = 0.0
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if x is None or y is None:
            lines.append(f"| {key[0]} | {key[1]} | {x} | {y} | missing |")
            worst = float("inf")
            continue
        d = 100 * (y - x)
        worst = max(worst, abs(d))
        lines.append(f"| {key[0]} | {key[1]} | {100 * x:.1f} | {100 * y:.1f} | {d:+.1f} |")
    return "\n".join(lines), worst


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny demo: a smoke test, not a parity result")
    ap.add_argument("--out", default="runs/parity", help="folder for both demo runs (default runs/parity)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tolerance", type=float, default=1.0, help="largest allowed |difference| in mIoU points")
    args = ap.parse_args(argv)
    out = Path(args.out) / ("quick" if args.quick else "full")
    scores = {name: run_demo(out / name, prec, args.seed, args.quick) for name, prec in VARIANTS.items()}
    text, worst = compare(scores["fp32"], scores["fast"], ("fp32 (32-true)", "fast (auto)"))
    verdict = "within" if worst <= args.tolerance else "OUTSIDE"
    report = (
        f"# Accuracy parity: fp32 vs fast path (seed {args.seed}{', quick: smoke test only' if args.quick else ''})\n\n"
        f"{text}\n\nLargest |difference|: {worst:.2f} mIoU points — {verdict} the {args.tolerance:g}-point goal.\n"
    )
    print(report)
    common.atomic_write(out / "parity.md", lambda t: Path(t).write_text(report))
    return 0 if worst <= args.tolerance or args.quick else 1


if __name__ == "__main__":
    sys.exit(main())
