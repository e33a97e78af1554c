"""Realised label noise: how far noisy masks are from the clean ones, per class.

The noise a config asks for (a flip rate, a block size) is not the noise the labels carry: flips of
small objects change few pixels, coarsening erases thin ones. These functions measure the result as
a confusion matrix of noisy labels against clean ones (rows clean, columns noisy) and the scores
read from it:

* ``agreement`` — fraction of counted pixels whose noisy label equals the clean one;
* ``precision[k]`` — of the pixels the noisy mask calls ``k``, the fraction that are ``k``;
* ``recall[k]`` — of the pixels that are ``k``, the fraction the noisy mask calls ``k``;
* ``iou[k]`` — intersection over union of the noisy and clean ``k`` regions.

Counted pixels are those valid (not :data:`IGNORE_INDEX`) in both masks; ``noisy_ignored`` counts
clean pixels that the noisy mask ignores (``noisy_ignored_by_class``: per clean class),
``clean_ignored`` the pixels the clean mask ignores. A score with a zero denominator is NaN.

    d = dataset_agreement(NoisyLabels(ds, noise=[{"op": "drop", "rate": 0.3}]), num_classes=2)
    print(format_agreement(d, ["background", "building"]))

``noisyseg data noise-report`` (:func:`main`) does this for one split of a config and writes the
confusion matrix as CSV, as a heatmap PNG (:func:`confusion_figure`) and a JSON summary
(:func:`write_noise_report`):

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
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from tqdm import tqdm

from noisyseg.data.cache import InMemory
from noisyseg.data.sample import CLEAN_MASK, IGNORE_INDEX, MASK
from noisyseg.runfiles import atomic_write

PROGRESS_FROM = 50
"""Datasets with at least this many samples get a tqdm progress bar."""


class AgreementCounter:
    """Accumulate the noisy-vs-clean confusion matrix over masks.

    Args:
        num_classes: size of the matrix; a label outside ``0..num_classes-1`` is an error. ``None``:
            the matrix grows to the largest label seen (for previews of unknown datasets).
    """

    def __init__(self, num_classes: int | None = None) -> None:
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes={num_classes} must be >= 1")
        self.num_classes = num_classes
        self.confusion = np.zeros((num_classes or 0,) * 2, np.int64)  # [K, K] rows clean, columns noisy
        self.noisy_ignored_by_class = np.zeros(num_classes or 0, np.int64)  # [K] per clean class
        self.clean_ignored = 0  # pixels the clean mask ignores (whatever the noisy one says)
        self.samples = 0

    @property
    def noisy_ignored(self) -> int:
        """Clean pixels (valid in the clean mask) that the noisy mask ignores."""
        return int(self.noisy_ignored_by_class.sum())

    def update(self, noisy: Any, clean: Any) -> None:
        """Add one pair of ``[H, W]`` masks (numpy arrays or CPU tensors).

        Raises:
            ValueError: different shapes, or a label outside ``0..num_classes-1``.
        """
        noisy, clean = np.asarray(noisy).astype(np.int64), np.asarray(clean).astype(np.int64)
        if noisy.shape != clean.shape:
            raise ValueError(f"noisy mask {noisy.shape} and clean mask {clean.shape} differ in shape")
        clean_valid = clean != IGNORE_INDEX  # [H, W]
        valid = clean_valid & (noisy != IGNORE_INDEX)
        n, c = noisy[valid], clean[valid]  # [P]
        dropped = clean[clean_valid & (noisy == IGNORE_INDEX)]  # [D] clean labels the noisy mask ignores
        top = int(max(n.max(initial=-1), c.max(initial=-1), dropped.max(initial=-1)))
        low = int(min(n.min(initial=0), c.min(initial=0), dropped.min(initial=0)))
        k = len(self.confusion)
        if low < 0 or (self.num_classes is not None and top >= k):
            bad = low if low < 0 else top
            raise ValueError(f"label {bad} is outside 0..{k - 1} (num_classes={k}; ignore is {IGNORE_INDEX})")
        if top >= k:  # growing matrix
            grown = np.zeros((top + 1, top + 1), np.int64)
            grown[:k, :k] = self.confusion
            self.confusion = grown
            self.noisy_ignored_by_class = np.concatenate([self.noisy_ignored_by_class, np.zeros(top + 1 - k, np.int64)])
            k = top + 1
        self.confusion += np.bincount(c * k + n, minlength=k * k).reshape(k, k)
        self.noisy_ignored_by_class += np.bincount(dropped, minlength=k)
        self.clean_ignored += int((~clean_valid).sum())
        self.samples += 1

    def result(self) -> dict[str, Any]:
        """The scores of :func:`agreement_from_confusion` plus ``samples``, ``noisy_ignored``, its split
        by clean class ``noisy_ignored_by_class`` (length K) and ``clean_ignored``."""
        out = agreement_from_confusion(self.confusion)
        out.update(samples=self.samples, noisy_ignored=self.noisy_ignored,
                   noisy_ignored_by_class=self.noisy_ignored_by_class.tolist(), clean_ignored=self.clean_ignored)
        return out


def _ratio(num: np.ndarray, den: np.ndarray) -> list[float]:
    with np.errstate(divide="ignore", invalid="ignore"):
        return [float(x) for x in np.where(den > 0, num / np.maximum(den, 1), np.nan)]


def agreement_from_confusion(confusion: np.ndarray) -> dict[str, Any]:
    """Scores from a ``[K, K]`` confusion matrix (rows clean, columns noisy).

    Returns:
        ``pixels`` (counted), ``agreement``, per-class lists ``precision``, ``recall``, ``iou``
        (length K) and ``confusion`` as nested lists; plain Python values, ready for JSON or a logger.
    """
    conf = np.asarray(confusion, dtype=np.int64)
    diag = np.diag(conf).astype(np.float64)  # [K]
    clean_total, noisy_total = conf.sum(1), conf.sum(0)  # [K] each
    pixels = int(conf.sum())
    return {
        "pixels": pixels,
        "agreement": float(diag.sum() / pixels) if pixels else float("nan"),
        "precision": _ratio(diag, noisy_total),
        "recall": _ratio(diag, clean_total),
        "iou": _ratio(diag, clean_total + noisy_total - diag),
        "confusion": conf.tolist(),
    }


def label_agreement(noisy: Any, clean: Any, num_classes: int) -> dict[str, Any]:
    """How far one noisy ``[H, W]`` mask is from its clean ``[H, W]`` mask (see the module doc).

    Returns:
        The scores of :func:`agreement_from_confusion` plus ``noisy_ignored``,
        ``noisy_ignored_by_class`` and ``clean_ignored``.

    Raises:
        ValueError: different shapes, or a label outside ``0..num_classes-1``.
    """
    counter = AgreementCounter(num_classes)
    counter.update(noisy, clean)
    out = counter.result()
    del out["samples"]
    return out


def dataset_agreement(dataset: Any, num_classes: int | None, max_samples: int | None = None,
                      progress: bool | None = None) -> dict[str, Any]:
    """:func:`label_agreement` accumulated over a dataset whose samples carry ``mask`` and ``clean_mask``.

    The confusion matrices are summed, so the scores weigh every pixel alike (not every sample);
    the result also holds ``samples``.

    Args:
        dataset: indexable, with ``len``; e.g. a :class:`~noisyseg.data.NoisyLabels`.
        num_classes: classes of the masks (``None``: up to the largest label seen).
        max_samples: only the first ``max_samples`` samples (``None``: all).
        progress: a tqdm bar on stderr (``None``: from :data:`PROGRESS_FROM` samples on).

    Raises:
        ValueError: a sample without ``mask`` or ``clean_mask``, or a label outside the classes.
    """
    n = len(dataset) if max_samples is None else min(len(dataset), int(max_samples))
    counter = AgreementCounter(num_classes)
    bar = n >= PROGRESS_FROM if progress is None else progress
    for i in tqdm(range(n), desc="label agreement", unit="sample", file=sys.stderr, disable=not bar):
        s = dataset[i]
        missing = [k for k in (MASK, CLEAN_MASK) if k not in s]
        if missing:
            raise ValueError(f"{type(dataset).__name__}[{i}] has no {missing}: agreement needs the noisy "
                             f"'{MASK}' and the '{CLEAN_MASK}'")
        counter.update(s[MASK], s[CLEAN_MASK])
    return counter.result()


def format_agreement(d: dict[str, Any], class_names: Sequence[str] | None = None) -> str:
    """A few readable lines: overall agreement, then precision / recall / IoU per class."""

    def pct(x: float) -> str:
        return "    -" if x != x else f"{100 * x:5.1f}"  # NaN: no pixel of the class

    k = len(d["iou"])
    names = [str(class_names[i]) if class_names and i < len(class_names) else f"class {i}" for i in range(k)]
    width = max([len(n) for n in names] + [5])
    where = f" in {d['samples']} sample{'s' * (d['samples'] != 1)}" if "samples" in d else ""
    lines = [f"noisy vs clean labels: {pct(d['agreement']).strip()} % of {d['pixels']:,} pixels agree{where}"]
    if d.get("noisy_ignored"):
        lines[0] += f"; {d['noisy_ignored']:,} clean pixels ignored in the noisy mask"
    lines.append(f"  {'class':<{width}}  precision  recall    IoU   (%)")
    for i, name in enumerate(names):
        lines.append(f"  {name:<{width}}  {pct(d['precision'][i]):>9}  {pct(d['recall'][i]):>6}  {pct(d['iou'][i]):>5}")
    return "\n".join(lines)


# ------------------------------------------------------------------------- report files and CLI
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
    from noisyseg.data.preview import _no_nan  # preview imports this module

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


def main(argv: list[str] | None = None) -> int:
    """``noisyseg data noise-report``: returns 0, or 2 with a one-line message on bad input."""
    from noisyseg.data.preview import PreviewError, load_splits  # preview imports this module

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
