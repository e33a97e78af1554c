"""Re-run surviving mutants against tests mutmut did not map to them.

Two cases: tests written after the mutmut run (mutmut's test map is from that run), and tests that
reach the function only in child processes. mutmut maps each mutated function to the tests that call it by recording calls in the test
process; calls made in ``mp.spawn``/subprocess children (the two-process DDP tests) are not
recorded, so a mutant in a DDP-only branch is run only against the one-process tests, which never
enter that branch, and survives. The children do run the mutant (mutmut selects it through the
inherited ``MUTANT_UNDER_TEST`` variable), so this runs the named tests once per such mutant, the
way mutmut does, and records the outcome in mutmut's own result file (1 killed, 0 survived).

    python tools/mutation_recheck.py 'noisyseg.models.momentum.x_batch_*' tests/models_contrastive/test_momentum.py
    python tools/mutation_recheck.py 'noisyseg.tasks.base.x__fusable*' tests/tasks/test_base_task.py -k fusable
    python tools/mutation_report.py   # the score with the re-checked mutants
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pattern", help="mutant names (fnmatch), e.g. 'noisyseg.models.momentum.x_batch_shuffle*'")
    ap.add_argument("tests", nargs="+", help="test files or ids, relative to the project root")
    ap.add_argument("--root", default="mutants", type=Path)
    ap.add_argument("-k", dest="keyword", help="pytest -k expression: only the tests that reach the function")
    args = ap.parse_args(argv)
    module = ".".join(args.pattern.split(".")[:-1])
    meta_path = args.root / "src" / (module.replace(".", "/") + ".py.meta")
    if not meta_path.is_file():
        raise SystemExit(f"no mutmut result file {meta_path} for pattern {args.pattern!r}")
    meta = json.loads(meta_path.read_text())
    meta_file = meta_path.resolve()  # written after each mutant: a killed run keeps what it did
    codes = meta["exit_code_by_key"]
    todo = [k for k, v in codes.items() if fnmatch.fnmatch(k, args.pattern) and v in (0, 33)]
    print(f"{len(todo)} surviving / untested mutants match {args.pattern}")
    # as mutmut runs a mutant: in mutants/, its src first on the path, the mutant named in the
    # environment. The imports are paid once: each mutant runs in a fork of this warmed process.
    os.chdir(args.root)
    sys.path.insert(0, str(Path("src").resolve()))
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["PYTHONPATH"] = str(Path("src").resolve())  # spawned DDP children import the mutants too
    import pytest  # noqa: F401  (imported before forking, with torch and the package)
    import torch  # noqa: F401
    import lightning  # noqa: F401
    import noisyseg.tasks  # noqa: F401  (the tasks pull in models, losses, data)
    pytest_args = ["-x", "-q", "-p", "no:cacheprovider", *args.tests, *(["-k", args.keyword] if args.keyword else [])]
    for i, name in enumerate(todo, 1):
        pid = os.fork()
        if pid == 0:  # child: run the tests against this mutant, exit with pytest's code
            os.environ["MUTANT_UNDER_TEST"] = name
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            os._exit(int(pytest.main(pytest_args)))
        _, status = os.waitpid(pid, 0)
        rc = os.waitstatus_to_exitcode(status)
        if rc == 5:  # pytest collected nothing: a wrong -k, not a killed mutant
            raise SystemExit(f"no test matched {args.tests} -k {args.keyword!r}")
        codes[name] = 0 if rc == 0 else 1
        print(f"[{i}/{len(todo)}] {name}: {'survived' if rc == 0 else 'killed'}", flush=True)
        meta_file.write_text(json.dumps(meta, indent=4))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
