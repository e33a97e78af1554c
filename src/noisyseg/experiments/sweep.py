"""``noisyseg sweep SPEC.yaml``: a grid of configs x seeds, resumable, into one tidy table.

Stages:

1. **plan** — read the spec (:mod:`noisyseg.experiments.spec`; ``--variant`` merged in), build
   every run's configs and check every key against its config file. Nothing runs unless all pass.
2. **resume** — a run whose ``done.json`` exists is finished: its rows are added to the table if
   missing, and it is not run again. A ``done.json`` made by a different config is an error.
3. **run** — the pending runs, in one process (``--jobs 1``) or a pool of spawned processes, each
   through :func:`noisyseg.experiments.pipeline.run_pipeline`; rows go into ``results.csv`` as
   each run finishes (:func:`noisyseg.experiments.table.append_rows`). A run that fails is
   reported and left pending for the next invocation; the others go on.

Exit codes: 0 all runs finished, 1 some runs failed, 2 bad input (spec, config keys, output folder).
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import sys
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from noisyseg.experiments.pipeline import RUN_FILE, config_record, read_done, resolve_run, run_pipeline
from noisyseg.experiments.spec import RunPlan, SpecError, SweepSpec, load_spec, plan_runs
from noisyseg.experiments.table import TABLE, append_rows, runs_in_table
from noisyseg.runfiles import atomic_write
from noisyseg.runtime import default_threads, set_threads


def default_out(spec: SweepSpec) -> Path:
    """``runs/studies/<name>[-<variant>]``."""
    return Path("runs/studies") / (spec.name + (f"-{spec.variant}" if spec.variant else ""))


def check_writable(out: Path) -> None:
    """Create ``out`` and write a file there.

    Raises:
        PermissionError: naming the folder when it cannot be created or written.
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out, prefix=".write-test-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise PermissionError(f"output directory {out} is not writable ({e.strerror or e})") from None


def param_columns(plans: list[RunPlan]) -> list[str]:
    """``run``, ``seed`` and the parameter columns in their grid order."""
    cols = ["run", "seed"]
    for p in plans:
        cols += [k for k in p.params if k not in cols]
    return cols


def execute_run(plan: RunPlan, out: str, columns: list[str], quiet: bool = True) -> dict[str, Any]:
    """Run one planned run and add its rows to the table (``done.json`` first, then the table)."""
    if quiet:  # Lightning's per-run banners (GPU available, tips) would bury the progress bar
        for name in ("lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.WARNING)
    result = run_pipeline(plan, Path(out) / plan.run_id, quiet=quiet)
    append_rows(Path(out) / TABLE, result["rows"], columns)
    return {"run": plan.run_id, "seconds": result["seconds"], "rows": len(result["rows"])}


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)  # N jobs share the cores instead of each taking all of them


def partition(plans: list[RunPlan], out: Path, columns: list[str]) -> tuple[list[RunPlan], int]:
    """Split runs into pending ones and finished ones; put finished runs' missing rows in the table.

    Raises:
        SpecError: a finished run's folder was made by a different config.
    """
    in_table = runs_in_table(out / TABLE)
    pending, repaired = [], 0
    for plan in plans:
        run_dir = out / plan.run_id
        done = read_done(run_dir)
        if done is None:
            pending.append(plan)
            continue
        text = config_record(plan, resolve_run(plan, run_dir))
        if not (run_dir / RUN_FILE).is_file() or (run_dir / RUN_FILE).read_text() != text:
            raise SpecError(
                f"run folder {run_dir} holds results of a different config (the spec or a config file "
                "changed since); use another --out or delete that folder"
            )
        if plan.run_id not in in_table:
            append_rows(out / TABLE, done["rows"], columns)  # killed between done.json and the table
            repaired += 1
    return pending, repaired


def run_sweep(
    plans: list[RunPlan], out: Path, jobs: int = 1, quiet: bool = True, progress: bool = True,
    threads: int | None = None,
) -> dict[str, Any]:
    """Run every unfinished run of ``plans`` into ``out``.

    ``threads``: torch compute threads per run process (default
    :func:`noisyseg.runtime.default_threads` of ``jobs``: the physical cores shared out).

    Returns:
        ``{"ran": [...], "failed": {run: error}, "skipped": n, "repaired": n, "seconds": s}``.
    """
    columns = param_columns(plans)
    pending, repaired = partition(plans, out, columns)
    skipped = len(plans) - len(pending)
    ran: list[str] = []
    failed: dict[str, str] = {}
    t0 = time.perf_counter()
    bar = tqdm(total=len(pending), unit="run", desc="sweep", disable=not progress or not pending, file=sys.stderr)

    def finished(run_id: str, err: BaseException | None) -> None:
        if err is None:
            ran.append(run_id)
        else:
            failed[run_id] = f"{type(err).__name__}: {err}"
            tqdm.write(f"[sweep] run {run_id} failed: {failed[run_id]}", file=sys.stderr)
        bar.set_postfix_str(f"last: {run_id[:40]}")
        bar.update(1)

    if jobs <= 1:
        set_threads(threads)
        for plan in pending:
            try:
                execute_run(plan, str(out), columns, quiet)
                finished(plan.run_id, None)
            except Exception as e:  # noqa: BLE001 - one failed run must not stop the others
                finished(plan.run_id, e)
    else:
        threads = threads or default_threads(jobs)
        with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                 initargs=(threads,)) as pool:
            futures = {pool.submit(execute_run, p, str(out), columns, True): p.run_id for p in pending}
            remaining = set(futures)
            while remaining:
                done, remaining = wait(remaining, return_when=FIRST_COMPLETED)
                for f in done:
                    finished(futures[f], f.exception())
    bar.close()
    return {"ran": ran, "failed": failed, "skipped": skipped, "repaired": repaired,
            "seconds": time.perf_counter() - t0}


def _record_spec(spec: SweepSpec, plans: list[RunPlan], out: Path) -> None:
    record = {"spec": str(spec.path), "variant": spec.variant, "resolved": spec.raw,
              "runs": [{"run": p.run_id, "seed": p.seed, "params": p.params} for p in plans]}
    text = yaml.safe_dump(record, sort_keys=False)
    atomic_write(out / "sweep.yaml", lambda tmp: Path(tmp).write_text(text))


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``["a.b=1", "c=[1, 2]"]`` -> ``{"a.b": 1, "c": [1, 2]}`` (values parsed as YAML).

    Raises:
        SpecError: an item without ``=``.
    """
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise SpecError(f"--set {item!r}: write KEY=VALUE, e.g. '*.trainer.max_steps=1'")
        out[key.strip()] = yaml.safe_load(value)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="noisyseg sweep", description=__doc__.splitlines()[0])
    ap.add_argument("spec", help="sweep spec YAML (see configs/studies/)")
    ap.add_argument("--variant", help="a variant of the spec, e.g. quick or full")
    ap.add_argument("--jobs", type=int, default=1, help="runs in parallel processes (default 1)")
    ap.add_argument("--out", help="output folder (default runs/studies/<name>[-<variant>])")
    ap.add_argument("--dry-run", action="store_true", help="plan and check every run, print them, run nothing")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="an override after the spec's and the variant's (YAML value), e.g. "
                         "'*.trainer.max_steps=1'; repeatable; part of each run's config")
    ap.add_argument("--threads", type=int, help="torch compute threads per run process (default: "
                    "OMP_NUM_THREADS, else the physical cores available divided by --jobs)")
    ap.add_argument("--verbose", action="store_true", help="Lightning progress bars and logs per run")
    ap.add_argument("--no-report", action="store_true", help="do not write <out>/report at the end")
    args = ap.parse_args(argv)
    try:
        if args.jobs < 1:
            raise SpecError(f"--jobs {args.jobs} must be >= 1")
        if args.threads is not None and args.threads < 1:
            raise SpecError(f"--threads {args.threads} must be >= 1")
        spec = load_spec(args.spec, args.variant)
        spec.overrides.update(parse_sets(args.set))
        plans = plan_runs(spec)
        out = Path(args.out) if args.out else default_out(spec)
        if args.dry_run:
            for p in plans:
                state = "done" if read_done(out / p.run_id) else "pending"
                print(f"{state:8s} {p.run_id}")
            print(f"[sweep] {len(plans)} runs x {len(spec.downstream)} downstream; output {out}")
            return 0
        check_writable(out)
        _record_spec(spec, plans, out)
        res = run_sweep(plans, out, args.jobs, quiet=not args.verbose, threads=args.threads)
    except (SpecError, ValueError, FileNotFoundError, PermissionError) as e:
        print(f"noisyseg sweep: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in res.items() if k != "ran"} | {"ran": len(res["ran"]), "runs": len(plans)}))
    print(f"[sweep] {len(res['ran'])} ran, {res['skipped']} already done, {len(res['failed'])} failed; "
          f"table {out / TABLE}")
    if not args.no_report and not res["failed"] and (out / TABLE).is_file():
        from noisyseg.report import main as report_main  # the report reads only the table just written

        report_main([str(out)])  # one command from spec to report; `noisyseg report` redoes it alone
    return 1 if res["failed"] else 0
