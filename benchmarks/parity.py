"""Accuracy parity of the fast path: the demo study in fp32 and at the default (bf16) precision.

Runs ``noisyseg demo --precision 32-true`` and ``noisyseg demo`` (``auto``: bf16-mixed +
channels-last on AMX/AVX-512-BF16 CPUs) with the same seeds, each as a child process, then prints
both mIoU tables (test split, per arm and mode) and the differences in mIoU points, per seed and
for the mean over the seeds. The goal of issue 6: every difference of the means within 1 point.
With several seeds the table also gives the fp32 seed-to-seed spread, the yardstick a single
seed's difference has to be read against (a different seed changes the data, the initialisation
and the augmentations; bf16 changes the rounding, after which training takes another path).
``--control-threads N`` adds the floor under any such comparison: fp32 against fp32 run with N
threads, where only the order of floating-point sums differs.
``--quick`` runs the tiny demo (a smoke test of this script, not a parity result: its scores are
noise).

Run: ``python benchmarks/parity.py [--quick] [--out runs/parity] [--seeds 0 1 2] [--control-threads 1] [--reuse]``.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

VARIANTS = {"fp32": "32-true", "fast": "auto"}


def run_demo(out: Path, precision: str, seed: int, quick: bool, threads: int | None = None,
             reuse: bool = False) -> dict[tuple[str, str], float]:
    """One demo run in a child process; ``{(arm, mode): test mIoU}`` from its ``results.csv``.

    ``threads`` sets ``OMP_NUM_THREADS`` for the child; ``reuse`` reads a finished run's
    ``results.csv`` instead of running it again (a killed parity run picks up where it stopped).

    Raises:
        RuntimeError: the demo failed (its last output lines are in the message).
    """
    results = out / "results.csv"
    if not (reuse and results.is_file()):
        cmd = [sys.executable, "-m", "noisyseg", "demo", "--out", str(out), "--precision", precision, "--seed", str(seed)]
        if quick:
            cmd.append("--quick")
        env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
        print(("$ " + (f"OMP_NUM_THREADS={threads} " if threads else "")) + " ".join(cmd), flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=common.ROOT.parent, env=env)
        if proc.returncode:
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
            raise RuntimeError(f"demo exited with {proc.returncode}:\n{tail}")
        print(f"  done in {time.perf_counter() - t0:.0f} s", flush=True)
    else:
        print(f"reusing {results}", flush=True)
    with open(results, newline="") as f:
        return {(r["arm"], r["mode"]): float(r["value"]) for r in csv.DictReader(f) if r["metric"] == "miou"}


def mean_scores(runs: list[dict]) -> dict[tuple[str, str], float]:
    """Mean mIoU per (arm, mode) over seeds (keys every run has)."""
    keys = set.intersection(*(set(r) for r in runs))
    return {k: statistics.fmean(r[k] for r in runs) for k in keys}


def spread(runs: list[dict]) -> str:
    """Markdown table of the seed-to-seed standard deviation (mIoU points) per (arm, mode)."""
    keys = sorted(set.intersection(*(set(r) for r in runs)))
    lines = ["| arm | mode | fp32 mIoU per seed | seed std (points) |", "|---|---|---|---:|"]
    for k in keys:
        vals = [100 * r[k] for r in runs]
        lines.append(f"| {k[0]} | {k[1]} | {' / '.join(f'{v:.1f}' for v in vals)} | {statistics.stdev(vals):.1f} |")
    return "\n".join(lines)


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
    ap.add_argument("--out", default="runs/parity", help="folder for the demo runs (default runs/parity)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds, each run in both precisions")
    ap.add_argument("--tolerance", type=float, default=1.0, help="largest allowed |difference| in mIoU points")
    ap.add_argument("--reuse", action="store_true", help="read runs already in --out instead of running them again")
    ap.add_argument("--control-threads", type=int, default=None, metavar="N",
                    help="also run fp32 of the first seed with N threads: how far fp32 moves from rounding alone")
    args = ap.parse_args(argv)
    out = Path(args.out) / ("quick" if args.quick else "full")
    runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    sections = []
    for seed in args.seeds:
        for name, prec in VARIANTS.items():
            runs[name].append(run_demo(out / f"seed{seed}" / name, prec, seed, args.quick, reuse=args.reuse))
        text, worst = compare(runs["fp32"][-1], runs["fast"][-1], ("fp32 (32-true)", "fast (auto)"))
        sections.append(f"## Seed {seed}\n\n{text}\n\nLargest |difference|: {worst:.2f} mIoU points.\n")
    control = ""
    if args.control_threads:
        seed, n = args.seeds[0], args.control_threads
        other = run_demo(out / f"seed{seed}" / f"fp32-{n}threads", "32-true", seed, args.quick, n, args.reuse)
        text, worst = compare(runs["fp32"][0], other, ("fp32", f"fp32, {n} thread(s)"))
        control = (
            f"## Control: fp32 against fp32 with {n} thread(s), seed {seed}\n\nSame code, data and seed; only the "
            f"order of floating-point sums differs (thread partitioning).\n\n{text}\n\nLargest |difference|: "
            f"{worst:.2f} mIoU points.\n\n"
        )
    names = ("fp32 (32-true)", "fast (auto)")
    text, worst = compare(mean_scores(runs["fp32"]), mean_scores(runs["fast"]), names)
    verdict = "within" if worst <= args.tolerance else "OUTSIDE"
    seeds = ", ".join(map(str, args.seeds))
    report = (
        f"# Accuracy parity: fp32 vs fast path (seeds {seeds}{', quick: smoke test only' if args.quick else ''})\n\n"
        f"## Mean over {len(args.seeds)} seed(s)\n\n{text}\n\nLargest |difference| of the means: {worst:.2f} mIoU "
        f"points — {verdict} the {args.tolerance:g}-point goal.\n\n"
        + (f"## fp32 seed-to-seed spread\n\n{spread(runs['fp32'])}\n\n" if len(args.seeds) > 1 else "")
        + control
        + "\n".join(sections)
    )
    print(report)
    common.atomic_write(out / "parity.md", lambda t: Path(t).write_text(report))
    return 0 if worst <= args.tolerance or args.quick else 1


if __name__ == "__main__":
    sys.exit(main())
