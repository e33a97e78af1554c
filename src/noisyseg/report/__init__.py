"""``noisyseg report SWEEP_DIR``: Markdown, PNG figures and CSV tables from ``results.csv`` only.

Each section is made only when the table has the columns it needs:

===================  ==========================  =============================================
section              needs                       shows
===================  ==========================  =============================================
``summary``          always                      mean ± 95 % CI over seeds of every grid point
``vs_r``             ``r`` (2+ values)           F1 / mIoU against the noisy-pairs rate (G&S Fig. 1, 4, 5)
``heatmap_rp``       ``r`` and ``p``             mIoU over (r, p), a panel per method
``noisy_minus_mere`` ``mere_exposure`` both      noisy pairs minus mere exposure over (r, p) (G&S Fig. 7–9)
``method_decoder``   ``method`` (2+ values)      method × downstream decoder (Liu et al.), incl. class mismatch
``alpha``            ``alpha``                   FALSE's α against mIoU, InfoNCE as reference line
``label_noise``      ``flip_rate``               mIoU against pretraining label noise (Liu et al.)
``vs_random``        a random-init ``method``    paired difference (same seed) of every arm to random
                     and 2+ seeds                init: mean ± 95 % CI, verdict from the CI
``robust_losses``    ``loss`` with ``ce_dice``   paired difference (same seed, same noise level) of every
                     and another loss            loss to CE + Dice per downstream: mean ± 95 % CI, better /
                                                 worse from the CI, a line per loss over the noise level
===================  ==========================  =============================================

Each section states its numbers and, for the paper finding it addresses, one sentence of the
finding, the paired difference it rests on (same seed: same data, same test set) as mean ± the
half-width of its 95 % t-interval, and a verdict from that interval: "reproduced" or "contradicted"
only when it excludes zero, "inconclusive" otherwise (and always with one seed).
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from noisyseg.report.figures import (
    Heat, Lines, bar_figure, ci_figure, heat_data, heatmap_figure, line_figure, lines_data, paired_lines_figure,
    varying,
)
from noisyseg.report.tables import (
    METRICS, Paired, ReportError, Stat, aggregate, ci_verdict, has_axis, is_random, label, load_table,
    markdown_table, paired, paired_between, per_seed, scored, stat, values_of, write_csv,
)
from noisyseg.runfiles import atomic_write

PARAMS_OF_STUDIES = ("r", "alpha", "flip_rate")


@dataclass
class Section:
    """One part of the report: its figure, the data the figure plotted, and its Markdown."""

    name: str
    title: str
    lines: list[str] = field(default_factory=list)
    figure: Path | None = None
    data: Any = None


def _line_section(rows, out: Path, name: str, title: str, axis: str, plot_title: str, xlabel: str,
                  finding: str) -> tuple[Section, Lines]:
    """A section plotting every scored metric against ``axis`` (``<name>.png``); also its mIoU lines."""
    data = {}
    for m in METRICS:
        if sub := scored(rows, m):
            data[m] = lines_data(sub, axis, m)
    sec = Section(name, title, [finding], line_figure(data, plot_title, xlabel, out / f"{name}.png"), data)
    return sec, data.get("miou", Lines(axis, "miou"))


def summary(rows, out: Path) -> Section:
    sec = Section("summary", "All grid points")
    params = varying(rows) or ["method"]
    cols = [c for c in params if c in rows[0]]
    per = {m: aggregate(scored(rows, m), cols) for m in METRICS}
    keys = sorted(set(per["miou"]) | set(per["f1"]), key=str)
    table = [[*(("" if v is None else v) for v in k), *(per[m][k].pct() if k in per[m] else "–" for m in METRICS),
              max((per[m][k].n for m in METRICS if k in per[m]), default=0)] for k in keys]
    header = [*cols, "mIoU (%)", "F1 (%)", "seeds"]
    write_csv(out / "summary.csv", header, table)
    runs = len({r["run"] for r in rows})
    sec.lines = [f"{runs} runs, seeds {values_of(rows, 'seed')}; scores in percent, mean ± 95 % CI over seeds "
                 f"(table: `summary.csv`)."]
    sec.lines += ["", markdown_table(header, table[:60])] + (["", f"({len(table) - 60} more rows in summary.csv)"]
                                                             if len(table) > 60 else [])
    sec.data = per
    return sec


def _diff_text(d: Paired | None, expect_greater: bool = True) -> str:
    """``difference +1.2 ± 0.8 points over 3 seeds — **reproduced**`` (paired by seed, 95 % CI)."""
    if d is None:
        return "no seed ran both arms — **inconclusive**"
    return f"difference {d.pct()} points over {d.n} seed{'s' if d.n != 1 else ''} — **{ci_verdict(d, expect_greater)}**"


def vs_r(rows, out: Path) -> Section:
    sub = [r for r in rows if r.get("mere_exposure") is not True]
    sec, miou = _line_section(
        sub, out, "vs_r", "Downstream score against the noisy-pairs rate r", "r",
        "downstream score vs noisy-pairs rate r", "noisy-pairs rate r",
        "Finding (Gerard & Sullivan, Fig. 1, 4, 5): MoCo v2 and the dense contrastive losses are robust "
        "to, or even helped by, partly mismatched positive pairs; only fully false pairs (p = 1) hurt. Per "
        "series: mIoU at the largest r minus at the smallest r, paired by seed. For p < 1 **contradicted** "
        "means the CI lies below zero (mismatched pairs hurt), **reproduced** above zero (they helped); for "
        "p = 1 the finding expects a drop.",
    )
    scores = scored(sub, "miou")
    for name, pts in miou.series.items():
        if is_random(name.split(",")[0], rows) or len(pts) < 2:
            continue
        (x0, a), (x1, b) = pts[0], pts[-1]
        keys = miou.keys[name]
        d = paired_between(scores, {**keys, "r": x1}, {**keys, "r": x0})
        p_match = re.search(r"\bp=([0-9.]+)", name)
        fully_false = p_match is not None and float(p_match.group(1)) >= 1.0
        sec.lines.append(f"- {name}: mIoU {a.pct()} at r={x0}, {b.pct()} at r={x1}; "
                         f"{_diff_text(d, expect_greater=not fully_false)}.")
    for name, st in miou.baselines.items():
        sec.lines.append(f"- reference {name}: mIoU {st.pct()}.")
    return sec


def heatmap_rp(rows, out: Path) -> Section:
    sec = Section("heatmap_rp", "mIoU over (r, p)")
    sub = [r for r in scored(rows, "miou") if r.get("mere_exposure") is not True]
    heat = heat_data(sub, "r", "p")
    sec.data = heat
    sec.figure = heatmap_figure(heat, "mIoU (%) over noisy-pairs rate r and per-image noise p", out / "heatmap_rp.png")
    lo, hi = (heat.xs[0], heat.ys[0]), (heat.xs[-1], heat.ys[-1])
    fully_false = float(hi[1]) >= 1.0
    if fully_false:
        sec.lines.append("Finding (Gerard & Sullivan): only fully false pairs hurt, so the (largest r, p = 1) cell is "
                         "below the (smallest r, smallest p) cell (paired by seed).")
    else:
        sec.lines.append("Finding (Gerard & Sullivan): partly mismatched pairs (p < 1) do not hurt, so the (largest r, "
                         "largest p) cell is not below the (smallest r, smallest p) cell (paired by seed; "
                         "**contradicted** only when the CI lies below zero).")
    for name, cells in heat.panels.items():
        if lo in cells and hi in cells:
            keys = heat.keys.get(name, {})
            d = paired_between(sub, {**keys, "r": hi[0], "p": hi[1]}, {**keys, "r": lo[0], "p": lo[1]})
            sec.lines.append(f"- {name}: mIoU {cells[lo].pct()} at (r={lo[0]}, p={lo[1]}), {cells[hi].pct()} at "
                             f"(r={hi[0]}, p={hi[1]}); {_diff_text(d, expect_greater=not fully_false)}.")
    return sec


def noisy_minus_mere(rows, out: Path) -> Section:
    sec = Section("noisy_minus_mere", "Noisy pairs minus mere exposure")
    sub = scored(rows, "miou")
    both = [r for r in sub if r.get("r") is not None and r.get("p") is not None]
    others = varying(both, exclude=("r", "p", "mere_exposure"))  # the same panels for both arms
    noisy = heat_data([r for r in both if r.get("mere_exposure") is False], "r", "p", others=others)
    mere = heat_data([r for r in both if r.get("mere_exposure") is True], "r", "p", others=others)
    diff: dict[str, dict[tuple, Stat]] = {}
    pairs: dict[str, dict[tuple, Paired]] = {}
    for name, cells in mere.panels.items():
        keys = mere.keys.get(name, {})
        for k in cells:
            a = per_seed(both, {**keys, "r": k[0], "p": k[1], "mere_exposure": False})
            b = per_seed(both, {**keys, "r": k[0], "p": k[1], "mere_exposure": True})
            diffs = [a[s] - b[s] for s in a if s in b]  # same seed: same scenes, same test set
            if diffs:
                diff.setdefault(name, {})[k] = stat(diffs)
                pairs.setdefault(name, {})[k] = paired(diffs)
    heat = Heat("r", "p", sorted({k[0] for c in diff.values() for k in c}), sorted({k[1] for c in diff.values() for k in c}),
                diff)
    sec.data = heat
    if not diff:
        sec.lines.append("No (r, p) has both a noisy-pairs and a mere-exposure run of the same seed.")
        return sec
    sec.figure = heatmap_figure(heat, "mIoU: noisy pairs − mere exposure (points, mean of paired differences)",
                                out / "noisy_minus_mere.png", diverging=True)
    sec.lines.append("Finding (Gerard & Sullivan, Fig. 7–9): mere exposure (the same noisy images, never in a "
                     "mismatched pair) is the control; partly mismatched pairs are no worse than mere exposure. "
                     "Noisy pairs minus mere exposure at the same (r, p) and seed: **contradicted** only when the "
                     "CI lies below zero.")
    for name, cells in pairs.items():
        k = max(cells)  # largest r (then p): where the effect should be clearest
        n, m = noisy.panels[name].get(k), mere.panels[name][k]
        sec.lines.append(f"- {name}: at (r={k[0]}, p={k[1]}) noisy pairs mIoU {n.pct() if n else '–'}, mere exposure "
                         f"{m.pct()}; {_diff_text(cells[k])}.")
    return sec


def method_decoder(rows, out: Path) -> Section:
    sec = Section("method_decoder", "Pretraining method × downstream decoder")
    sub = scored(rows, "miou")
    group_cols = [c for c in varying(sub, exclude=("downstream",))]
    cells: dict[tuple[str, str], Stat] = {}
    group_keys: dict[str, dict[str, Any]] = {}
    for key, st in aggregate(sub, group_cols + ["downstream"]).items():
        g = label(dict(zip(group_cols, key[:-1])), group_cols)
        group_keys[g] = dict(zip(group_cols, key[:-1]))
        cells[(g, str(key[-1]))] = st
    sec.data = cells
    groups = list(dict.fromkeys(k[0] for k in cells))
    downs = list(dict.fromkeys(k[1] for k in cells))
    table = [[g, *(cells[(g, d)].pct() if (g, d) in cells else "–" for d in downs)] for g in groups]
    write_csv(out / "method_decoder.csv", ["setting", *downs], table)
    sec.figure = bar_figure(cells, "mIoU by pretraining and downstream decoder (95 % CI)", "mIoU (%)",
                            out / "method_decoder_bars.png")
    sec.lines += ["mIoU (%), mean ± 95 % CI over seeds (`method_decoder.csv`):", "",
                  markdown_table(["setting", *downs], table), ""]
    randoms = [g for g in groups if is_random(g.split(",")[0], rows)]
    if not randoms:
        sec.lines.append("No random-initialisation arm in the table: the transfer finding cannot be checked.")
        return sec
    base = randoms[0]
    sec.lines.append(f"Finding (Liu et al.): an encoder pretrained on noisy labels transfers better than random "
                     f"initialisation to every decoder, also when the pretraining classes do not match the downstream "
                     f"ones. Each setting minus `{base}` with the same decoder and seed:")
    down_of = {str(r["downstream"]): r["downstream"] for r in sub}
    for g in groups:
        if g in randoms:
            continue
        for d in downs:
            if (g, d) in cells and (base, d) in cells:
                diff = paired_between(sub, {**group_keys[g], "downstream": down_of[d]},
                                      {**group_keys[base], "downstream": down_of[d]})
                sec.lines.append(f"- {g} → {d}: mIoU {cells[(g, d)].pct()} vs {cells[(base, d)].pct()}; "
                                 f"{_diff_text(diff)}.")
    return sec


def alpha(rows, out: Path) -> Section:
    sec, miou = _line_section(
        rows, out, "alpha", "FALSE: α against downstream mIoU", "alpha", "downstream score vs FALSE α", "α",
        "Finding (Zhang et al. 2022, FALSE): handling false negatives improves on plain InfoNCE, so "
        "FALSE scores above InfoNCE. Each α minus InfoNCE, paired by seed; the verdict is given for the best α, "
        "picked on these same scores (optimistic).",
    )
    scores = scored(rows, "miou")
    for name, pts in miou.series.items():
        ref = miou.baseline_for(name)
        parts = [f"α={x}: {st.pct()}" for x, st in pts]
        if ref is None:
            sec.lines.append(f"- {name}: " + ", ".join(parts) + " (no InfoNCE arm to compare with).")
            continue
        base_where = {**miou.keys[ref[0]], "alpha": None}
        diffs = {x: paired_between(scores, {**miou.keys[name], "alpha": x}, base_where) for x, _ in pts}
        parts = [f"α={x}: {st.pct()} ({diffs[x].pct() if diffs[x] else '–'} vs {ref[0]})" for x, st in pts]
        sec.lines.append(f"- {name}: " + ", ".join(parts) + f"; {ref[0]} {ref[1].pct()}.")
        x = max(pts, key=lambda p: p[1].mean)[0]  # the best alpha on these same scores
        sec.lines.append(f"- {name}, best α={x} minus {ref[0]}: {_diff_text(diffs[x])}.")
    return sec


def label_noise(rows, out: Path) -> Section:
    sec, miou = _line_section(
        rows, out, "label_noise", "Downstream mIoU against pretraining label noise", "flip_rate",
        "downstream score vs pretraining label noise", "flip rate",
        "Finding (Liu et al.): noisy-label pretraining tolerates heavy label noise, so even at the "
        "largest flip rate it transfers better than random initialisation (paired by seed and downstream).",
    )
    scores = scored(rows, "miou")
    for name, pts in miou.series.items():
        (x0, a), (x1, b) = pts[0], pts[-1]
        base = miou.baseline_for(name)
        text = f"- {name}: mIoU {a.pct()} at flip rate {x0}, {b.pct()} at {x1}"
        if base:
            d = paired_between(scores, {**miou.keys[name], "flip_rate": x1}, {**miou.keys[base[0]], "flip_rate": None})
            text += f"; {base[0]} {base[1].pct()}; flip rate {x1} minus {base[0]}: {_diff_text(d)}."
        else:
            text += " — **inconclusive (no random-init arm to compare with)**."
        sec.lines.append(text)
    return sec


def vs_random(rows, out: Path) -> Section | None:
    """Every arm minus random initialisation, paired by seed: mean ± 95 % CI and a CI verdict.

    An arm (method x downstream, plus any other varying column) is paired with the random-init
    run of the same seed and the same downstream; a downstream that the random arm lacks (e.g.
    ``pretrained``, the pretraining network scored without fine-tuning) is paired with the random
    arm's first downstream.
    """
    sec = Section("vs_random", "Paired differences to random initialisation (95 % CI over seeds)")
    randoms = [m for m in values_of(rows, "method") if is_random(m, rows)]
    if not randoms:
        return None
    base_method = randoms[0]
    cols = [c for c in varying(rows, exclude=("downstream",)) if c != "method"]
    table, cells = [], {}
    for metric in METRICS:
        sub = scored(rows, metric)
        base = {(r["seed"], r["downstream"]): r["value"] for r in sub if r["method"] == base_method}
        if not base:
            continue
        base_downs = list(dict.fromkeys(dn for _, dn in base))
        arms: dict[tuple, dict[int, float]] = {}  # (method, downstream, *cols, reference downstream) -> seed -> diff
        for r in sub:
            if r["method"] == base_method:
                continue
            ref_down = r["downstream"] if r["downstream"] in base_downs else base_downs[0]
            ref = base.get((r["seed"], ref_down))
            if ref is not None:
                key = (r["method"], r["downstream"], *(r.get(c) for c in cols), ref_down)
                arms.setdefault(key, {})[r["seed"]] = r["value"] - ref
        for key, per_seed in arms.items():
            d = cells[(metric, key[:-1])] = paired(list(per_seed.values()))
            table.append([metric, *(("" if v is None else v) for v in key[:-1]), f"{base_method}/{key[-1]}",
                          d.pct(), d.n, ci_verdict(d)])
    if not table:
        return None
    header = ["metric", "method", "downstream", *cols, "minus", "difference (points, 95 % CI)", "seeds", "verdict"]
    write_csv(out / "vs_random.csv", header, table)
    sec.data = cells
    miou = {" / ".join(str(v) for v in k[1] if v is not None): d for k, d in cells.items() if k[0] == "miou"}
    sec.figure = ci_figure(miou, "mIoU difference to random init (points, 95 % CI)", out / "vs_random_ci.png") if miou else None  # its data: vs_random_ci.csv
    sec.lines = [
        "Each arm minus random initialisation in the same seed (same data split, same test crops), mean of the "
        "per-seed differences ± the half-width of its 95 % t-interval. **reproduced** (the arm beats random init) or "
        "**contradicted** only when the interval excludes zero; otherwise **inconclusive** (`vs_random.csv`).",
        "", markdown_table(header, table),
    ]
    return sec


BASELINE_LOSS = "ce_dice"
"""The ``loss`` value every other loss is compared with (CE + Dice, ``loss: null``)."""

NOISE_COLUMNS = ("flip_rate", "drop_rate")
"""Columns that give a run's label-noise level; the first one in the table is ``robust_losses``' x axis."""


def better_or_worse(d: Paired) -> str:
    """``better`` / ``worse`` than the baseline only when the 95 % CI excludes zero, else inconclusive."""
    v = ci_verdict(d)
    return {"reproduced": "better", "contradicted": "worse"}.get(v, v)


def robust_losses(rows, out: Path) -> Section | None:
    """Each noise-robust loss minus CE + Dice, paired by seed and noise level: mean ± 95 % CI.

    A run of loss ``L`` is paired with the ``ce_dice`` run of the same seed, the same noise level
    (the first of :data:`NOISE_COLUMNS` in the table), the same downstream and the same value of
    every other varying column; runs without a partner are left out (the ``seeds`` column counts
    the pairs). Verdict from the CI (:func:`better_or_worse`). Writes ``robust_losses.csv`` (every
    metric) and ``robust_losses_lines.png`` (mIoU: a panel per downstream, a line per loss against
    the noise level; its data in ``robust_losses_lines.csv``).

    Returns:
        None when the table has no ``ce_dice`` runs or no other loss.
    """
    loss_order = list(dict.fromkeys(r["loss"] for r in rows if r.get("loss") is not None))  # grid order
    losses = [v for v in loss_order if v != BASELINE_LOSS]
    if BASELINE_LOSS not in loss_order or not losses:
        return None
    noise = next((c for c in NOISE_COLUMNS if has_axis(rows, c, 1)), None)
    others = varying(rows, exclude=("downstream", "loss", *NOISE_COLUMNS))
    down_order = list(dict.fromkeys(r["downstream"] for r in rows))

    def setting(r: dict[str, Any]) -> tuple:  # what a pair shares besides the seed
        return (r["downstream"], r.get(noise) if noise else None, *(r.get(c) for c in others))

    cells: dict[tuple, Paired] = {}  # (metric, loss, downstream, noise level, *others) -> difference
    for metric in METRICS:
        sub = [r for r in scored(rows, metric) if r.get("loss") is not None]
        base = {(r["seed"], *setting(r)): r["value"] for r in sub if r["loss"] == BASELINE_LOSS}
        diffs: dict[tuple, dict[int, float]] = {}  # (loss, *setting) -> seed -> loss minus ce_dice
        for r in sub:
            ref = base.get((r["seed"], *setting(r)))
            if r["loss"] != BASELINE_LOSS and ref is not None:
                diffs.setdefault((r["loss"], *setting(r)), {})[r["seed"]] = r["value"] - ref
        for key, per_seed in diffs.items():
            cells[(metric, *key)] = paired(list(per_seed.values()))
    if not cells:
        return None

    def order(k: tuple) -> tuple:  # metric, downstream, noise level, loss (grid order), others
        level = k[3]
        return (METRICS.index(k[0]), down_order.index(k[2]), level is None, level if level is not None else 0,
                losses.index(k[1]), [str(v) for v in k[4:]])

    keys = sorted(cells, key=order)
    noise_col = noise or "noise"
    header = ["metric", "downstream", noise_col, "loss", *others, f"minus {BASELINE_LOSS} (points, 95 % CI)", "seeds",
              "verdict"]
    table = [[k[0], k[2], "" if k[3] is None else k[3], k[1], *("" if v is None else v for v in k[4:]), cells[k].pct(),
              cells[k].n, better_or_worse(cells[k])] for k in keys]
    write_csv(out / "robust_losses.csv", header, table)
    sec = Section("robust_losses", f"Noise-robust losses minus {BASELINE_LOSS} (paired, 95 % CI over seeds)")
    sec.data = cells
    panels: dict[str, dict[str, list[tuple[Any, Paired]]]] = {}
    for k in keys:
        if k[0] == "miou":
            panel = label({"downstream": k[2], **dict(zip(others, k[4:]))}, ["downstream", *others])
            panels.setdefault(panel, {}).setdefault(k[1], []).append((k[3], cells[k]))
    sec.figure = paired_lines_figure(
        panels, f"mIoU: each loss minus {BASELINE_LOSS} (points, 95 % CI)", noise_col.replace("_", " "),
        f"mIoU difference to {BASELINE_LOSS} (points)", out / "robust_losses_lines.png") if panels else None
    sec.lines = [
        f"Each noise-robust loss minus CE + Dice (`{BASELINE_LOSS}`) in the same seed and at the same "
        f"{noise_col.replace('_', ' ')}, mean of the per-seed differences ± the half-width of its 95 % "
        "t-interval. **better** or **worse** only when the interval excludes zero; otherwise **inconclusive**. "
        f"mIoU below, every metric in `robust_losses.csv`.",
        "", markdown_table([h for h in header if h != "metric"], [row[1:] for row in table if row[0] == "miou"]), "",
    ]
    for loss in losses:
        mine = [better_or_worse(d) for k, d in cells.items() if k[0] == "miou" and k[1] == loss]
        if mine:
            sec.lines.append(f"- {loss}: better in {mine.count('better')}, worse in {mine.count('worse')}, "
                             f"inconclusive in {len(mine) - mine.count('better') - mine.count('worse')} of "
                             f"{len(mine)} (downstream, {noise_col.replace('_', ' ')}) settings (mIoU).")
    return sec


def build_report(rows: list[dict[str, Any]], out: Path) -> list[Section]:
    """Every section the table's columns allow, written into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    sections = [summary(rows, out)]
    if has_axis(rows, "r"):
        sections.append(vs_r(rows, out))
        if has_axis(rows, "p"):
            sections.append(heatmap_rp(rows, out))
    if {True, False} <= set(values_of(rows, "mere_exposure")) and has_axis(rows, "r", 1):
        sections.append(noisy_minus_mere(rows, out))
    if has_axis(rows, "method") and not any(has_axis(rows, c) for c in PARAMS_OF_STUDIES):
        sections.append(method_decoder(rows, out))
    if has_axis(rows, "alpha"):
        sections.append(alpha(rows, out))
    if has_axis(rows, "flip_rate"):
        sections.append(label_noise(rows, out))
    if has_axis(rows, "seed") and (sec := vs_random(rows, out)) is not None:
        sections.append(sec)
    if has_axis(rows, "loss") and (sec := robust_losses(rows, out)) is not None:
        sections.append(sec)
    return sections


def render(sections: list[Section], source: Path) -> str:
    lines = ["# Sweep report", "", f"Made from `{source}` only. Scores in percent (mean ± 95 % CI over seeds).", ""]
    for s in sections:
        lines += [f"## {s.title}", ""]
        if s.figure is not None:
            lines += [f"![{s.name}]({s.figure.name})", ""]
        lines += s.lines + [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="noisyseg report", description=__doc__.splitlines()[0])
    ap.add_argument("sweep_dir", help="a sweep's output folder (holds results.csv)")
    ap.add_argument("--out", help="report folder (default SWEEP_DIR/report)")
    args = ap.parse_args(argv)
    src = Path(args.sweep_dir) / "results.csv"
    try:
        rows = load_table(src)
        out = Path(args.out) if args.out else Path(args.sweep_dir) / "report"
        sections = build_report(rows, out)
    except (ReportError, PermissionError, OSError) as e:
        print(f"noisyseg report: error: {e}", file=sys.stderr)
        return 2
    text = render(sections, src)
    atomic_write(out / "report.md", lambda tmp: Path(tmp).write_text(text))
    print(text)
    print(f"[report] {out / 'report.md'} ({len(sections)} sections)")
    return 0
