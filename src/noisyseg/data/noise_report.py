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
clean pixels that the noisy mask ignores. A score with a zero denominator is NaN.

    d = dataset_agreement(NoisyLabels(ds, noise=[{"op": "drop", "rate": 0.3}]), num_classes=2)
    print(format_agreement(d, ["background", "building"]))
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from noisyseg.data.sample import CLEAN_MASK, IGNORE_INDEX, MASK

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
        self.noisy_ignored = 0
        self.samples = 0

    def update(self, noisy: Any, clean: Any) -> None:
        """Add one pair of ``[H, W]`` masks (numpy arrays or CPU tensors).

        Raises:
            ValueError: different shapes, or a label outside ``0..num_classes-1``.
        """
        noisy, clean = np.asarray(noisy).astype(np.int64), np.asarray(clean).astype(np.int64)
        if noisy.shape != clean.shape:
            raise ValueError(f"noisy mask {noisy.shape} and clean mask {clean.shape} differ in shape")
        valid = (clean != IGNORE_INDEX) & (noisy != IGNORE_INDEX)
        self.noisy_ignored += int(((clean != IGNORE_INDEX) & (noisy == IGNORE_INDEX)).sum())
        n, c = noisy[valid], clean[valid]  # [P]
        top = int(max(n.max(initial=-1), c.max(initial=-1)))
        low = int(min(n.min(initial=0), c.min(initial=0)))
        k = len(self.confusion)
        if low < 0 or (self.num_classes is not None and top >= k):
            bad = low if low < 0 else top
            raise ValueError(f"label {bad} is outside 0..{k - 1} (num_classes={k}; ignore is {IGNORE_INDEX})")
        if top >= k:  # growing matrix
            grown = np.zeros((top + 1, top + 1), np.int64)
            grown[:k, :k] = self.confusion
            self.confusion, k = grown, top + 1
        self.confusion += np.bincount(c * k + n, minlength=k * k).reshape(k, k)
        self.samples += 1

    def result(self) -> dict[str, Any]:
        """The scores of :func:`agreement_from_confusion` plus ``samples`` and ``noisy_ignored``."""
        out = agreement_from_confusion(self.confusion)
        out.update(samples=self.samples, noisy_ignored=self.noisy_ignored)
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
        The scores of :func:`agreement_from_confusion` plus ``noisy_ignored``.

    Raises:
        ValueError: different shapes, or a label outside ``0..num_classes-1``.
    """
    counter = AgreementCounter(num_classes)
    counter.update(noisy, clean)
    out = counter.result()
    del out["samples"]
    return out


def dataset_agreement(dataset: Any, num_classes: int, max_samples: int | None = None) -> dict[str, Any]:
    """:func:`label_agreement` accumulated over a dataset whose samples carry ``mask`` and ``clean_mask``.

    The confusion matrices are summed, so the scores weigh every pixel alike (not every sample);
    the result also holds ``samples``.

    Args:
        dataset: indexable, with ``len``; e.g. a :class:`~noisyseg.data.NoisyLabels`.
        num_classes: classes of the masks.
        max_samples: only the first ``max_samples`` samples (``None``: all).

    Raises:
        ValueError: a sample without ``mask`` or ``clean_mask``, or a label outside the classes.
    """
    n = len(dataset) if max_samples is None else min(len(dataset), int(max_samples))
    counter = AgreementCounter(num_classes)
    for i in tqdm(range(n), desc="label agreement", unit="sample", file=sys.stderr, disable=n < PROGRESS_FROM):
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
