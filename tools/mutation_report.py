"""Mutation score of the last ``make mutation`` run, per module, from mutmut's result files.

mutmut 3 keeps one ``mutants/src/<module>.py.meta`` JSON per mutated module, whose
``exit_code_by_key`` maps each mutant to the test run's exit code: 1 (or any non-zero but 33/34)
killed, 0 survived, 33 no test reaches it, 34 skipped, null not yet run; 36/37/-24 timeout. mutmut's
own ``results`` lists survivors one per line; this prints the per-module score the README quotes and
can list the surviving mutant names of one module.

    python tools/mutation_report.py                       # table per module + totals
    python tools/mutation_report.py --survivors tasks.base  # names of its survivors (mutmut show NAME)
    python tools/mutation_report.py --equivalent tools/mutation_equivalent.txt  # exclude judged mutants
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

STATUS = {0: "survived", 1: "killed", 33: "no_tests", 34: "skipped", None: "pending", 36: "timeout", 37: "timeout", -24: "timeout"}


def status(code: int | None) -> str:
    if code in STATUS:
        return STATUS[code]
    return "killed"  # any other non-zero exit: a test failed or errored


def load(root: Path) -> dict[str, dict[str, str]]:
    """module -> mutant name -> status."""
    out = {}
    for meta in sorted(root.glob("src/**/*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        if codes:
            module = meta.relative_to(root / "src").as_posix()[: -len(".py.meta")].replace("/", ".")
            out[module] = {k: status(v) for k, v in codes.items()}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="mutants", type=Path)
    ap.add_argument("--survivors", metavar="MODULE", help="list the survived and no-test mutants of MODULE (suffix match)")
    ap.add_argument("--equivalent", type=Path, help="file of mutant names judged equivalent (one per line, # comments)")
    args = ap.parse_args(argv)
    results = load(args.root)
    if not results:
        raise SystemExit(f"no mutmut results under {args.root}/src: run `make mutation` first")
    equivalent = set()
    if args.equivalent:
        equivalent = {ln.split("#")[0].strip() for ln in args.equivalent.read_text().splitlines()} - {""}
    if args.survivors:
        for module, by in results.items():
            if module.endswith(args.survivors):
                for name, st in by.items():
                    if st in ("survived", "no_tests") and name not in equivalent:
                        print(f"{st:9s} {name}")
        return 0
    total = Counter()
    print(f"{'module':42s} {'killed':>7s} {'survived':>8s} {'no test':>7s} {'equiv.':>6s} {'pending':>7s} {'score':>6s}")
    for module, by in results.items():
        c = Counter("equivalent" if n in equivalent and st != "killed" else st for n, st in by.items())
        total.update(c)
        judged = c["killed"] + c["survived"] + c["no_tests"] + c["timeout"]
        score = f"{100 * (c['killed'] + c['timeout']) / judged:5.1f}%" if judged else "    -"
        print(f"{module:42s} {c['killed']:7d} {c['survived']:8d} {c['no_tests']:7d} {c['equivalent']:6d} {c['pending']:7d} {score:>6s}")
    judged = total["killed"] + total["survived"] + total["no_tests"] + total["timeout"]
    print(f"{'all':42s} {total['killed']:7d} {total['survived']:8d} {total['no_tests']:7d} {total['equivalent']:6d} "
          f"{total['pending']:7d} {100 * (total['killed'] + total['timeout']) / max(judged, 1):5.1f}%")
    print("score = (killed + timed out) / (killed + timed out + survived + no test); equivalent mutants excluded")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
