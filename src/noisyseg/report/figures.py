"""Figures of a sweep report, each with the data it plots (returned, and written beside it as CSV).

* :func:`line_figure` — a score against one parameter (r, α, flip rate), one line per setting of
  the other varying parameters, mean ± 95 % CI over seeds as error bars; arms where the parameter does
  not apply (random initialisation) as dashed horizontal lines.
* :func:`heatmap_figure` — mean score over two parameters (r × p), one panel per setting of the
  others; also used for differences (noisy pairs minus mere exposure).
* :func:`bar_figure` — grouped bars (pretraining method × downstream decoder), 95 % CI error bars.
* :func:`ci_figure` — paired differences with their confidence intervals, zero marked.
* :func:`paired_lines_figure` — paired differences against a level (label noise), one panel per
  downstream, one line per arm (loss), confidence intervals as error bars, zero marked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from noisyseg.report.tables import Paired, Stat, aggregate, label, values_of, write_csv  # noqa: E402
from noisyseg.runfiles import atomic_write  # noqa: E402

FIXED = {"run", "seed", "split", "metric", "value", "seconds", "pretrain_seconds", "decoder", "frozen"}
"""Columns that are not parameters of a run (``decoder``/``frozen`` follow from ``downstream``)."""


def varying(rows: list[dict[str, Any]], exclude: tuple[str, ...] = ()) -> list[str]:
    """Parameter columns that take two or more values in ``rows`` (in table order)."""
    cols = [c for c in (rows[0] if rows else {}) if c not in FIXED and c not in exclude]
    return [c for c in cols if len(values_of(rows, c)) >= 2]


@dataclass
class Lines:
    """What a line plot shows: ``series[label] = [(x, Stat)]``, ``baselines[label] = Stat``."""

    x: str
    metric: str
    series: dict[str, list[tuple[Any, Stat]]] = field(default_factory=dict)
    baselines: dict[str, Stat] = field(default_factory=dict)
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)  # label -> the column values it stands for

    def baseline_for(self, name: str) -> tuple[str, Stat] | None:
        """The reference line of the same setting (e.g. the same downstream) as series ``name``.

        Columns on which reference lines differ from every series by construction (``method``
        random, ``false_negative`` none) are not compared; the others (``downstream``) must match.
        """
        mine = self.keys.get(name, {})
        in_series = {c: {self.keys[n].get(c) for n in self.series} for c in mine}
        for bname, s in self.baselines.items():
            theirs = self.keys.get(bname, {})
            shared = [c for c, v in theirs.items() if v is not None and v in in_series.get(c, ())]
            if all(mine.get(c) == theirs[c] for c in shared):
                return bname, s
        return None


def lines_data(rows: list[dict[str, Any]], x: str, metric: str) -> Lines:
    """Group one metric's rows into series over ``x`` (other varying parameters name the series)."""
    others = varying(rows, exclude=(x,))
    out = Lines(x, metric)
    with_x = [r for r in rows if r.get(x) is not None]
    series: dict[str, list[tuple[Any, Stat]]] = {}
    for key, s in aggregate(with_x, others + [x]).items():
        name = label(dict(zip(others, key[:-1])), others)
        out.keys[name] = dict(zip(others, key[:-1]))
        series.setdefault(name, []).append((key[-1], s))
    out.series = {name: sorted(pts, key=lambda p: p[0]) for name, pts in sorted(series.items())}
    # arms without the parameter (random init, plain InfoNCE): constant reference lines
    for key, s in aggregate([r for r in rows if r.get(x) is None], others).items():
        name = label(dict(zip(others, key)), others)
        name = f"no {x}" if name == "all" else name
        out.baselines[name], out.keys[name] = s, dict(zip(others, key))
    return out


def _bar(half_width: float) -> float:
    """An error bar in points: a 95 % CI half-width, none for one seed (its interval is infinite)."""
    return 0.0 if math.isinf(half_width) else 100 * half_width


def _save(fig, path: Path) -> Path:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
    return path


def line_figure(per_metric: dict[str, Lines], title: str, xlabel: str, path: Path) -> Path:
    """One panel per metric; writes ``path`` (PNG) and ``path.with_suffix('.csv')`` (the data)."""
    fig, axes = plt.subplots(1, len(per_metric), figsize=(5.5 * len(per_metric), 4), squeeze=False,
                             layout="constrained")
    table = []
    for ax, (metric, data) in zip(axes[0], per_metric.items()):
        for name, pts in data.series.items():
            xs = [p[0] for p in pts]
            ax.errorbar(xs, [100 * p[1].mean for p in pts], yerr=[_bar(p[1].half_width) for p in pts],
                        marker="o", capsize=3, label=name)
            table += [[metric, name, x, s.mean, s.std, s.half_width, s.n] for x, s in pts]
        for i, (name, s) in enumerate(data.baselines.items()):
            ax.axhline(100 * s.mean, ls="--", color=f"C{(len(data.series) + i) % 10}", label=f"{name} (baseline)")
            table.append([metric, f"{name} (baseline)", "", s.mean, s.std, s.half_width, s.n])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{metric} (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    write_csv(path.with_suffix(".csv"), ["metric", "series", data.x, "mean", "std", "half_width", "n"], table)
    return _save(fig, path)


@dataclass
class Heat:
    """Panels of a heatmap: ``panels[label] = {(x, y): Stat}`` over ``xs`` × ``ys``."""

    x: str
    y: str
    xs: list[Any]
    ys: list[Any]
    panels: dict[str, dict[tuple, Stat]]
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)  # panel -> the column values it stands for


def heat_data(rows: list[dict[str, Any]], x: str, y: str, exclude: tuple[str, ...] = (),
              others: list[str] | None = None) -> Heat:
    """Mean ± std over seeds at each (x, y), one panel per setting of the other varying parameters.

    ``others`` fixes the panel columns (so two heatmaps of subsets get the same panel names).
    """
    rows = [r for r in rows if r.get(x) is not None and r.get(y) is not None]
    if others is None:
        others = varying(rows, exclude=(x, y, *exclude))
    panels: dict[str, dict[tuple, Stat]] = {}
    keys: dict[str, dict[str, Any]] = {}
    for key, s in aggregate(rows, others + [x, y]).items():
        name = label(dict(zip(others, key[:-2])), others)
        keys[name] = dict(zip(others, key[:-2]))
        panels.setdefault(name, {})[key[-2:]] = s
    return Heat(x, y, values_of(rows, x), values_of(rows, y), dict(sorted(panels.items())), keys)


def heatmap_figure(heat: Heat, title: str, path: Path, diverging: bool = False) -> Path:
    """One panel per entry of ``heat.panels``; cells in percent; data also as CSV."""
    n = len(heat.panels)
    fig, axes = plt.subplots(1, n, figsize=(1.2 + 0.9 * max(3, len(heat.xs)) * n, 1.5 + 0.6 * max(3, len(heat.ys))),
                             squeeze=False, layout="constrained")
    allv = [100 * s.mean for p in heat.panels.values() for s in p.values()]
    lim = max((abs(v) for v in allv), default=1.0) or 1.0
    vmin, vmax = (-lim, lim) if diverging else (min(allv, default=0), max(allv, default=1))
    table = []
    for ax, (name, cells) in zip(axes[0], heat.panels.items()):
        grid = np.full((len(heat.ys), len(heat.xs)), math.nan)
        for (xv, yv), s in cells.items():
            grid[heat.ys.index(yv), heat.xs.index(xv)] = 100 * s.mean
            table.append([name, xv, yv, s.mean, s.std, s.n])
        im = ax.imshow(grid, origin="lower", cmap="RdBu" if diverging else "viridis", vmin=vmin, vmax=vmax,
                       aspect="auto")
        for i in range(len(heat.ys)):
            for j in range(len(heat.xs)):
                if not math.isnan(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.1f}", ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(heat.xs)), [str(v) for v in heat.xs])
        ax.set_yticks(range(len(heat.ys)), [str(v) for v in heat.ys])
        ax.set_xlabel(heat.x)
        ax.set_ylabel(heat.y)
        ax.set_title(name, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.05)
    fig.suptitle(title)
    write_csv(path.with_suffix(".csv"), ["panel", heat.x, heat.y, "mean", "std", "n"], table)
    return _save(fig, path)


def bar_figure(cells: dict[tuple[str, str], Stat], title: str, ylabel: str, path: Path) -> Path:
    """Grouped bars: groups = first key (method), bars = second key (downstream); data as CSV."""
    groups = list(dict.fromkeys(k[0] for k in cells))
    bars = list(dict.fromkeys(k[1] for k in cells))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(groups) * max(1, len(bars)) * 0.5 + 2), 4))
    width = 0.8 / max(1, len(bars))
    for j, b in enumerate(bars):
        xs = [i + j * width for i, g in enumerate(groups) if (g, b) in cells]
        st = [cells[(g, b)] for g in groups if (g, b) in cells]
        ax.bar(xs, [100 * s.mean for s in st], width, yerr=[_bar(s.half_width) for s in st], capsize=3, label=b)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))], groups, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title)
    write_csv(path.with_suffix(".csv"), ["group", "bar", "mean", "std", "half_width", "n"],
              [[g, b, s.mean, s.std, s.half_width, s.n] for (g, b), s in cells.items()])
    return _save(fig, path)


def ci_figure(diffs: dict[str, Paired], xlabel: str, path: Path) -> Path:
    """One row per arm: mean difference (points) with its CI; blue above zero, red below, grey across."""
    fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(diffs) + 1.2))
    for i, d in enumerate(diffs.values()):
        err = 0.0 if math.isinf(d.half_width) else 100 * d.half_width
        color = "C0" if d.n > 1 and d.low > 0 else "C3" if d.n > 1 and d.high < 0 else "grey"
        ax.errorbar(100 * d.mean, i, xerr=err, fmt="o", capsize=4, color=color)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(range(len(diffs)), list(diffs), fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.3)
    write_csv(path.with_suffix(".csv"), ["arm", "mean", "half_width", "n"],
              [[k, d.mean, d.half_width, d.n] for k, d in diffs.items()])
    return _save(fig, path)


def paired_lines_figure(panels: dict[str, dict[str, list[tuple[Any, Paired]]]], title: str, xlabel: str,
                        ylabel: str, path: Path) -> Path:
    """Paired differences against a level: one panel per key, one line per series, CI error bars.

    Args:
        panels: ``panels[panel][series] = [(level, Paired)]``; the levels of all panels share one
            axis (evenly spaced, in sorted order, labelled with their values); the lines are set a
            little apart so that their error bars do not hide each other.
        title: figure title.
        xlabel: name of the level axis.
        ylabel: name of the difference axis.
        path: the PNG; the data goes to ``path.with_suffix('.csv')``.
    """
    levels = values_of([{"x": x} for p in panels.values() for pts in p.values() for x, _ in pts], "x")
    levels += [None] if any(x is None for p in panels.values() for pts in p.values() for x, _ in pts) else []
    names = list(dict.fromkeys(n for p in panels.values() for n in p))  # one colour per series in every panel
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(5.0 * max(1, len(panels)), 4), squeeze=False,
                             sharey=True, layout="constrained")
    table = []
    for ax, (panel, series) in zip(axes[0], panels.items()):
        for name, pts in series.items():
            i = names.index(name)
            dodge = 0.08 * (i - (len(names) - 1) / 2)  # series side by side at each level
            xs = [levels.index(x) + dodge for x, _ in pts]
            err = [0.0 if math.isinf(d.half_width) else 100 * d.half_width for _, d in pts]  # one seed: no bar
            ax.errorbar(xs, [100 * d.mean for _, d in pts], yerr=err, marker="o", capsize=3, label=name,
                        color=f"C{i % 10}")
            table += [[panel, name, x, d.mean, d.half_width, d.n] for x, d in pts]
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(range(len(levels)), ["–" if v is None else str(v) for v in levels])
        ax.set_xlim(-0.5, len(levels) - 0.5)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(panel, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    write_csv(path.with_suffix(".csv"), ["panel", "series", "level", "mean", "half_width", "n"], table)
    return _save(fig, path)
