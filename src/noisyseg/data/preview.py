"""``noisyseg data preview``: what the loaders make of a data config, before any training.

    noisyseg data preview --config configs/data/xbd_shared.yaml --out runs/preview/xbd \
        [--write-masks] [--max-previews 4] [--max-samples 0]

The config is the ``data:`` section (``class_path: noisyseg.data.DataModule`` with datasets in
``init_args.train/val/test``) or a whole LightningCLI config holding a top-level ``data:`` key.
Classes are imported from their dotted ``class_path`` and called with their (recursively
instantiated) ``init_args``, the same objects LightningCLI would build.

Writes ``summary.json`` / ``summary.md`` (per split: samples, sources, class frequencies,
noisy-pair count, band statistics, the dataset's own ``stats`` and ``normalization``, and for
datasets with ``mask`` and ``clean_mask`` the realised label noise of
:mod:`noisyseg.data.label_noise`, also printed), PNG previews
(RGB from the first three bands with a per-band 2-98 % stretch, mask overlay, pairs side by side)
and, with ``--write-masks``, every mask as a PNG named after its source.

``noisyseg data noise-report`` (:func:`noise_report_main`) measures the realised label noise of one
split of a config (:func:`~noisyseg.data.label_noise.dataset_agreement`: noisy ``mask`` vs
``clean_mask``) and writes the confusion matrix as CSV, as a heatmap PNG (:func:`confusion_figure`)
and a JSON summary (:func:`write_noise_report`)::

    noisyseg data noise-report --config configs/pretrain/supervised_buildings_noisy.yaml \
        [--split train] [--samples N] [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image
from tqdm import tqdm

from noisyseg import config
from noisyseg.data.cache import InMemory
from noisyseg.data.label_noise import AgreementCounter, dataset_agreement, format_agreement
from noisyseg.data.loading import CHANGE_MASK, CLEAN_MASK, IMAGE, IMAGE2, MASK, MASK2, META, NOISY_PAIR
from noisyseg.runfiles import atomic_write

MASK_KEYS = (MASK, MASK2, CHANGE_MASK)


class PreviewError(Exception):
    """A user error reported as one line with exit code 2."""


# ---------------------------------------------------------------------------------- instantiation
def instantiate(node: Any) -> Any:
    """Build a data module or dataset from nested ``{class_path, init_args}`` dicts (:mod:`noisyseg.config`).

    Raises:
        PreviewError: a class path that does not import, is not a data module / dataset (nested:
            of :func:`noisyseg.config.allowed_kinds`; checked before anything is built), or
            init_args it does not take.
    """
    import lightning.pytorch as pl
    import torch

    try:
        return config.instantiate(node, (pl.LightningDataModule, torch.utils.data.Dataset))
    except ValueError as err:
        raise PreviewError(str(err)) from err


def load_splits(config: Path) -> dict[str, Any]:
    """``{split: dataset}`` from a data config or a whole LightningCLI config.

    Raises:
        PreviewError: the file is missing, not YAML, or has no data section.
    """
    if not config.is_file():
        raise PreviewError(f"config file not found: {config}")
    try:
        cfg = yaml.safe_load(config.read_text())
    except yaml.YAMLError as err:
        raise PreviewError(f"{config} is not valid YAML: {err}".replace("\n", " ")) from err
    if isinstance(cfg, dict) and "data" in cfg:
        cfg = cfg["data"]
    if not isinstance(cfg, dict) or "class_path" not in cfg:
        raise PreviewError(f"{config} has no data section: expected 'class_path: noisyseg.data.DataModule' "
                           f"(or a top-level 'data:' key holding it)")
    obj = instantiate(cfg)
    if hasattr(obj, "__getitem__") and hasattr(obj, "__len__"):
        return {"data": obj}  # a bare dataset
    splits = {s: getattr(obj, f"{s}_set", None) for s in ("train", "val", "test")}
    return {s: d for s, d in splits.items() if d is not None}


# ------------------------------------------------------------------------------------ rendering
def stretch(image: np.ndarray) -> np.ndarray:
    """``[C, H, W]`` -> ``[H, W, 3]`` uint8 from the first three bands, 2-98 % per band."""
    bands = image[:3] if image.shape[0] >= 3 else np.repeat(image[:1], 3, 0)  # [3, H, W]
    out = np.zeros(bands.shape[1:] + (3,), np.uint8)
    for b in range(3):
        lo, hi = np.percentile(bands[b], [2, 98])
        out[..., b] = (np.clip((bands[b] - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)
    return out


def overlay(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Blend class colours over ``rgb`` (class 0 transparent, IGNORE_INDEX grey)."""
    palette = np.array([[0, 0, 0], [230, 25, 75], [255, 225, 25], [245, 130, 48], [145, 30, 180],
                        [60, 180, 75], [0, 130, 200], [240, 50, 230]], np.float32)
    out = rgb.astype(np.float32)
    for c in np.unique(mask):
        if c == 0:
            continue
        colour = np.array([128, 128, 128], np.float32) if c == 255 else palette[int(c) % len(palette)]
        sel = mask == c
        out[sel] = 0.5 * out[sel] + 0.5 * colour
    return out.astype(np.uint8)


def preview_png(sample: dict[str, Any], path: Path) -> None:
    """Image, mask overlay, and for pairs the second image and its mask, side by side."""
    panels = [stretch(sample[IMAGE].numpy())]
    first_mask = next((sample[k] for k in (MASK, CHANGE_MASK) if k in sample), None)
    if first_mask is not None:
        panels.append(overlay(panels[0], first_mask.numpy()))
    if IMAGE2 in sample:
        rgb2 = stretch(sample[IMAGE2].numpy())
        panels.append(rgb2)
        second = sample.get(MASK2, sample.get(CHANGE_MASK))
        if second is not None:
            panels.append(overlay(rgb2, second.numpy()))
    gap = np.full((panels[0].shape[0], 4, 3), 255, np.uint8)
    row = np.concatenate([p for panel in panels for p in (panel, gap)][:-1], 1)  # [H, n*W, 3]
    atomic_write(path, lambda tmp: Image.fromarray(row).save(tmp, format="PNG"))


def _name(sample: dict[str, Any], index: int) -> str:
    meta = sample.get(META, {})
    stem = Path(str(meta.get("source") or meta.get("id") or f"sample{index}")).name.split(".")[0]
    where = meta.get("tile") or meta.get("window")
    return f"{stem}_r{where[0]}_c{where[1]}" if where else stem


# -------------------------------------------------------------------------------------- summary
def summarise(name: str, ds: Any, out: Path, max_previews: int, max_samples: int, write_masks: bool) -> dict:
    """Iterate one split: counts, class frequencies, band moments; previews and masks."""
    n = len(ds) if not max_samples else min(len(ds), max_samples)
    freqs = {k: Counter() for k in MASK_KEYS}
    sources, noisy, pairs = set(), 0, 0
    band_sum = band_sq = band_min = band_max = None
    pixels = 0
    agreement = AgreementCounter()  # noisy mask vs clean_mask, for datasets with both
    for i in tqdm(range(n), desc=f"preview {name}", unit="sample", file=sys.stderr):
        s = ds[i]
        x = s[IMAGE].numpy().reshape(s[IMAGE].shape[0], -1).astype(np.float64)  # [C, H*W]
        if band_sum is None:
            band_sum, band_sq = np.zeros(x.shape[0]), np.zeros(x.shape[0])
            band_min, band_max = np.full(x.shape[0], np.inf), np.full(x.shape[0], -np.inf)
        band_sum += x.sum(1)
        band_sq += (x**2).sum(1)
        band_min, band_max = np.minimum(band_min, x.min(1)), np.maximum(band_max, x.max(1))
        pixels += x.shape[1]
        sources.add(str(s.get(META, {}).get("source", i)))
        for k in MASK_KEYS:
            if k in s:
                vals, cnt = np.unique(s[k].numpy(), return_counts=True)
                freqs[k].update(dict(zip(vals.tolist(), cnt.tolist())))
        if MASK in s and CLEAN_MASK in s:
            agreement.update(s[MASK].numpy(), s[CLEAN_MASK].numpy())
        if NOISY_PAIR in s:
            pairs += 1
            noisy += int(bool(s[NOISY_PAIR]))
        if i < max_previews:
            (out / "previews").mkdir(parents=True, exist_ok=True)
            preview_png(s, out / "previews" / f"{name}_{i:03d}_{_name(s, i)}.png")
        if write_masks:
            folder = out / "masks" / name
            folder.mkdir(parents=True, exist_ok=True)
            for k in MASK_KEYS:
                if k in s:
                    suffix = "" if k == MASK else f"_{k}"
                    m = Image.fromarray(s[k].numpy().astype(np.uint8))
                    atomic_write(folder / f"{_name(s, i)}{suffix}.png", lambda tmp, m=m: m.save(tmp, format="PNG"))
    summary: dict[str, Any] = {"dataset": type(ds).__name__, "samples": len(ds), "summarised": n,
                               "sources": len(sources)}
    for k in MASK_KEYS:
        total = sum(freqs[k].values())
        if total:
            summary[f"{k}_class_frequency"] = {str(c): v / total for c, v in sorted(freqs[k].items())}
    if pairs:
        summary["noisy_pairs"], summary["pairs"] = noisy, pairs
    if agreement.samples:
        summary["label_agreement"] = agreement.result()
    if pixels:
        mean = band_sum / pixels
        summary["bands"] = {"mean": mean.tolist(), "std": np.sqrt(np.maximum(band_sq / pixels - mean**2, 0)).tolist(),
                            "min": band_min.tolist(), "max": band_max.tolist()}
    for attr in ("stats", "normalization"):
        if getattr(ds, attr, None) is not None:
            summary[attr] = json.loads(json.dumps(getattr(ds, attr), default=str))
    return summary


def to_markdown(summary: dict[str, Any]) -> str:
    lines = ["# Data preview", "", f"config: `{summary['config']}`", ""]
    for split, s in summary["splits"].items():
        lines += [f"## {split}: {s['dataset']}", "", "| field | value |", "|---|---|"]
        for k, v in s.items():
            if k == "dataset":
                continue
            if isinstance(v, dict):
                v = ", ".join(f"{a}: {_fmt(b)}" for a, b in v.items())
            lines.append(f"| {k} | {_fmt(v)} |")
        lines.append("")
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def _no_nan(v: Any) -> Any:
    """``v`` with NaN floats (undefined scores) as ``None``, so the JSON is standard."""
    if isinstance(v, dict):
        return {k: _no_nan(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_no_nan(x) for x in v]
    return None if isinstance(v, float) and v != v else v


def main(argv: list[str] | None = None) -> int:
    """Run the preview; returns 0, or 2 with a one-line message on bad input."""
    p = argparse.ArgumentParser(prog="noisyseg data preview", description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="data config YAML (or a whole LightningCLI config)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--write-masks", action="store_true", help="write every mask as a PNG")
    p.add_argument("--max-previews", type=int, default=4, help="preview PNGs per split")
    p.add_argument("--max-samples", type=int, default=0, help="summarise at most N samples per split (0: all)")
    args = p.parse_args(argv)
    out = Path(args.out)
    try:
        splits = load_splits(Path(args.config))
        if not splits:
            raise PreviewError(f"{args.config} configures no train/val/test dataset")
        out.mkdir(parents=True, exist_ok=True)
        summary = {"config": str(args.config), "splits": {
            name: summarise(name, ds, out, args.max_previews, args.max_samples, args.write_masks)
            for name, ds in splits.items()}}
    except PreviewError as err:
        print(f"noisyseg data preview: error: {err}", file=sys.stderr)
        return 2
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:  # dataset input errors
        print(f"noisyseg data preview: error: {type(err).__name__}: {err}".replace("\n", " "), file=sys.stderr)
        return 2
    for name, s in summary["splits"].items():
        if "label_agreement" in s:
            print(f"{name}: {format_agreement(s['label_agreement'])}")
    text_json, text_md = json.dumps(_no_nan(summary), indent=1), to_markdown(summary)
    atomic_write(out / "summary.json", lambda tmp: Path(tmp).write_text(text_json))
    atomic_write(out / "summary.md", lambda tmp: Path(tmp).write_text(text_md))
    print(f"wrote {out / 'summary.json'}, {out / 'summary.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


# ------------------------------------------------------------------------- noisyseg data noise-report
def class_names_for(k: int, *candidates: Sequence[str] | None) -> list[str]:
    """``k`` names from the first candidate list that is given (model's, then dataset's); ids where none."""
    names = next((list(c) for c in candidates if c), [])
    return [str(names[i]) if i < len(names) else str(i) for i in range(k)]


def row_percent(confusion: Any) -> np.ndarray:
    """``[K, K]`` counts (rows clean) -> ``[K, K]`` percent of each clean class; a row without pixels is NaN."""
    conf = np.asarray(confusion, dtype=np.float64)
    rows = conf.sum(1, keepdims=True)  # [K, 1] pixels per clean class
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(rows > 0, 100 * conf / np.maximum(rows, 1), np.nan)


def confusion_figure(confusion: Any, class_names: Sequence[str], path: Path, title: str) -> np.ndarray:
    """Heatmap PNG of the ``[K, K]`` confusion matrix (rows clean, columns noisy), cells annotated with
    the row-normalised percentage and the pixel count.

    Returns:
        The ``[K, K]`` percentages the figure shows (:func:`row_percent`).
    """
    from matplotlib.figure import Figure  # a bare Figure: no pyplot, no global backend state

    conf = np.asarray(confusion, dtype=np.int64)
    pct = row_percent(conf)  # [K, K]
    k = len(conf)
    fig = Figure(figsize=(2.2 + 1.1 * max(k, 2), 1.6 + 0.9 * max(k, 2)), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(np.nan_to_num(pct), cmap="Blues", vmin=0, vmax=100)
    for i in range(k):
        for j in range(k):
            if pct[i, j] == pct[i, j]:  # a row without pixels stays blank
                ax.text(j, i, f"{pct[i, j]:.1f} %\n{conf[i, j]:,}", ha="center", va="center", fontsize=7,
                        color="white" if pct[i, j] > 60 else "black")
    ax.set_xticks(range(k), list(class_names), rotation=30 if k > 4 else 0)
    ax.set_yticks(range(k), list(class_names))
    ax.set_xlabel("noisy label")
    ax.set_ylabel("clean label")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.05, label="% of the clean class's pixels")
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    return pct


def write_noise_report(d: dict[str, Any], class_names: Sequence[str], out: Path, title: str,
                       extra: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write the result of :func:`dataset_agreement` into ``out``.

    * ``confusion.csv`` — pixel counts, a row per clean class, a column per noisy class, and the
      column ``ignored in noisy`` (clean pixels the noisy mask ignores; not in the matrix);
    * ``confusion.png`` — :func:`confusion_figure`;
    * ``noise_report.json`` — ``extra``, ``class_names``, every entry of ``d`` (NaN as ``null``)
      and ``row_percent`` (the figure's ``[K, K]`` percentages).

    Returns:
        ``{"csv": path, "png": path, "json": path}``.
    """
    out = Path(out)
    names = [str(n) for n in class_names]
    conf = np.asarray(d["confusion"], dtype=np.int64)  # [K, K]
    paths = {"csv": out / "confusion.csv", "png": out / "confusion.png", "json": out / "noise_report.json"}
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["clean \\ noisy", *names, "ignored in noisy"])
    w.writerows([[name, *conf[i].tolist(), d["noisy_ignored_by_class"][i]] for i, name in enumerate(names)])
    atomic_write(paths["csv"], lambda tmp: Path(tmp).write_text(buf.getvalue()))
    pct = confusion_figure(conf, names, paths["png"], title)
    summary = {**(extra or {}), "class_names": names, **d, "row_percent": pct.tolist()}
    text = json.dumps(_no_nan(summary), indent=1)
    atomic_write(paths["json"], lambda tmp: Path(tmp).write_text(text))
    return paths


@contextlib.contextmanager
def _run_seed(seed: Any) -> Iterator[None]:
    """``PL_GLOBAL_SEED`` set to the config's ``seed_everything`` while the datasets are built, so
    seed-``null`` splits (:class:`~noisyseg.data.TileSplit`) are the ones ``fit`` trains on."""
    if not isinstance(seed, int) or isinstance(seed, bool) or "PL_GLOBAL_SEED" in os.environ:
        yield
        return
    os.environ["PL_GLOBAL_SEED"] = str(seed)
    try:
        yield
    finally:
        del os.environ["PL_GLOBAL_SEED"]


def noise_report_main(argv: list[str] | None = None) -> int:
    """``noisyseg data noise-report``: returns 0, or 2 with a one-line message on bad input."""
    p = argparse.ArgumentParser(prog="noisyseg data noise-report",
                                description="realised label noise of one split: noisy mask vs clean_mask")
    p.add_argument("--config", required=True, help="data config YAML (or a whole LightningCLI config)")
    p.add_argument("--split", default=None,
                   help="train | val | test of the data module (default train; a bare dataset config has one)")
    p.add_argument("--samples", type=int, default=0, help="only the first N samples (0: all)")
    p.add_argument("--out", default=None, help="output folder (default runs/noise_report/<config name>/<split>)")
    args = p.parse_args(argv)
    path, split = Path(args.config), args.split or "train"
    try:
        if args.samples < 0:
            raise PreviewError(f"--samples {args.samples}: expected 0 (all) or a positive count")
        try:
            top = yaml.safe_load(path.read_text()) if path.is_file() else {}
        except yaml.YAMLError:
            top = {}  # load_splits names the YAML error
        top = top if isinstance(top, dict) else {}
        with _run_seed(top.get("seed_everything")):
            splits = load_splits(path)
        split = args.split or ("data" if list(splits) == ["data"] else "train")  # a bare dataset: its one split
        if split not in splits:
            raise PreviewError(f"{path} has no split '{split}'; it configures {sorted(splits) or 'none'}")
        ds = splits[split]
        kind = type(ds.dataset if isinstance(ds, InMemory) else ds).__name__  # data.init_args.cache wraps it
        if len(ds) == 0:
            raise PreviewError(f"{path} split '{split}': the dataset {kind} is empty")
        first = ds[0]
        if MASK not in first or CLEAN_MASK not in first:
            raise PreviewError(
                f"{path} split '{split}': {kind} samples have no "
                f"'{CLEAN_MASK if MASK in first else MASK}' (keys: {sorted(first)}); a noise report compares "
                f"the noisy '{MASK}' with the '{CLEAN_MASK}' of the same image (NoisyLabels, ProductLabels or "
                f"VectorLabels over imagery with clean masks)")
        model = top.get("model") if isinstance(top.get("model"), dict) else {}
        model = model.get("init_args") if isinstance(model.get("init_args"), dict) else {}
        num_classes = model.get("num_classes") or getattr(ds, "num_classes", None)
        d = dataset_agreement(ds, num_classes, max_samples=args.samples or None, progress=True)
        names = class_names_for(len(d["confusion"]), model.get("class_names"), getattr(ds, "class_names", None))
        out = Path(args.out) if args.out else Path("runs/noise_report") / path.stem / split
        title = f"{path.name}, split {split}\n{100 * d['agreement']:.1f} % of {d['pixels']:,} pixels agree"
        paths = write_noise_report(d, names, out, title, {"config": str(path), "split": split,
                                                          "dataset": kind})
    except PreviewError as err:
        print(f"noisyseg data noise-report: error: {err}", file=sys.stderr)
        return 2
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:  # dataset input errors
        msg = f"{path} split '{split}': {type(err).__name__}: {err}".replace("\n", " ")
        print(f"noisyseg data noise-report: error: {msg}", file=sys.stderr)
        return 2
    print(f"{split}: {format_agreement(d, names)}")
    if d["clean_ignored"]:
        print(f"  {d['clean_ignored']:,} pixels ignored in the clean mask (not counted)")
    print(f"wrote {paths['csv']}, {paths['png']}, {paths['json']}")
    return 0
