"""Image/mask raster folders: GeoTIFF, PNG or ENVI, one multi-band file or one file per band.

:class:`RasterSegmentation` pairs every image with its mask (by glob and file key, or by explicit
lists), cuts large rasters into fixed patches with windowed reads (``rasterio.windows.Window``, so
memory stays bounded by one patch), remaps mask values from config, turns no-data and unlabelled
pixels into :data:`~noisyseg.data.sample.IGNORE_INDEX`, and normalises every band with statistics
streamed once over the files and cached as JSON. It covers the layouts of SpaceNet-1 (Van Etten et
al. 2018, {0,255} masks), Open Cities AI (GFDRR 2020) and the Sentinel-2 Cloud Cover Detection
Challenge (Radiant Earth 2022, ``<chip>/B02.tif ...``), like torchgeo's ``RasterDataset`` but with
file pairs instead of a spatial index.

The small helpers (:func:`patch_starts`, :func:`open_raster`, :func:`band_statistics`,
:func:`remap_mask`) are reused by the xBD and temporal datasets.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.windows import Window
from torch.utils.data import Dataset

from noisyseg.data.sample import IGNORE_INDEX, Sample, make_sample

SIDECAR_SUFFIXES = (".hdr", ".aux.xml", ".ovr", ".xml", ".prj", ".tfw", ".pgw", ".wld", ".json")
"""Files a glob may match that are headers or sidecars, never rasters (ENVI ``.hdr`` / ``.HDR``)."""


# ----------------------------------------------------------------------------------------- helpers
def patch_starts(length: int, patch: int, overlap: int = 0) -> list[int]:
    """Start offsets of patches covering ``[0, length)``, the last one snapped to the edge.

    Every patch is full size when ``length >= patch`` (the last start is ``length - patch``, so
    it may overlap its neighbour more than ``overlap``); a shorter axis gets one start, 0, and the
    reader pads. E.g. ``patch_starts(438, 256) == [0, 182]``.

    Raises:
        ValueError: when ``patch < 1`` or ``overlap`` is not in ``[0, patch)``.
    """
    if patch < 1:
        raise ValueError(f"patch size {patch} must be >= 1")
    if not 0 <= overlap < patch:
        raise ValueError(f"overlap {overlap} must be in [0, patch size {patch})")
    if length <= patch:
        return [0]
    stride = patch - overlap
    starts = list(range(0, length - patch + 1, stride))
    if starts[-1] != length - patch:
        starts.append(length - patch)  # snap the last patch to the edge instead of padding
    return starts


def open_raster(path: str | os.PathLike) -> rasterio.DatasetReader:
    """Open a raster with rasterio, naming the file when GDAL cannot read it.

    Raises:
        OSError: the file is missing or not a raster GDAL can read.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)  # PNG / BMP have no CRS
            return rasterio.open(path)
    except RasterioIOError as err:
        raise OSError(f"cannot read raster file {path}: {err}") from err


def read_window(
    paths: list[str], window: Window | None, indexes: list[int] | None = None
) -> np.ndarray:
    """Read ``[C, h, w]`` from one multi-band file or from one single-band file per band.

    Args:
        paths: one path (all or ``indexes`` bands) or several single-band files (stacked in order).
        window: the region to read; ``None`` reads everything.
        indexes: 1-based bands of a single multi-band file.

    Raises:
        OSError: a file cannot be read (named).
    """
    arrays = []
    for p in paths:
        with open_raster(p) as src, warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            try:
                arr = src.read(indexes if len(paths) == 1 else 1, window=window)
            except (RasterioIOError, IndexError) as err:
                raise OSError(f"cannot read bands {indexes} of raster file {p}: {err}") from err
        arrays.append(arr if arr.ndim == 3 else arr[None])
    return np.concatenate(arrays, 0)  # [C, h, w]


def raster_shape(paths: list[str]) -> tuple[int, int, int, str, float | None]:
    """``(bands, height, width, dtype, nodata)`` from metadata only (no pixels read).

    Raises:
        ValueError: single-band files of one image differ in size (names them).
    """
    shapes = []
    for p in paths:
        with open_raster(p) as src:
            shapes.append((src.count, src.height, src.width, src.dtypes[0], src.nodata))
    if len({s[1:3] for s in shapes}) > 1:
        sizes = ", ".join(f"{p} {s[1]}x{s[2]}" for p, s in zip(paths, shapes))
        raise ValueError(f"band files of one image differ in size: {sizes}")
    bands = sum(s[0] for s in shapes) if len(paths) > 1 else shapes[0][0]
    return bands, shapes[0][1], shapes[0][2], shapes[0][3], shapes[0][4]


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


def valid_pixels(image: np.ndarray, nodata: float | None) -> np.ndarray:
    """``[H, W]`` bool: a pixel is no-data when every band equals ``nodata``, or any band is NaN/Inf.

    One non-finite band is enough: the pixel cannot be fed to a network, and it would turn the
    streamed band statistics (and with them every normalised image) into NaN.
    """
    invalid = np.any(~np.isfinite(image), 0) if image.dtype.kind == "f" else np.zeros(image.shape[1:], bool)
    if nodata is not None:
        invalid |= np.all(image == nodata, 0)
    return ~invalid


def band_statistics(
    images: list[list[str]], nodata: list[float | None], indexes: list[int] | None = None,
    rows_per_read: int = 256,
) -> dict[str, Any]:
    """Per-band mean/std over all valid pixels, streamed in row strips (bounded memory).

    Args:
        images: per image, its file list (see :func:`read_window`).
        nodata: per image, its no-data value (``None`` = none).
        indexes: 1-based bands of multi-band files.
        rows_per_read: rows per windowed read.

    Returns:
        ``{"mean": [...], "std": [...], "count": valid pixels, "empty": [image indices whose
        valid pixels are all zero]}``.
    """
    total = total_sq = None
    count = 0
    empty: list[int] = []
    for i, (paths, nd) in enumerate(zip(images, nodata)):
        _, h, w, _, _ = raster_shape(paths)
        nonzero = False
        for row in range(0, h, rows_per_read):
            win = Window(0, row, w, min(rows_per_read, h - row))
            x = read_window(paths, win, indexes)  # [C, r, w]
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


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON to ``path`` through a temp file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1)
        os.replace(tmp, path)  # atomic on POSIX: readers never see a half-written file
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def find_files(root: Path, pattern: str | list[str], what: str, dirs: bool = False) -> list[Path]:
    """Resolve a glob (relative to ``root``) or an explicit list, dropping header sidecars.

    Raises:
        FileNotFoundError: the glob matches nothing, or a listed file is missing (named).
    """
    if isinstance(pattern, (list, tuple)):
        out = [root / p for p in pattern]
        for p in out:
            if not p.exists():
                raise FileNotFoundError(f"{what} file {p} does not exist")
        return out
    full = str(root / pattern)
    out = [Path(p) for p in sorted(glob.glob(full))]
    out = [p for p in out if (p.is_dir() if dirs else p.is_file())]
    out = [p for p in out if not p.name.lower().endswith(SIDECAR_SUFFIXES)]
    if not out:
        kind = "folders" if dirs else "files"
        raise FileNotFoundError(f"the {what} glob {full!r} matches no {kind}")
    return out


# ----------------------------------------------------------------------------------------- dataset
class RasterSegmentation(Dataset):
    """Image/mask pairs from raster folders, cut into patches with windowed reads.

    Args:
        images: glob (relative to ``root``) or list of image files; with ``bands`` they name the
            per-chip folders instead (``train_features/*``).
        masks: glob or list of mask files (``None``: image-only samples). Paired with images by key
            (file stem, or chip folder name) after removing ``mask_suffix`` from mask stems; an
            explicit list of the same length as an explicit image list pairs by position.
        root: folder the globs and paths are relative to.
        mask_suffix: stem suffix of masks (Open Cities ``<tile>_mask.tif``: ``"_mask"``).
        bands: per-band file names inside each chip folder, in channel order (``["B02.tif", ...]``).
        band_indexes: 1-based bands to read from multi-band files (``[1, 2, 3]`` drops alpha).
        patch_size: square patch side; ``None`` yields whole rasters (sizes may then differ).
        overlap: pixels shared by neighbouring patches.
        remap: raw mask value -> class (``{255: 1}`` for {0,255} masks; target ``'ignore'``).
        unlabelled: raw mask value of unlabelled pixels (partial labels) -> IGNORE_INDEX.
        nodata: image no-data value overriding the files' own (``None``: use the file's).
        normalize: subtract the per-band mean and divide by the std.
        mean: per-band means in raw units (skip computing them); needs ``std``.
        std: per-band standard deviations in raw units.
        stats_cache: JSON file for the streamed statistics and empty-tile list, reused while the
            file list, sizes and options are unchanged (``None``: compute in memory).
        normalization_from: a cache JSON written by another dataset (the train split) to take
            mean/std from.
        skip_empty: drop all-zero / all-no-data patches (warned, counted in ``stats``).
        size_mismatch: ``"error"`` or ``"crop"`` (crop image and mask to the common size).

    Raises:
        FileNotFoundError: a glob matches nothing, or an image has no mask (named).
        ValueError: bad options, or an image and its mask differ in size (with ``"error"``).
        OSError: a file cannot be read (named).

    Attributes:
        stats: counts of what indexing did (``images``, ``patches``, ``empty_skipped``,
            ``size_cropped``).
        normalization: ``{"mean": [...], "std": [...]}`` in raw units, or ``None``.
    """

    def __init__(
        self,
        images: str | list[str],
        masks: str | list[str] | None = None,
        root: str = ".",
        mask_suffix: str = "",
        bands: list[str] | None = None,
        band_indexes: list[int] | None = None,
        patch_size: int | None = None,
        overlap: int = 0,
        remap: dict[int, int | str] | None = None,
        unlabelled: int | None = None,
        nodata: float | None = None,
        normalize: bool = True,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        stats_cache: str | None = None,
        normalization_from: str | None = None,
        skip_empty: bool = True,
        size_mismatch: str = "error",
    ) -> None:
        if size_mismatch not in ("error", "crop"):
            raise ValueError(f"size_mismatch={size_mismatch!r}; valid: 'error', 'crop'")
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        if patch_size is not None:
            patch_starts(patch_size, patch_size, overlap)  # validates patch_size / overlap
        self.root = Path(root)
        self.band_indexes = band_indexes
        self.patch_size, self.overlap = patch_size, overlap
        self.remap, self.unlabelled = remap, unlabelled
        self.stats: dict[str, Any] = {"images": 0, "patches": 0, "empty_skipped": 0, "size_cropped": 0}

        # --- pair images with masks (paths only)
        img_paths = find_files(self.root, images, "image", dirs=bands is not None)
        self.images: list[list[str]] = [
            [str(p / b) for b in bands] if bands else [str(p)] for p in img_paths
        ]
        self.masks: list[str | None] = self._pair_masks(
            img_paths, masks, mask_suffix, by_position=isinstance(images, list)
        )

        # --- shapes from metadata; tile into windows
        self.nodata: list[float | None] = []
        self.windows: list[tuple[int, Window]] = []  # (image index, window) per sample
        self.sizes: list[tuple[int, int]] = []
        for i, paths in enumerate(self.images):
            c, h, w, dtype, nd = raster_shape(paths)
            if np.dtype(dtype).kind == "c":  # a float cast would silently drop the imaginary part
                raise ValueError(f"image {paths[0]} has dtype {dtype}; bands must be real (int or float)")
            self.nodata.append(nodata if nodata is not None else nd)
            if self.masks[i] is not None:
                _, mh, mw, _, _ = raster_shape([self.masks[i]])
                if (mh, mw) != (h, w):
                    if size_mismatch == "error":
                        raise ValueError(
                            f"image {paths[0]} is {h}x{w} but mask {self.masks[i]} is {mh}x{mw} "
                            f"(set size_mismatch: crop to crop both to the common size)"
                        )
                    h, w = min(h, mh), min(w, mw)
                    self.stats["size_cropped"] += 1
            self.sizes.append((h, w))
            if patch_size is None:
                self.windows.append((i, Window(0, 0, w, h)))
            else:
                for r in patch_starts(h, patch_size, overlap):
                    for col in patch_starts(w, patch_size, overlap):
                        ph, pw = min(patch_size, h - r), min(patch_size, w - col)
                        self.windows.append((i, Window(col, r, pw, ph)))
        self.stats["images"] = len(self.images)

        # --- statistics: explicit, from another cache, or streamed once (and cached)
        self.normalization: dict[str, list[float]] | None = None
        scan = self._scan(stats_cache, need_stats=normalize and mean is None and normalization_from is None,
                          need_empty=skip_empty)
        if normalize:
            if mean is not None:
                self.normalization = {"mean": list(map(float, mean)), "std": list(map(float, std))}
            elif normalization_from is not None:
                self.normalization = _load_normalization(normalization_from)
            else:
                self.normalization = {"mean": scan["mean"], "std": scan["std"]}
        if skip_empty and scan.get("empty_windows"):
            empty = set(scan["empty_windows"])
            dropped = [self.images[self.windows[k][0]][0] for k in sorted(empty)]
            self.windows = [w for k, w in enumerate(self.windows) if k not in empty]
            self.stats["empty_skipped"] = len(empty)
            warnings.warn(
                f"skipped {len(empty)} all-zero/no-data patch(es) from {sorted(set(dropped))[:5]} "
                f"(skip_empty=False keeps them)",
                stacklevel=2,
            )
        self.stats["patches"] = len(self.windows)

    def _pair_masks(
        self, img_paths: list[Path], masks: str | list[str] | None, suffix: str, by_position: bool
    ) -> list[str | None]:
        if masks is None:
            return [None] * len(img_paths)
        mask_paths = find_files(self.root, masks, "mask")
        if by_position and isinstance(masks, list):
            if len(masks) != len(img_paths):
                raise ValueError(f"{len(img_paths)} images but {len(masks)} masks were listed")
            return [str(m) for m in mask_paths]  # explicit lists pair by position
        by_key: dict[str, Path] = {}
        for m in mask_paths:
            stem = m.stem
            by_key[stem[: -len(suffix)] if suffix and stem.endswith(suffix) else stem] = m
        out: list[str | None] = []
        for p in img_paths:
            key = p.name if p.is_dir() else p.stem
            if key not in by_key:
                raise FileNotFoundError(
                    f"image {p} has no mask: no mask file with key {key!r} among {len(mask_paths)} "
                    f"masks matching {masks!r} (mask_suffix={suffix!r})"
                )
            out.append(str(by_key[key]))
        return out

    def _scan(self, cache: str | None, need_stats: bool, need_empty: bool) -> dict[str, Any]:
        """Stream statistics and find empty patches once; reuse the cache when it still fits."""
        if not (need_stats or need_empty):
            return {}
        key = self._fingerprint()
        out: dict[str, Any] = {"fingerprint": key}
        if cache is not None and Path(cache).is_file():
            try:
                cached = json.loads(Path(cache).read_text())
            except json.JSONDecodeError:
                cached = {}  # a corrupt cache is recomputed, never trusted
            if cached.get("fingerprint") == key:
                out = cached
        changed = False
        if need_stats and "mean" not in out:
            stats = band_statistics(self.images, self.nodata, self.band_indexes)
            out.update(mean=stats["mean"], std=stats["std"], count=stats["count"])
            changed = True
        if need_empty and "empty_windows" not in out:
            out["empty_windows"] = self._empty_windows()  # one patch in memory at a time
            changed = True
        if cache is not None and changed:
            write_json_atomic(cache, out)
        return out

    def _empty_windows(self) -> list[int]:
        empty = []
        for k, (i, win) in enumerate(self.windows):
            x = read_window(self.images[i], win, self.band_indexes)  # [C, h, w], one patch in memory
            if not np.any(x[:, valid_pixels(x, self.nodata[i])] != 0):
                empty.append(k)
        return empty

    def _fingerprint(self) -> str:
        parts = [repr((self.patch_size, self.overlap, self.band_indexes, self.nodata))]
        for paths in self.images:
            for p in paths:
                st = os.stat(p)
                parts.append(f"{os.path.abspath(p)}:{st.st_size}:{st.st_mtime_ns}")
        parts.extend(repr(w) for w in self.windows)
        return hashlib.sha1("\n".join(parts).encode()).hexdigest()

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> Sample:
        """Patch ``index``: image ``[C, P, P]`` (normalised, no-data 0), mask ``[P, P]``."""
        i, win = self.windows[index]
        raw = read_window(self.images[i], win, self.band_indexes)  # [C, h, w]
        valid = valid_pixels(raw, self.nodata[i])  # [h, w]
        image = raw.astype(np.float32)
        if self.normalization is not None:
            mean = np.asarray(self.normalization["mean"], np.float32)[:, None, None]  # [C, 1, 1]
            std = np.asarray(self.normalization["std"], np.float32)[:, None, None]
            if mean.shape[0] != image.shape[0]:
                raise ValueError(
                    f"normalization has {mean.shape[0]} bands but {self.images[i][0]} has {image.shape[0]}"
                )
            image = (image - mean) / std
        image[:, ~valid] = 0.0  # no-data reads as the mean after normalisation
        if raw.dtype.kind == "f":
            nonfinite = int(np.any(~np.isfinite(raw), 0).sum())  # pixels with a NaN/Inf band
            if nonfinite:
                warnings.warn(
                    f"{self.images[i][0]}: {nonfinite} pixel(s) with NaN/Inf bands in window "
                    f"{[int(win.row_off), int(win.col_off)]} read as no-data (image 0, mask ignore_index)",
                    stacklevel=2,
                )
        mask = None
        if self.masks[i] is not None:
            raw_mask = read_window([self.masks[i]], win)[0]  # [h, w]
            try:
                mask = remap_mask(raw_mask, self.remap, self.unlabelled)
            except ValueError as err:
                raise ValueError(f"mask {self.masks[i]}: {err}") from err
            mask[~valid] = IGNORE_INDEX
        image, mask = self._pad(image, mask)
        meta = {
            "source": self.images[i][0] if len(self.images[i]) == 1 else str(Path(self.images[i][0]).parent),
            "mask_source": self.masks[i],
            "window": [int(win.row_off), int(win.col_off), int(win.height), int(win.width)],
        }
        try:
            return make_sample(image, mask, meta=meta)
        except ValueError as err:  # wrong dtype (complex image, fractional mask): name the files
            raise ValueError(f"{meta['source']} (mask {self.masks[i]}): {err}") from err

    def _pad(self, image: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """Pad a raster smaller than the patch: image with 0, mask with IGNORE_INDEX."""
        if self.patch_size is None:
            return image, mask
        ph, pw = self.patch_size - image.shape[1], self.patch_size - image.shape[2]
        if ph <= 0 and pw <= 0:
            return image, mask
        image = np.pad(image, ((0, 0), (0, ph), (0, pw)))
        if mask is not None:
            mask = np.pad(mask, ((0, ph), (0, pw)), constant_values=IGNORE_INDEX)
        return image, mask


def _load_normalization(path: str) -> dict[str, list[float]]:
    """Read ``mean``/``std`` from a statistics cache JSON."""
    try:
        obj = json.loads(Path(path).read_text())
        return {"mean": list(map(float, obj["mean"])), "std": list(map(float, obj["std"]))}
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(
            f"normalization_from={path!r} is not a statistics JSON with 'mean' and 'std': {err}"
        ) from err
