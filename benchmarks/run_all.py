"""``make bench``: every benchmark in one run, one table, written to ``benchmarks/results/``.

Order: MoCo and UNet (noisyseg vs torchgeo, interleaved), FLOPs (matmul rates and the MoCo
step, interleaved), data (per-core rates, compared with the training rates of this run), memory
(``noisyseg demo --quick`` peak RSS). The table goes to stdout and, atomically, to
``benchmarks/results/latest.md`` and ``latest.json`` (with every repeat's value).

Threads: both sides of every comparison use the same ``--threads`` (default 1, i.e. per-core
numbers). On this shared 2-core machine other engineers' jobs keep the load above 2, and two
OpenMP threads then run *slower* than one (each barrier waits for a descheduled thread; see
README.md); ``--threads 2`` measures the whole machine when it is quiet.

Allocator: both sides of every comparison run with noisyseg's malloc settings (see
``common.py``); ``--system-malloc`` runs both with glibc's defaults instead.

Run: ``python benchmarks/run_all.py [--quick] [--only moco|unet|flops|data|memory|streaming] [--threads N]
[--system-malloc]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

BENCHES = ("moco", "unet", "flops", "data", "memory", "streaming")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps and one repeat: a smoke test")
    ap.add_argument("--only", action="append", choices=BENCHES, help="run only these (repeatable)")
    ap.add_argument("--repeats", type=int, default=None, help="A/B repeats (default 3, --quick 1)")
    common.add_process_args(ap, threads=1)
    ap.add_argument("--peer-bf16", action="store_true", help="also time torchgeo with bf16-mixed")
    ap.add_argument("--name", default="latest", help="results file stem under benchmarks/results/")
    args = ap.parse_args(argv)
    only = args.only or list(BENCHES)
    threads = common.setup_process(args)
    env = common.environment()
    print(f"noisyseg benchmarks: {env}", flush=True)
    rows: list[dict] = []
    train: dict[str, float] = {}
    t0 = time.perf_counter()
    if "moco" in only:
        import bench_moco

        rows += bench_moco.run(args.quick, args.repeats, args.peer_bf16)
        train["moco"] = rows[-1 - int(args.peer_bf16)]["noisyseg"]
    if "unet" in only:
        import bench_unet

        rows += bench_unet.run(args.quick, args.repeats, args.peer_bf16)
        train["unet"] = rows[-1 - int(args.peer_bf16)]["noisyseg"]
    if "flops" in only:
        import bench_flops

        rows += bench_flops.run(args.quick, args.repeats)
    if "data" in only:
        import bench_data

        data_rows = bench_data.run(args.quick, args.repeats, train)
        rows += data_rows
    if "memory" in only:
        import bench_memory

        rows += bench_memory.run(args.quick)
    if "streaming" in only:  # 100,000 tiles stored three ways (9-14 GB each); --quick: 2,000
        import bench_streaming

        rows += bench_streaming.run(tiles=2_000 if args.quick else 100_000, repeats=args.repeats or 2)
    opts = {**vars(args), "threads": threads, "seconds": round(time.perf_counter() - t0)}
    path = common.write_results(rows, env, opts, args.name)
    print()
    print(common.table(rows))
    print(f"\nwritten: {path} (+ .json); {opts['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
