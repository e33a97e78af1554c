"""Statistics of datasets: per-band mean / std of imagery, per-class pixel counts and weights.

:func:`band_statistics` streams rasters in row strips (bounded memory) for the normalisation every
raster dataset records; :func:`load_band_statistics` reads them back from a statistics file.
:func:`class_counts` counts the labelled pixels of each class over a dataset's masks, and
:func:`inverse_frequency` turns counts into the class weights of a weighted loss
(:func:`class_weights` does both).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.windows import Window
from torch.utils.data import Dataset

from noisyseg.data.grid import scaled_size
from noisyseg.data.io import open_raster, read_scaled, sources_shape, valid_pixels
from noisyseg.data.loading import IGNORE_INDEX, MASK


def band_statistics(
    images: Sequence[list[str]], nodata: Sequence[float | None] | None,
    indexes: list[int] | None = None, rows_per_read: int = 256, resample: float = 1.0,
) -> dict[str, Any]:
    """Per-band mean/std over all valid pixels, streamed in row strips (bounded memory).

    Args:
        images: per image, its file list (see :func:`~noisyseg.data.io.read_window`).
        nodata: per image, its no-data value (``None`` = none); ``None`` instead of a list takes
            each file's own no-data value.
        indexes: 1-based bands of multi-band files.
        rows_per_read: rows per windowed read (output rows when resampled).
        resample: read every image at this factor of its resolution, as the dataset reads its
            samples (:func:`~noisyseg.data.io.image_resampling`), so the statistics are those of the pixels the
            network sees (averaging 2 x 2 blocks lowers a band's std).

    Returns:
        ``{"mean": [...], "std": [...], "count": valid pixels, "empty": [image indices whose
        valid pixels are all zero]}``.
    """
    total = total_sq = None
    count = 0
    empty: list[int] = []
    for i in range(len(images)):
        paths = images[i]
        with ExitStack() as stack:  # each file opened once for all its strips
            srcs = [stack.enter_context(open_raster(p)) for p in paths]
            _, h, w, _, own = sources_shape(srcs, paths)
            nd = own if nodata is None else nodata[i]
            nonzero = False
            oh, ow = scaled_size(h, w, resample)
            for row in range(0, oh, rows_per_read):
                win = Window(0, row, ow, min(rows_per_read, oh - row))  # output pixels
                x, _ = read_scaled(srcs, paths, win, (h, w), resample, indexes)  # [C, r, w]
                ok = valid_pixels(x, nd)  # [r, w]
                v = x[:, ok].astype(np.float64)  # [C, n valid]
                if total is None:
                    total, total_sq = np.zeros(x.shape[0]), np.zeros(x.shape[0])
                if v.shape[0] != total.shape[0]:
                    raise ValueError(f"{paths[0]} has {v.shape[0]} bands, earlier images {total.shape[0]}")
                total += v.sum(1)
                total_sq += (v**2).sum(1)
                count += v.shape[1]
                nonzero = nonzero or bool(np.any(v != 0))
        if not nonzero:
            empty.append(i)
    if total is None or count == 0:
        raise ValueError("no valid pixels to compute band statistics from (all no-data)")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    std[std == 0] = 1.0  # constant band: leave it centred, not divided by zero
    return {"mean": mean.tolist(), "std": std.tolist(), "count": int(count), "empty": empty}


def load_band_statistics(path: str) -> dict[str, list[float]]:
    """``{"mean": [...], "std": [...]}`` from a statistics JSON (a dataset's ``stats_cache``).

    Raises:
        ValueError: the file cannot be read or holds no ``mean`` and ``std`` (names it).
    """
    try:
        obj = json.loads(Path(path).read_text())
        return {"mean": list(map(float, obj["mean"])), "std": list(map(float, obj["std"]))}
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(
            f"normalization_from={path!r} is not a statistics JSON with 'mean' and 'std': {err}"
        ) from err


def class_counts(dataset: Dataset, num_classes: int, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """``[num_classes]`` int64: labelled pixels of each class over a dataset's masks.

    Uses ``dataset.label_mask(i)`` when the dataset has it (xBD: no imagery read), else
    ``dataset[i]["mask"]``; ``ignore_index`` pixels are not counted.

    Raises:
        ValueError: a mask holds a class id outside ``[0, num_classes)`` (names the sample and the id).
    """
    counts = np.zeros(num_classes, np.int64)
    for k in range(len(dataset)):  # type: ignore[arg-type]
        m = np.asarray(dataset.label_mask(k) if hasattr(dataset, "label_mask") else dataset[k][MASK])
        m = m[m != ignore_index].astype(np.int64)  # [n labelled pixels]
        if m.size and (m.max() >= num_classes or m.min() < 0):
            bad = int(m.max()) if m.max() >= num_classes else int(m.min())
            raise ValueError(f"mask {k} holds class {bad} but num_classes={num_classes} (valid: "
                             f"0..{num_classes - 1} and ignore_index={ignore_index})")
        counts += np.bincount(m, minlength=num_classes)
    return counts


def inverse_frequency(counts: Sequence[int] | np.ndarray) -> np.ndarray:
    """float64 ``[K]`` class weights ``N / (K * n_k)`` from pixel counts ``n_k`` (all 1 for a balanced
    set, ``N`` the total); a class with no pixel gets weight 0."""
    c = np.asarray(counts, np.float64)  # [K]
    return np.where(c > 0, c.sum() / (len(c) * np.maximum(c, 1)), 0.0)


def class_weights(dataset: Dataset, num_classes: int = 5) -> list[float]:
    """Inverse-frequency class weights (:func:`inverse_frequency`) of a (train) dataset's masks.

    Counts with :func:`class_counts`; a class that never occurs gets weight 0 (with a warning).

    Raises:
        ValueError: a mask holds a class >= ``num_classes`` (names it), or no pixel is labelled.
    """
    counts = class_counts(dataset, num_classes)
    if counts.sum() == 0:
        raise ValueError("no labelled pixel to compute class weights from")
    if (counts == 0).any():
        warnings.warn(f"classes {np.flatnonzero(counts == 0).tolist()} never occur; weight 0", stacklevel=2)
    return inverse_frequency(counts).tolist()
