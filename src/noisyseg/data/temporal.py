"""Bi-temporal image pairs as (possibly noisy) temporal positives for contrastive pretraining.

Two images of one place at two dates are a free positive pair (SeCo, Mañas et al. 2021; CaCo,
Mall et al. 2023), but a pair across real change is a *noisy* positive. Each pair records its
``changed_fraction`` in ``meta`` when a change label exists, and ``noisy_pair`` is
``changed_fraction > noisy_threshold``.

Layouts:

* :class:`BitemporalPairs` — ``A/<id>``, ``B/<id>``, optional ``label/<id>`` change masks, as in
  DSIFN-CD (Zhang et al. 2020, ISPRS J.) and LEVIR-CD.
* :class:`TemporalStacks` — a folder per location with one raster per date (any GDAL format,
  ENVI included), pairs of dates, optional full or partial change masks in the folder.
* :class:`LandsatChange` — the Taizhou / Nanjing Landsat scenes (Wu et al. 2014 TGRS; Du et al.
  2019 TGRS): two ENVI scenes per folder, ``change.bmp`` -> 1, ``unchanged.bmp`` -> 0, every other
  pixel unlabelled -> IGNORE_INDEX.

Datasets return full-resolution patches; augmentation happens on batches in the task.
"""

from __future__ import annotations

import itertools
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.windows import Window
from torch.utils.data import Dataset

from noisyseg.data.grid import patch_grid
from noisyseg.data.io import find_files, raster_shape, read_window
from noisyseg.data.pairing import change_from_masks, changed_fraction, undersample
from noisyseg.data.loading import Sample, make_sample, normalize, pad_to
from noisyseg.data.stats import band_statistics


class _PairDataset(Dataset):
    """Shared machinery: a list of pairs (A files, B files, change files), patches, sampling."""

    def _setup(
        self,
        pairs: list[dict[str, Any]],
        patch_size: int | None,
        overlap: int,
        normalize: bool,
        noisy_threshold: float,
        noisy_pair_rate: float | None,
        seed: int,
    ) -> None:
        self.pairs, self.patch_size, self.noisy_threshold = pairs, patch_size, noisy_threshold
        self.stats: dict[str, Any] = {"pairs": len(pairs), "patches": 0, "label_conflicts": 0}
        self.items: list[tuple[int, Window]] = []  # (pair index, window)
        for k, p in enumerate(pairs):
            _, h, w, _, _ = raster_shape([p["a"]])
            _, hb, wb, _, _ = raster_shape([p["b"]])
            for other, (oh, ow) in [(p["b"], (hb, wb))] + [
                (m, raster_shape([m])[1:3]) for m in (p.get("change"), p.get("unchanged")) if m
            ]:
                if (oh, ow) != (h, w):
                    raise ValueError(f"{p['a']} is {h}x{w} but its partner {other} is {oh}x{ow}")
            grid = patch_grid(h, w, patch_size or max(h, w), overlap)  # (row, col, height, width)
            self.items += [(k, Window(c, r, pw, ph)) for r, c, ph, pw in grid]
        self.normalization = None
        if normalize:
            both = [[p["a"]] for p in pairs] + [[p["b"]] for p in pairs]
            st = band_statistics(both, [None] * len(both))  # both dates share one normalisation
            self.normalization = {"mean": st["mean"], "std": st["std"]}
        if noisy_pair_rate is not None:
            flags = [self._noisy(self._change(k, win)[0]) for k, win in self.items]
            self.items, self.stats["noisy_pair_rate"] = undersample(self.items, flags, noisy_pair_rate, seed)
        self.stats["patches"] = len(self.items)

    def _noisy(self, change: np.ndarray | None) -> bool:
        if change is None:
            return False
        frac = changed_fraction(change)
        return frac is not None and frac > self.noisy_threshold  # unknown change counts as clean

    def _change(self, k: int, win: Window) -> tuple[np.ndarray | None, int]:
        p = self.pairs[k]
        if not p.get("change"):
            return None, 0
        ch = read_window([p["change"]], win)[0]  # [h, w]
        un = read_window([p["unchanged"]], win)[0] if p.get("unchanged") else None
        return change_from_masks(ch, un)

    def _image(self, path: str, win: Window) -> np.ndarray:
        return normalize(read_window([path], win), self.normalization, path)  # [C, h, w]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        """Pair ``index``: image (date A) and image2 (date B) ``[C, P, P]``, change_mask ``[P, P]``."""
        k, win = self.items[index]
        p = self.pairs[k]
        a, b = self._image(p["a"], win), self._image(p["b"], win)
        if a.shape != b.shape:
            raise ValueError(f"{p['a']} has {a.shape[0]} bands but {p['b']} has {b.shape[0]}")
        change, conflicts = self._change(k, win)
        meta = {
            "source": p["a"], "source2": p["b"], "id": p["id"],
            "window": [int(win.row_off), int(win.col_off), int(win.height), int(win.width)],
            "changed_fraction": changed_fraction(change) if change is not None else None,
            "label_conflicts": conflicts,
        }
        a, b, change = pad_to(self.patch_size, a, b, change)
        noisy = self._noisy(change) if change is not None else None
        return make_sample(a, image2=b, change_mask=change, noisy_pair=noisy, meta=meta)

class BitemporalPairs(_PairDataset):
    """``A/<id>`` + ``B/<id>`` (+ ``label/<id>``) folders, DSIFN-CD / LEVIR-CD layout.

    Args:
        root: folder holding the ``a_dir``, ``b_dir`` and ``label_dir`` folders.
        pattern: glob of image names inside ``a_dir``.
        a_dir: folder of the first dates.
        b_dir: folder of the second dates (same file names).
        label_dir: folder of change masks (``> 0`` = changed), or ``None``.
        patch_size: square patch side (``None``: whole images).
        overlap: pixels shared by neighbouring patches.
        normalize: per-band mean/std over both dates (streamed once).
        noisy_threshold: a pair is noisy when ``changed_fraction`` exceeds it.
        noisy_pair_rate: under-sample to this fraction of noisy pairs (``None``: keep all).
        seed: seed of the under-sampling.

    Raises:
        FileNotFoundError: no image matches, or an A image has no B partner / label (named).
    """

    def __init__(
        self,
        root: str,
        pattern: str = "*.png",
        a_dir: str = "A",
        b_dir: str = "B",
        label_dir: str | None = "label",
        patch_size: int | None = None,
        overlap: int = 0,
        normalize: bool = True,
        noisy_threshold: float = 0.0,
        noisy_pair_rate: float | None = None,
        seed: int = 0,
    ) -> None:
        base = Path(root)
        pairs = []
        for a in find_files(base / a_dir, pattern, "date-A image"):
            pair = {"id": a.stem, "a": str(a), "b": str(base / b_dir / a.name)}
            if label_dir is not None:
                pair["change"] = str(base / label_dir / a.name)
            for key in ("b", "change"):
                if key in pair and not Path(pair[key]).is_file():
                    raise FileNotFoundError(f"{a} has no partner: {pair[key]} does not exist")
            pairs.append(pair)
        self._setup(pairs, patch_size, overlap, normalize, noisy_threshold, noisy_pair_rate, seed)


class TemporalStacks(_PairDataset):
    """A folder per location with one raster per date; yields pairs of dates.

    Dates are ordered by file name. Masks named by ``change_mask`` / ``unchanged_mask`` inside a
    location folder give the change label (partial when both are given).

    Args:
        root: folder of location folders.
        locations: glob of location folders under ``root``.
        dates: glob of date rasters inside a location (header sidecars such as ``.hdr`` dropped).
        exclude: globs of files in a location that are not dates (previews, masks).
        pairs: ``"consecutive"`` (d0-d1, d1-d2, ...), ``"first_last"`` or ``"all"``.
        change_mask: file name of the changed-pixels mask in each location, or ``None``.
        unchanged_mask: file name of the unchanged-pixels mask (makes labels partial), or ``None``.
        patch_size: square patch side (``None``: whole rasters).
        overlap: pixels shared by neighbouring patches.
        normalize: per-band mean/std over all dates (streamed once).
        noisy_threshold: a pair is noisy when ``changed_fraction`` exceeds it.
        noisy_pair_rate: under-sample to this fraction of noisy pairs (``None``: keep all).
        seed: seed of the under-sampling.

    Raises:
        ValueError: a bad ``pairs`` value, or a location with fewer than two dates (named).
        FileNotFoundError: no location matches, or a named mask is missing (named).
    """

    def __init__(
        self,
        root: str,
        locations: str = "*",
        dates: str = "*",
        exclude: list[str] | None = None,
        pairs: str = "consecutive",
        change_mask: str | None = None,
        unchanged_mask: str | None = None,
        patch_size: int | None = None,
        overlap: int = 0,
        normalize: bool = True,
        noisy_threshold: float = 0.0,
        noisy_pair_rate: float | None = None,
        seed: int = 0,
    ) -> None:
        modes = {"consecutive", "first_last", "all"}
        if pairs not in modes:
            raise ValueError(f"pairs={pairs!r}; valid: {sorted(modes)}")
        skip = list(exclude if exclude is not None else ["*.jpg", "*.jpeg", "*.bmp", "*.txt", "*.csv"])
        skip += [m for m in (change_mask, unchanged_mask) if m]
        out = []
        for loc in find_files(Path(root), locations, "location", dirs=True):
            files = [f for f in find_files(loc, dates, "date raster")
                     if not any(f.match(s) for s in skip)]
            if len(files) < 2:
                raise ValueError(f"location {loc} has {len(files)} date raster(s) matching {dates!r}; need >= 2")
            if pairs == "consecutive":
                combos = list(zip(files[:-1], files[1:]))
            elif pairs == "first_last":
                combos = [(files[0], files[-1])]
            else:
                combos = list(itertools.combinations(files, 2))
            masks = {}
            for key, name in (("change", change_mask), ("unchanged", unchanged_mask)):
                if name:
                    if not (loc / name).is_file():
                        raise FileNotFoundError(f"location {loc} has no {key} mask {loc / name}")
                    masks[key] = str(loc / name)
            for a, b in combos:
                out.append({"id": f"{loc.name}:{a.name}->{b.name}", "a": str(a), "b": str(b), **masks})
        self._setup(out, patch_size, overlap, normalize, noisy_threshold, noisy_pair_rate, seed)
        if unchanged_mask and self.items:
            conflicts = 0
            for p in self.pairs:  # conflicts once per scene, not per patch
                _, n = change_from_masks(read_window([p["change"]], None)[0], read_window([p["unchanged"]], None)[0])
                conflicts += n
            self.stats["label_conflicts"] = conflicts
            if conflicts:
                warnings.warn(f"{conflicts} pixel(s) are marked both changed and unchanged; ignored", stacklevel=2)


class LandsatChange(TemporalStacks):
    """Taizhou / Nanjing Landsat change scenes: two ENVI rasters + partial change masks per folder.

    Wu et al. 2014, "Slow feature analysis for change detection in multispectral imagery" (TGRS);
    Du et al. 2019, "Unsupervised deep slow feature analysis for change detection" (TGRS).
    ``change.bmp`` -> 1, ``unchanged.bmp`` -> 0, all other pixels -> IGNORE_INDEX.

    Args:
        root: folder of scene folders (``landsat-change``).
        patch_size: square patch side.
        overlap: pixels shared by neighbouring patches.
        normalize: per-band mean/std over both dates.
        noisy_threshold: a patch pair is noisy when ``changed_fraction`` exceeds it.
        noisy_pair_rate: under-sample to this fraction of noisy pairs (``None``: keep all).
        seed: seed of the under-sampling.
    """

    def __init__(
        self,
        root: str,
        patch_size: int | None = 128,
        overlap: int = 0,
        normalize: bool = True,
        noisy_threshold: float = 0.0,
        noisy_pair_rate: float | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(
            root, pairs="first_last", change_mask="change.bmp", unchanged_mask="unchanged.bmp",
            patch_size=patch_size, overlap=overlap, normalize=normalize,
            noisy_threshold=noisy_threshold, noisy_pair_rate=noisy_pair_rate, seed=seed,
        )
