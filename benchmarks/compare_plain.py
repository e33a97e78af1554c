"""The toolkit's building study against the plain reference loop, on the same crops and seeds.

For every arm (method / downstream) present in both tables: the mean mIoU of each pipeline with
its 95 % t-interval over seeds, the toolkit-minus-plain difference paired by seed (the same tile
split and test crops), and each pipeline's gain over its own random init (paired by seed). The
toolkit passes an arm when its mean lies within the plain loop's seed CI or above it.

    python benchmarks/compare_plain.py runs/studies/buildings_noisy_labels-quick runs/plain/buildings-quick
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from noisyseg.report.tables import load_table, markdown_table, paired, scored


def by_arm(rows: list[dict], metric: str) -> dict[tuple[str, str], dict[int, float]]:
    """``(method, downstream) -> {seed: value}`` of one metric on the test split."""
    out: dict[tuple[str, str], dict[int, float]] = {}
    for r in scored(rows, metric):
        out.setdefault((r["method"], r["downstream"]), {})[int(r["seed"])] = float(r["value"])
    return out


def gains(arms: dict[tuple[str, str], dict[int, float]]) -> dict[tuple[str, str], list[float]]:
    """Per arm, its per-seed difference to random init's ``finetune`` arm."""
    base = arms.get(("random", "finetune"), {})
    return {k: [v[s] - base[s] for s in sorted(v) if s in base] for k, v in arms.items() if k[0] != "random"}


def compare(toolkit: list[dict], plain: list[dict], metric: str = "miou") -> tuple[list[list], bool]:
    """The comparison table and whether every shared arm passes."""
    tk, pl = by_arm(toolkit, metric), by_arm(plain, metric)
    tk_gain, pl_gain = gains(tk), gains(pl)
    table, ok = [], True
    for arm in [a for a in pl if a in tk]:
        seeds = sorted(set(tk[arm]) & set(pl[arm]))
        if not seeds:
            continue
        t, p = paired([tk[arm][s] for s in seeds]), paired([pl[arm][s] for s in seeds])
        diff = paired([tk[arm][s] - pl[arm][s] for s in seeds])
        passed = t.mean >= p.low  # within the plain loop's seed CI, or above it
        ok &= passed
        g_t = paired(tk_gain[arm]).pct() if tk_gain.get(arm) else "–"
        g_p = paired(pl_gain[arm]).pct() if pl_gain.get(arm) else "–"
        table.append(["/".join(arm), f"{100 * t.mean:.1f} ± {100 * t.half_width:.1f}",
                      f"{100 * p.mean:.1f} ± {100 * p.half_width:.1f}", diff.pct(), g_t, g_p, len(seeds),
                      "yes" if passed else "**no**"])
    return table, ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("toolkit", help="the sweep's output folder (results.csv)")
    ap.add_argument("plain", help="buildings_plain_loop.py's output folder (results.csv)")
    ap.add_argument("--metric", default="miou")
    args = ap.parse_args(argv)
    table, ok = compare(load_table(Path(args.toolkit) / "results.csv"), load_table(Path(args.plain) / "results.csv"),
                        args.metric)
    header = ["arm", "toolkit (95 % CI)", "plain loop (95 % CI)", "toolkit − plain (paired)",
              "toolkit gain over random", "plain gain over random", "seeds", "toolkit within plain CI or above"]
    text = markdown_table(header, table)
    print(f"{args.metric} in points, mean ± half-width of the 95 % t-interval over seeds\n\n{text}")
    out = Path(args.toolkit) / "report" / "vs_plain_loop.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    print(f"[compare] {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
