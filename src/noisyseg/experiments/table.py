"""The tidy results table of a sweep: ``results.csv``, a row per run x downstream x split x metric.

Columns: ``run``, ``seed``, the grid columns (``method``, ``r``, ...), ``downstream``,
``decoder``, ``frozen``, ``split``, ``metric``, ``value``, ``seconds`` (the downstream's fit+test),
``pretrain_seconds``. Rows are added by :func:`append_rows`: under an exclusive ``flock`` on
``results.csv.lock`` it reads the table, replaces any earlier rows of the same runs, and writes the
whole new table to a temp file that is renamed over the old one — parallel jobs never lose rows and
a kill never leaves half a table.
"""

from __future__ import annotations

import csv
import fcntl
import io
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from noisyseg.runfiles import atomic_write

TABLE = "results.csv"
TAIL = ["downstream", "decoder", "frozen", "split", "metric", "value", "seconds", "pretrain_seconds"]
"""Columns after the run's parameters."""


@contextmanager
def locked(path: Path):
    """Hold an exclusive lock on ``<path>.lock`` (released when the block ends or the process dies)."""
    lock = path.with_name(path.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_rows(path: str | Path) -> list[dict[str, str]]:
    """All rows of a results table (strings, as in the file); [] when there is no file."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _columns(rows: Iterable[dict[str, Any]], first: list[str]) -> list[str]:
    cols = list(first)
    for row in rows:
        for k in row:
            if k not in cols:
                cols.append(k)
    head = [c for c in cols if c not in TAIL]
    return head + [c for c in TAIL if c in cols]


def _cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v).lower()
    return v


def write_rows(path: str | Path, rows: list[dict[str, Any]], columns: list[str] | None = None) -> Path:
    """Write a whole table atomically (temp file + rename)."""
    cols = _columns(rows, columns or ["run", "seed"])
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({c: _cell(row.get(c)) for c in cols})
    text = buf.getvalue()
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def append_rows(path: str | Path, rows: list[dict[str, Any]], columns: list[str] | None = None) -> int:
    """Add the rows of finished runs, replacing earlier rows of the same runs; return the row count.

    Args:
        path: the table.
        rows: new rows, each with a ``run`` column.
        columns: preferred leading column order (the sweep's parameter columns).
    """
    path = Path(path)
    runs = {str(r["run"]) for r in rows}
    with locked(path):
        old = [r for r in read_rows(path) if r.get("run") not in runs]
        first = columns or (list(old[0]) if old else ["run", "seed"])
        write_rows(path, old + rows, first)
        return len(old) + len(rows)


def runs_in_table(path: str | Path) -> set[str]:
    """Run ids that have rows in the table."""
    return {r["run"] for r in read_rows(path)}
