"""How much of the package one run walks through: files and lines of the noisyseg functions it calls.

Runs ``noisyseg fit --config CONFIG --trainer.fast_dev_run true`` in this process under a profile
hook (``sys.setprofile``, also on the loader's threads) that records every code object of the
``noisyseg`` package that is called, then counts the distinct files and the source lines of those
functions (a function's lines: its first line to its last line; a nested function that ran inside
a parent that ran counts once; module and class bodies, which run at import, are not counted). Loader worker processes
are switched off (``num_workers: 0``) so that every call happens where the hook sees it.

Usage::

    python tools/call_footprint.py configs/pretrain/moco_vts.yaml [--set KEY=VALUE ...] [--list]

Prints ``files N, lines M`` and, with ``--list``, each file with its called functions' line count
(``--functions``: and each function's span).
The issue that asks for it: a fast-dev-run of the MoCo and the supervised pretraining configs each
should call functions in at most 12 files and at most 1,200 lines.
"""

from __future__ import annotations

import argparse
import inspect
import sys
import tempfile
import threading
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from types import CodeType


def _span(code: CodeType) -> tuple[int, int]:
    """First and last source line of a code object (its ``co_lines`` table)."""
    lines = [ln for _, _, ln in code.co_lines() if ln is not None]
    return (min(lines, default=code.co_firstlineno), max(lines, default=code.co_firstlineno))


def recorder(package_root: Path) -> tuple[Callable[..., None], dict[CodeType, None]]:
    """A profile hook and the dict it fills with the code of every function under ``package_root`` that is called."""
    seen: dict[CodeType, None] = {}
    root = str(package_root)

    def hook(frame, event, arg):  # noqa: ARG001 - sys.setprofile's signature
        if event == "call":
            code = frame.f_code
            # functions only: module and class bodies run once at import and are not "called" code
            if code.co_filename.startswith(root) and code.co_flags & inspect.CO_NEWLOCALS:
                seen[code] = None

    return hook, seen


def footprint(argv: list[str], package_root: Path) -> dict[str, dict[str, tuple[int, int]]]:
    """``{file: {qualified name: (first line, last line)}}`` of package functions called while ``argv`` runs."""
    from noisyseg.cli import main as cli_main

    hook, seen = recorder(package_root)
    sys.setprofile(hook)
    threading.setprofile(hook)
    try:
        rc = cli_main(argv)
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
    if rc not in (0, None):
        raise SystemExit(f"noisyseg {' '.join(argv)} exited with {rc}")
    out: dict[str, dict[str, tuple[int, int]]] = defaultdict(dict)
    for code in seen:
        out[code.co_filename][code.co_qualname] = _span(code)
    return out


def count_lines(spans: dict[str, tuple[int, int]]) -> int:
    """Distinct source lines covered by the spans (a nested function inside a called parent counts once)."""
    lines: set[int] = set()
    for first, last in spans.values():
        lines.update(range(first, last + 1))
    return len(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", help="a fit config, e.g. configs/pretrain/moco_vts.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra `noisyseg fit` arguments as --KEY=VALUE (repeatable)")
    ap.add_argument("--list", action="store_true", help="print each file and its called functions' lines")
    ap.add_argument("--functions", action="store_true", help="with --list: also each called function's lines")
    args = ap.parse_args(argv)
    import noisyseg

    package_root = Path(noisyseg.__file__).resolve().parent
    with tempfile.TemporaryDirectory() as tmp:
        fit = ["fit", "--config", args.config, "--trainer.fast_dev_run", "true",
               "--trainer.default_root_dir", tmp, "--trainer.logger", "false",
               "--data.init_args.num_workers", "0", "--model.init_args.encoder_out", f"{tmp}/encoder.safetensors",
               *[f"--{kv}" for kv in args.set]]
        calls = footprint(fit, package_root)
    per_file = {f: count_lines(spans) for f, spans in calls.items()}
    if args.list:
        for f in sorted(per_file, key=per_file.get, reverse=True):
            print(f"{per_file[f]:5d}  {Path(f).relative_to(package_root.parent)}  ({len(calls[f])} functions)")
            if args.functions:
                for name, (first, last) in sorted(calls[f].items(), key=lambda kv: kv[1]):
                    print(f"       {last - first + 1:4d}  {name}  (lines {first}-{last})")
    print(f"{args.config}: files {len(per_file)}, lines {sum(per_file.values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
