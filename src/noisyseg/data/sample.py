"""The sample contract: one dict that every dataset returns and every transform takes.

Keys (constants below, never string literals elsewhere):

* ``image``        float32 ``[C, H, W]`` — the (first) view, any band count.
* ``mask``         int64 ``[H, W]`` — the training label, possibly noisy.
* ``clean_mask``   int64 ``[H, W]`` — optional noise-free label (for evaluation / analysis).
* ``image2``       float32 ``[C, H, W]`` — optional second view / temporal partner.
* ``mask2``        int64 ``[H, W]`` — optional label of ``image2`` (noise-free, for dense losses).
* ``noisy_pair``   bool scalar tensor — optional: the pair ``(image, image2)`` is a noisy positive.
* ``change_mask``  int64 ``[H, W]`` — optional change label of a temporal pair (1 changed, 0 not).
* ``meta``         dict of plain Python values (ids, paths, noise rates...). Collated as lists.

Pixels whose label is unknown (no-data, unlabelled, ``un-classified``) carry :data:`IGNORE_INDEX`.

The array steps every dataset takes to meet the contract live here too: :func:`normalize` (per-band
mean / std, the ``normalization`` a dataset records), :func:`remap_mask` (raw mask values to class
ids), :func:`pad_to` (a raster smaller than the patch: images 0, masks IGNORE_INDEX), and
:func:`groups_of` (per sample, the tile it was cut from).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

IGNORE_INDEX: int = 255
"""Label of pixels that no loss or metric counts (uint8-friendly, as in xBD/LoveDA tooling)."""

IMAGE = "image"
MASK = "mask"
CLEAN_MASK = "clean_mask"
IMAGE2 = "image2"
MASK2 = "mask2"
NOISY_PAIR = "noisy_pair"
CHANGE_MASK = "change_mask"
META = "meta"

Sample = dict[str, Any]


def make_sample(
    image: np.ndarray | torch.Tensor,
    mask: np.ndarray | torch.Tensor | None = None,
    *,
    clean_mask: np.ndarray | torch.Tensor | None = None,
    image2: np.ndarray | torch.Tensor | None = None,
    mask2: np.ndarray | torch.Tensor | None = None,
    noisy_pair: bool | None = None,
    change_mask: np.ndarray | torch.Tensor | None = None,
    meta: dict[str, Any] | None = None,
) -> Sample:
    """Build a contract-conforming sample, converting dtypes once here.

    Args:
        image: ``[C, H, W]`` array, any numeric dtype; stored as float32.
        mask: ``[H, W]`` integer labels; stored as int64.
        clean_mask: optional noise-free ``[H, W]`` labels.
        image2: optional second view ``[C, H, W]``.
        mask2: optional ``[H, W]`` labels of ``image2``.
        noisy_pair: optional flag, the pair is a noisy positive.
        change_mask: optional ``[H, W]`` change labels of the pair.
        meta: optional dict of plain values.

    Raises:
        ValueError: when shapes break the contract.
    """
    img = _as_image(image, "image")
    out: Sample = {IMAGE: img, META: dict(meta or {})}
    if mask is not None:
        out[MASK] = _as_mask(mask, img, "mask")
    if clean_mask is not None:
        out[CLEAN_MASK] = _as_mask(clean_mask, img, "clean_mask")
    if image2 is not None:
        out[IMAGE2] = _as_image(image2, "image2")
        if out[IMAGE2].shape != img.shape:
            raise ValueError(f"image2 has shape {tuple(out[IMAGE2].shape)} but image has {tuple(img.shape)}")
    if mask2 is not None:
        out[MASK2] = _as_mask(mask2, img, "mask2")
    if change_mask is not None:
        out[CHANGE_MASK] = _as_mask(change_mask, img, "change_mask")
    if noisy_pair is not None:
        out[NOISY_PAIR] = torch.tensor(bool(noisy_pair))
    return out


def _as_image(x: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.ascontiguousarray(x) if isinstance(x, np.ndarray) else x)
    if t.ndim != 3:
        raise ValueError(f"{name} must be [C, H, W], got shape {tuple(t.shape)}")
    if t.is_complex() or t.dtype == torch.bool:  # a cast would drop the imaginary part silently
        raise ValueError(f"{name} has dtype {t.dtype}; images must be real numbers (int or float bands)")
    return t.to(torch.float32)


def _as_mask(x: np.ndarray | torch.Tensor, image: torch.Tensor, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.ascontiguousarray(x) if isinstance(x, np.ndarray) else x)
    if t.ndim != 2:
        raise ValueError(f"{name} must be [H, W], got shape {tuple(t.shape)}")
    if tuple(t.shape) != tuple(image.shape[-2:]):
        raise ValueError(f"{name} is {tuple(t.shape)} but image is {tuple(image.shape[-2:])}")
    if t.is_complex():
        raise ValueError(f"{name} has dtype {t.dtype}; masks must hold integer class ids")
    if t.is_floating_point() and not bool((t == t.round()).all()):  # NaN fails this too
        bad = t[t != t.round()][:3].tolist()
        raise ValueError(f"{name} is {t.dtype} with non-integer values such as {bad}; masks must hold "
                         f"integer class ids (a resampled or probability mask?)")
    return t.to(torch.int64)


def collate(samples: list[Sample]) -> Sample:
    """Stack tensors, keep ``meta`` as a list of dicts (DataLoader ``collate_fn``).

    Raises:
        ValueError: samples of one batch differ in size (whole tiles of 406x438 and 406x439 px),
            naming two of them by ``meta["source"]``.
    """
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    out: Sample = {}
    for key in samples[0]:
        if key == META:
            out[META] = [s.get(META, {}) for s in samples]
        else:
            tensors = [s[key] for s in samples]
            odd = next((i for i, t in enumerate(tensors) if t.shape != tensors[0].shape), None)
            if odd is not None:
                raise ValueError(f"samples of one batch differ in size: {_size_of(samples, 0, key)} but "
                                 f"{_size_of(samples, odd, key)}; set the dataset's patch_size (equal patches, "
                                 "smaller tiles padded) or tile_size, or batch_size: 1")
            out[key] = torch.stack(tensors)
    return out


def _size_of(samples: list[Sample], i: int, key: str) -> str:
    """``'<source> is 406x438 (image [3, 406, 438])'`` for error messages."""
    meta = samples[i].get(META)
    source = meta.get("source", meta.get("id")) if isinstance(meta, dict) else None
    shape = list(samples[i][key].shape)
    return f"{source if source is not None else f'sample {i}'} is {'x'.join(map(str, shape[-2:]))} ({key} {shape})"


# ------------------------------------------------------------------ arrays into samples
def normalize(image: np.ndarray, normalization: dict[str, Any] | None, what: str = "image") -> np.ndarray:
    """float32 ``[C, H, W]``: each band minus its mean, divided by its std (a new array).

    Args:
        image: ``[C, H, W]`` raw bands, any real dtype.
        normalization: ``{"mean": [C values], "std": [C values]}`` in raw units; ``None``: the
            image as float32, unscaled.
        what: the image's name (its file) for the error.

    Raises:
        ValueError: ``normalization`` has another band count than ``image`` (names ``what``).
    """
    if normalization is None:
        return np.array(image, np.float32)  # a copy: callers write no-data into it
    x = np.asarray(image, np.float32)
    mean = np.asarray(normalization["mean"], np.float32)[:, None, None]  # [C, 1, 1]
    std = np.asarray(normalization["std"], np.float32)[:, None, None]
    if mean.shape[0] != x.shape[0]:
        raise ValueError(f"normalization has {mean.shape[0]} bands but {what} has {x.shape[0]}")
    return (x - mean) / std


def pad_to(size: int | tuple[int, int] | None, *arrays: np.ndarray | None) -> tuple[np.ndarray | None, ...]:
    """Pad images ``[C, h, w]`` with 0 and masks ``[h, w]`` with IGNORE_INDEX, at the bottom and right.

    Args:
        size: the side to pad to, or ``(height, width)``; ``None``: nothing is padded.
        arrays: images and masks (``None`` entries stay ``None``); an array at least ``size`` on
            both axes is returned as it is.

    Returns:
        The arrays in order, padded.
    """
    if size is None:
        return arrays
    height, width = (size, size) if isinstance(size, int) else size
    out: list[np.ndarray | None] = []
    for x in arrays:
        ph, pw = (0, 0) if x is None else (max(height - x.shape[-2], 0), max(width - x.shape[-1], 0))
        if ph == 0 and pw == 0:
            out.append(x)
        elif x.ndim == 3:  # image: zeros, the mean after normalisation
            out.append(np.pad(x, ((0, 0), (0, ph), (0, pw))))
        else:  # mask: unknown labels
            out.append(np.pad(x, ((0, ph), (0, pw)), constant_values=IGNORE_INDEX))
    return tuple(out)


def remap_mask(
    mask: np.ndarray, remap: dict[Any, Any] | None, unlabelled: int | None = None
) -> np.ndarray:
    """Map raw mask values to class ids; ``'ignore'`` or 255 targets become IGNORE_INDEX.

    Mapping is simultaneous (``{1: 2, 2: 1}`` swaps), read from the raw values; values not in
    ``remap`` keep their id. ``unlabelled`` raw pixels become IGNORE_INDEX whatever ``remap`` says.

    Args:
        mask: ``[H, W]`` raw integer labels.
        remap: ``{src: dst}`` (YAML keys may be strings).
        unlabelled: raw value of "not labelled" pixels (partial labels).

    Raises:
        ValueError: a key or target is not an integer (or ``'ignore'``), or ``mask`` holds
            non-integer values.
    """
    if mask.dtype.kind == "c" or (mask.dtype.kind == "f" and not np.all(mask == np.round(mask))):
        # an int cast would truncate 0.7 to 0 silently (a resampled or probability mask); NaN fails too
        bad = mask[mask != np.round(mask)][:3].tolist() if mask.dtype.kind == "f" else []
        raise ValueError(f"mask of dtype {mask.dtype} has non-integer values such as {bad}; masks must hold "
                         "integer class ids")
    out = mask.astype(np.int64, copy=True)
    for src, dst in (remap or {}).items():
        try:
            s = int(src)
            d = IGNORE_INDEX if str(dst).lower() == "ignore" else int(dst)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"remap entry {src!r}: {dst!r} is invalid; keys and targets must be integers "
                f"(targets may also be 'ignore')"
            ) from err
        out[mask == s] = d
    if unlabelled is not None:
        out[mask == unlabelled] = IGNORE_INDEX
    return out




def groups_of(dataset: Dataset, key: str = "source") -> list[str]:
    """Per sample, its group: ``meta[key]`` as a string.

    With ``key == "source"`` a dataset's ``sources()`` answers without loading pixels
    (:class:`~noisyseg.data.raster.RasterSegmentation`, :class:`~noisyseg.data.xbd.XBDSegmentation`
    and the wrappers have it); otherwise every sample is loaded once for its ``meta``.

    Raises:
        ValueError: a sample has no ``meta[key]`` (names the index and the keys it has).
    """
    n = len(dataset)  # type: ignore[arg-type]
    if key == "source" and callable(getattr(dataset, "sources", None)):
        out = [str(g) for g in dataset.sources()]  # type: ignore[attr-defined]
        if len(out) != n:
            raise ValueError(f"{type(dataset).__name__}.sources() gave {len(out)} names for {n} samples")
        return out
    out = []
    for k in range(n):
        meta = dataset[k].get(META, {})
        if key not in meta:
            raise ValueError(f"{type(dataset).__name__}[{k}] has no meta[{key!r}] to group by "
                             f"(meta keys: {sorted(meta)})")
        out.append(str(meta[key]))
    return out
