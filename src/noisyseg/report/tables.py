"""The numbers of a report, from ``results.csv`` only: grouping, mean ± 95 % CI over seeds, paired
differences and verdicts from their confidence intervals.

Every analysis here is a pure function of the table's rows (dicts of typed values), so the
figures (:mod:`noisyseg.report.figures`) and the Markdown plot and state exactly the same numbers.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from noisyseg.runfiles import atomic_write

METRICS = ("miou", "f1")
"""Metrics the figures plot (keys of SegmentationTask's test scores)."""


MIN_DIFF = 0.001
"""Differences smaller than 0.1 points (invisible at the report's precision) are never a verdict."""


class ReportError(ValueError):
    """The sweep folder has no usable results table."""


def _typed(v: str) -> Any:
    if v == "":
        return None
    if v in ("true", "True"):
        return True
    if v in ("false", "False"):
        return False
    try:
        f = float(v)
    except ValueError:
        return v
    return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f


def load_table(path: str | Path) -> list[dict[str, Any]]:
    """Rows of ``results.csv`` with numbers, booleans and blanks (None) typed.

    Raises:
        ReportError: the file is missing, empty, or lacks the ``metric``/``value`` columns.
    """
    path = Path(path)
    if not path.is_file():
        raise ReportError(f"{path} does not exist: run `noisyseg sweep` into that folder first")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise ReportError(f"{path} has no rows: no run of the sweep has finished yet")
    missing = {"metric", "value", "split"} - set(rows[0])
    if missing:
        raise ReportError(f"{path} lacks the columns {sorted(missing)}; is it a sweep's results.csv?")
    return [{k: _typed(v) for k, v in r.items()} for r in rows]


def scored(rows: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """Rows of one metric on the test split (val when the table has no test rows)."""
    split = "test" if any(r["split"] == "test" for r in rows) else "val"
    return [r for r in rows if r["split"] == split and r["metric"] == metric]


def values_of(rows: list[dict[str, Any]], col: str) -> list[Any]:
    """Distinct non-blank values of a column, sorted (numbers first)."""
    vals = {r.get(col) for r in rows if r.get(col) is not None}
    return sorted(vals, key=lambda v: (not isinstance(v, (int, float)), v if isinstance(v, (int, float)) else str(v)))


def has_axis(rows: list[dict[str, Any]], col: str, at_least: int = 2) -> bool:
    """The column exists and takes at least ``at_least`` distinct values."""
    return len(values_of(rows, col)) >= at_least


@dataclass
class Stat:
    """Mean, sample standard deviation and count over seeds."""

    mean: float
    std: float
    n: int

    @property
    def half_width(self) -> float:
        """Half-width of the mean's two-sided 95 % t-interval (infinite for one seed)."""
        return _t_half_width(self.std, self.n)

    def pct(self) -> str:
        """``61.2 ± 1.0`` (percent, mean ± 95 % CI half-width) or ``61.2 (one seed)``."""
        if self.n < 2:
            return f"{100 * self.mean:.1f} (one seed)"
        return f"{100 * self.mean:.1f} ± {100 * self.half_width:.1f}"


def _t_half_width(sd: float, n: int, confidence: float = 0.95) -> float:
    """``t_{(1+c)/2, n-1} * sd / sqrt(n)``: half-width of a t confidence interval of a mean."""
    from scipy.stats import t as student_t

    if n < 2:
        return math.inf
    return float(student_t.ppf((1 + confidence) / 2, n - 1)) * sd / math.sqrt(n)


def stat(values: list[float]) -> Stat:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return Stat(mean, std, n)


def aggregate(rows: list[dict[str, Any]], by: list[str]) -> dict[tuple, Stat]:
    """Mean ± std of ``value`` over the rows of each group of ``by`` (the seeds of a grid point)."""
    groups: dict[tuple, list[float]] = defaultdict(list)
    for r in rows:
        groups[tuple(r.get(c) for c in by)].append(float(r["value"]))
    return {k: stat(v) for k, v in groups.items()}


def is_random(method: Any, rows: list[dict[str, Any]]) -> bool:
    """A random-init arm: named so, or run without pretraining (pretrain_seconds 0)."""
    if method is None:
        return False
    if "random" in str(method).lower() or "scratch" in str(method).lower():
        return True
    mine = [r for r in rows if r.get("method") == method]
    return bool(mine) and all(not r.get("pretrain_seconds") for r in mine)


@dataclass
class Paired:
    """Mean of paired differences (same seed) with the half-width of its 95 % t-interval."""

    mean: float
    half_width: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    def pct(self) -> str:
        """``+3.2 ± 1.5`` points, or ``+3.2 (one seed)``."""
        if self.n < 2:
            return f"{100 * self.mean:+.1f} (one seed)"
        return f"{100 * self.mean:+.1f} ± {100 * self.half_width:.1f}"


def paired(diffs: list[float], confidence: float = 0.95) -> Paired:
    """Mean of paired differences and the half-width of its two-sided t confidence interval.

    ``t_{(1+c)/2, n-1} * s / sqrt(n)`` with ``s`` the sample std of the differences (infinite
    for one difference: nothing can be concluded from one seed).
    """
    n = len(diffs)
    if n == 0:
        raise ValueError("no paired differences")
    mean = sum(diffs) / n
    if n < 2:
        return Paired(mean, math.inf, 1)
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    return Paired(mean, _t_half_width(sd, n, confidence), n)


def per_seed(rows: list[dict[str, Any]], where: dict[str, Any]) -> dict[Any, float]:
    """``{seed: value}`` of the rows whose columns equal ``where`` (a blank cell equals None).

    Raises:
        ReportError: two rows of one seed match (``where`` does not name one arm).
    """
    out: dict[Any, float] = {}
    for r in rows:
        if all(r.get(c) == v for c, v in where.items()):
            if r.get("seed") in out:
                raise ReportError(f"two rows of seed {r.get('seed')} match {where}: the arm is not fully named")
            out[r.get("seed")] = float(r["value"])
    return out


def paired_between(rows: list[dict[str, Any]], a: dict[str, Any], b: dict[str, Any]) -> Paired | None:
    """Arm ``a`` minus arm ``b`` over the seeds both ran (rows of one metric); None without a shared seed."""
    va, vb = per_seed(rows, a), per_seed(rows, b)
    seeds = [s for s in va if s in vb]
    return paired([va[s] - vb[s] for s in seeds]) if seeds else None


def ci_verdict(d: Paired, expect_greater: bool = True) -> str:
    """``reproduced`` / ``contradicted`` only when the 95 % CI excludes zero, else ``inconclusive``."""
    if d.n < 2 or d.low <= 0 <= d.high:
        return "inconclusive (95 % CI holds zero)" if d.n >= 2 else "inconclusive (one seed)"
    if abs(d.mean) < MIN_DIFF:  # a CI can exclude zero around a difference nobody can see (zero spread)
        return f"inconclusive (difference below {100 * MIN_DIFF:.1f} points)"
    greater = d.low > 0
    return "reproduced" if greater == expect_greater else "contradicted"


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    text = buf.getvalue()
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines)


def label(row_or_key: dict[str, Any], cols: list[str]) -> str:
    """``moco`` or ``moco, p=0.5, unet`` from the columns that distinguish series."""
    parts = []
    for c in cols:
        v = row_or_key.get(c)
        if v is None:
            continue
        parts.append(str(v) if c in ("method", "downstream") else f"{c}={v}")
    return ", ".join(parts) or "all"
