"""Image/mask raster folders: GeoTIFF, PNG or ENVI, one multi-band file or one file per band.

:class:`RasterSegmentation` pairs every image with its mask (by glob and file key, or by explicit
lists), cuts large rasters into fixed patches with windowed reads (``rasterio.windows.Window``, so
memory stays bounded by one patch), remaps mask values from config, turns no-data and unlabelled
pixels into :data:`~noisyseg.data.loading.IGNORE_INDEX`, and normalises every band with statistics
streamed once over the files and cached as JSON. It covers the layouts of SpaceNet-1 (Van Etten et
al. 2018, {0,255} masks), Open Cities AI (GFDRR 2020) and the Sentinel-2 Cloud Cover Detection
Challenge (Radiant Earth 2022, ``<chip>/B02.tif ...``), like torchgeo's ``RasterDataset`` but with
file pairs instead of a spatial index.

Reading goes through :mod:`noisyseg.data.io`, patches through :mod:`noisyseg.data.grid`, statistics
through :mod:`noisyseg.data.stats`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.windows import Window
from torch.utils.data import Dataset

from noisyseg.data.grid import check_resample, patch_grid, patch_starts, scaled_size
from noisyseg.data.index import TileIndex, encode_paths, pair_by_key, path_stem
from noisyseg.data.io import (SIDECAR_SUFFIXES, check_real_dtype, find_paths, open_raster, raster_shape,
                              read_scaled, sources_shape, valid_pixels)
from noisyseg.data.loading import IGNORE_INDEX, Sample, make_sample, normalize, pad_to, remap_mask
from noisyseg.data.stats import band_statistics, load_band_statistics
from noisyseg.runfiles import write_json

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------- dataset
VALIDATE_MAX_IMAGES = 1000
"""Above this many images, ``validate=None`` indexes lazily (no raster opened in ``__init__``).

Opening an image and its mask costs ~3 ms (GDAL's open dominates), so 1,000 pairs add ~3 s to
start-up and 100,000 pairs ~5 minutes (``benchmarks/results/indexing.md``)."""


class RasterSegmentation(Dataset):
    """Image/mask pairs from raster folders, cut into patches with windowed reads.

    **Indexing is lazy for large folders.** Listing files is cheap (one ``os.scandir`` per folder,
    no ``stat`` per file); opening each raster for its size, dtype and no-data value is not
    (~3 ms a pair). With one sample per file (``patch_size=None``) and ``validate`` off -- the
    default above :data:`VALIDATE_MAX_IMAGES` images -- ``__init__`` opens no raster: each
    ``__getitem__``, which opens its files anyway, reads the metadata there and makes the checks
    ``__init__`` would have made (complex dtype, band files of one chip differing in size, image and
    mask differing in size), raising with the same messages that name the files. The trade-off: a
    bad file in a large folder surfaces when it is read, not at start-up; pass ``validate=True`` to
    check every file now, or run one pass over the dataset. ``patch_size`` needs every raster's
    size to cut windows, so it always opens them (but skips the empty-patch scan unless asked).

    Args:
        images: glob (relative to ``root``) or list of image files; with ``bands`` they name the
            per-chip folders instead (``train_features/*``). With ``manifest``, an ``fnmatch``
            pattern relative to ``root`` (see :class:`~noisyseg.data.index.TileIndex`).
        masks: glob or list of mask files (``None``: image-only samples). Paired with images by key
            (file stem, or chip folder name) after removing ``mask_suffix`` from mask stems; a key
            shared by several files pairs by the folders the globs' wildcards matched
            (:func:`~noisyseg.data.index.pair_by_key`, ValueError when that is ambiguous too); an
            explicit list of the same length as an explicit image list pairs by position.
        root: folder the globs and paths are relative to.
        mask_suffix: stem suffix of masks (Open Cities ``<tile>_mask.tif``: ``"_mask"``).
        bands: per-band file names inside each chip folder, in channel order (``["B02.tif", ...]``).
        band_indexes: 1-based bands to read from multi-band files (``[1, 2, 3]`` drops alpha).
        patch_size: square patch side; ``None`` yields whole rasters (sizes may then differ).
        overlap: pixels shared by neighbouring patches.
        remap: raw mask value -> class (``{255: 1}`` for {0,255} masks; target ``'ignore'``).
            Without one, a mask holding only 0 and 255 is warned about once (255 is the ignore index).
        unlabelled: raw mask value of unlabelled pixels (partial labels) -> IGNORE_INDEX.
        nodata: image no-data value overriding the files' own (``None``: use the file's).
        normalize: subtract the per-band mean and divide by the std.
        mean: per-band means in raw units (skip computing them); needs ``std``. Computing them
            instead reads every pixel once (then cached in ``stats_cache``).
        std: per-band standard deviations in raw units.
        stats_cache: JSON file for the streamed statistics and empty-tile list, reused while the
            file list and options are unchanged (``None``: compute in memory). Validated datasets
            fingerprint each file's size and mtime; lazy ones the path list and the mtimes of the
            folders holding the files (one ``stat`` per folder: files added, removed or renamed
            invalidate the cache, a file rewritten in place does not).
        normalization_from: a cache JSON written by another dataset (the train split) to take
            mean/std from.
        skip_empty: drop all-zero / all-no-data patches (warned, counted in ``stats``). Finding
            them reads every patch once (cached in ``stats_cache``); ``None`` (default) does so only
            when ``validate`` is on.
        size_mismatch: ``"error"`` or ``"crop"`` (crop image and mask to the common size).
        validate: open every raster in ``__init__`` to check dtypes and image/mask sizes now
            (``None``: only for at most :data:`VALIDATE_MAX_IMAGES` images).
        manifest: JSON file listing the image/mask pairs, written by
            :class:`~noisyseg.data.index.TileIndex` on the first run (one directory walk) and read
            back while no folder under ``root`` changed (0.06 s for 100,000 pairs). ``images`` and
            ``masks`` must then be patterns; not with ``bands``.
        resample: read every raster at this factor of its native resolution (0.5: half the pixels
            per side; each side rounded half up, :func:`~noisyseg.data.grid.scaled_size`) with GDAL
            windowed reads: imagery by area ``average`` when shrinking and ``bilinear`` when
            enlarging (:func:`~noisyseg.data.io.image_resampling`), masks by ``nearest``
            (:data:`~noisyseg.data.io.MASK_RESAMPLING`: class ids and ignore values stay exact).
            ``patch_size`` and ``overlap`` count output pixels (a 1024 px tile at 0.5 with
            ``patch_size`` 128 gives 16 patches), and so do ``sizes``, ``windows`` and
            ``meta["window"]``; ``meta["native_window"]`` is the region of the file read.
            Statistics and the empty-patch scan read the resampled pixels too. An output pixel
            is no-data only when its whole footprint is: GDAL averages the valid
            pixels of a partly no-data footprint when the file declares its no-data value, while
            a ``nodata`` override the file does not declare is averaged in with them.

    Raises:
        FileNotFoundError: a glob matches nothing, or an image has no mask (named).
        ValueError: bad options, an image and its mask differ in size (with ``"error"``; from
            ``__getitem__`` when indexed lazily), or a file key shared by several images or masks
            whose folders do not tell which mask is whose (all named).
        OSError: a file cannot be read (named; from ``__getitem__`` when indexed lazily).

    Attributes:
        stats: counts of what indexing did (``images``, ``patches``, ``empty_skipped``,
            ``not_files_skipped`` (glob matches that are FIFOs, devices, broken links),
            ``size_cropped``; lazily indexed, ``size_cropped`` counts the crops made by reads in
            this process, since sizes are unknown at indexing time).
        normalization: ``{"mean": [...], "std": [...]}`` in raw units, or ``None``.
        lazy: whether rasters are opened only by ``__getitem__``.
        images, masks: per image, its file list / its mask path (``None`` without masks); views
            over compact byte arrays, not lists.
        nodata: per image, its no-data value (``None`` when lazy: read with the pixels).
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
        skip_empty: bool | None = None,
        size_mismatch: str = "error",
        validate: bool | None = None,
        manifest: str | None = None,
        resample: float = 1.0,
    ) -> None:
        self.resample = check_resample(resample)
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
        self.size_mismatch, self.nodata_override = size_mismatch, nodata
        self.stats: dict[str, Any] = {"images": 0, "patches": 0, "empty_skipped": 0, "size_cropped": 0,
                                      "not_files_skipped": 0}
        self._warned_0_255 = False  # the {0, 255}-mask warning is given once (per loader worker)

        # --- pair images with masks (paths only, kept as byte arrays)
        self._bands = list(bands) if bands else None
        self._image_paths, self._mask_paths = self._index(images, masks, mask_suffix, manifest)
        self.images = _PathLists(self._image_paths, self._bands)
        self.masks = _MaskPaths(self._mask_paths, len(self._image_paths))
        n = len(self._image_paths)
        self.stats["images"] = n
        validate = n <= VALIDATE_MAX_IMAGES if validate is None else bool(validate)
        skip_empty = validate if skip_empty is None else bool(skip_empty)
        self.lazy = patch_size is None and not validate
        if self.lazy:
            log.info("indexed %d images lazily: sizes, dtypes and no-data are read by __getitem__ "
                     "(validate=True checks every file now)", n)

        # --- shapes from metadata (validated / patched only); tile into windows
        # _windows: [N samples, 5] int64 (image, row, col, height, width); height -1 = whole raster
        self.nodata: list[float | None] | None = None
        self._sizes = np.full((n, 2), -1, np.int64)  # [N images, 2], -1 until known
        if self.lazy:
            self._windows = np.zeros((n, 5), np.int64)
            self._windows[:, 0] = np.arange(n)
            self._windows[:, 3:] = -1
        else:
            self._windows = self._read_shapes(nodata)

        # --- statistics: explicit, from another cache, or streamed once (and cached)
        self.normalization: dict[str, list[float]] | None = None
        scan = self._scan(stats_cache, need_stats=normalize and mean is None and normalization_from is None,
                          need_empty=skip_empty)
        if normalize:
            if mean is not None:
                self.normalization = {"mean": list(map(float, mean)), "std": list(map(float, std))}
            elif normalization_from is not None:
                self.normalization = load_band_statistics(normalization_from)
            else:
                self.normalization = {"mean": scan["mean"], "std": scan["std"]}
        if skip_empty and scan.get("empty_windows"):
            empty = np.asarray(sorted(set(scan["empty_windows"])), np.int64)
            dropped = sorted({self.images[int(i)][0] for i in self._windows[empty, 0]})
            self._windows = np.delete(self._windows, empty, axis=0)
            self.stats["empty_skipped"] = len(empty)
            warnings.warn(
                f"skipped {len(empty)} all-zero/no-data patch(es) from {dropped[:5]} "
                f"(skip_empty=False keeps them)",
                stacklevel=2,
            )
        self.stats["patches"] = len(self._windows)

    # ----------------------------------------------------------------------------------- indexing
    def _index(
        self, images: str | list[str], masks: str | list[str] | None, suffix: str, manifest: str | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """``[N]`` byte arrays of image paths (chip folders with ``bands``) and paired mask paths."""
        if manifest is not None:
            if not isinstance(images, str) or not (masks is None or isinstance(masks, str)) or self._bands:
                raise ValueError(
                    f"manifest={manifest!r} needs images and masks as patterns (got {images!r}, "
                    f"{masks!r}) and no bands (got {self._bands!r})"
                )
            index = TileIndex(self.root, images, masks, suffix, manifest=manifest, exclude=SIDECAR_SUFFIXES)
            if index.skipped:
                self.stats["not_files_skipped"] += len(index.skipped)
                warnings.warn(f"skipped {len(index.skipped)} path(s) under {self.root} matching {images!r} or "
                              f"{masks!r} that are not regular files (FIFO, device, socket or broken link): "
                              f"{index.skipped[:5]}", stacklevel=2)
            prefix = os.fsencode(str(self.root)) + b"/"
            full = lambda a: None if a is None else np.char.add(prefix, a)  # noqa: E731
            return full(index.images), full(index.masks)
        dirs = self._bands is not None
        img_paths = find_paths(self.root, images, "image", dirs=dirs, stats=self.stats)
        return encode_paths(img_paths), self._pair_masks(
            img_paths, masks, suffix, by_position=isinstance(images, list), dirs=dirs, images=images
        )

    def _pair_masks(
        self, img_paths: list[str], masks: str | list[str] | None, suffix: str, by_position: bool, dirs: bool,
        images: str | list[str] = "",
    ) -> np.ndarray | None:
        if masks is None:
            return None
        mask_paths = find_paths(self.root, masks, "mask", stats=self.stats)
        if by_position and isinstance(masks, list):
            if len(masks) != len(img_paths):
                raise ValueError(f"{len(img_paths)} images but {len(masks)} masks were listed")
            return encode_paths(mask_paths)  # explicit lists pair by position
        # a listed file's subfolders count from root (the pattern of a list: "<root>/<name>")
        pattern = lambda p: str(self.root / (p if isinstance(p, str) else "x"))  # noqa: E731
        keys = [os.path.basename(p.rstrip("/")) if dirs else path_stem(p) for p in img_paths]
        out = pair_by_key(img_paths, mask_paths, suffix, pattern(images), pattern(masks), keys)
        for p, key, m in zip(img_paths, keys, out):
            if m is None:
                raise FileNotFoundError(
                    f"image {p} has no mask: no mask file with key {key!r} among {len(mask_paths)} "
                    f"masks matching {masks!r} (mask_suffix={suffix!r})"
                )
        return encode_paths(out)

    def _read_shapes(self, nodata: float | None) -> np.ndarray:
        """Open every raster: check dtypes and sizes, fill ``nodata`` / ``_sizes``, cut windows."""
        self.nodata = []
        windows: list[tuple[int, int, int, int, int]] = []
        for i in range(len(self._image_paths)):
            paths, mask = self.images[i], self.masks[i]
            c, h, w, dtype, nd = raster_shape(paths)
            check_real_dtype(paths[0], dtype)
            self.nodata.append(nodata if nodata is not None else nd)
            if mask is not None:
                _, mh, mw, _, _ = raster_shape([mask])
                h, w = self._common_size(paths[0], (h, w), mask, (mh, mw))
            self._sizes[i] = (h, w)  # native pixels; windows are cut in output pixels
            h, w = scaled_size(h, w, self.resample)
            if self.patch_size is None:
                windows.append((i, 0, 0, h, w))
            else:
                windows += [(i, *patch) for patch in patch_grid(h, w, self.patch_size, self.overlap)]
        return np.asarray(windows, np.int64).reshape(-1, 5)

    def _common_size(
        self, image: str, size: tuple[int, int], mask: str, mask_size: tuple[int, int]
    ) -> tuple[int, int]:
        """The size to read of an image and its mask; raises or crops when they differ."""
        if mask_size == size:
            return size
        if self.size_mismatch == "error":
            raise ValueError(
                f"image {image} is {size[0]}x{size[1]} but mask {mask} is {mask_size[0]}x{mask_size[1]} "
                f"(set size_mismatch: crop to crop both to the common size)"
            )
        self.stats["size_cropped"] += 1
        return min(size[0], mask_size[0]), min(size[1], mask_size[1])

    # ----------------------------------------------------------------------- statistics and cache
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
            nodata = self.nodata if not self.lazy else (
                None if self.nodata_override is None else [self.nodata_override] * len(self.images))
            stats = band_statistics(self.images, nodata, self.band_indexes, resample=self.resample)
            out.update(mean=stats["mean"], std=stats["std"], count=stats["count"])
            changed = True
        if need_empty and "empty_windows" not in out:
            out["empty_windows"] = self._empty_windows()  # one patch in memory at a time
            changed = True
        if cache is not None and changed:
            write_json(cache, out)
        return out

    def _empty_windows(self) -> list[int]:
        empty = []
        for k in range(len(self._windows)):
            raw, nd, *_ = self._read(k, with_mask=False)  # [C, h, w], one patch in memory
            if not np.any(raw[:, valid_pixels(raw, nd)] != 0):
                empty.append(k)
        return empty

    def _fingerprint(self) -> str:
        """Hash of the options and the files; lazily indexed, without a ``stat`` per file."""
        h = hashlib.sha1(repr((self.patch_size, self.overlap, self.band_indexes, self._bands,
                               self.nodata if not self.lazy else ("lazy", self.nodata_override),
                               self.resample)).encode())
        h.update(self._image_paths.tobytes())
        if self._mask_paths is not None:
            h.update(self._mask_paths.tobytes())
        if self.lazy:  # a file added, removed or renamed changes the mtime of its folder
            arrays = [self._image_paths] + ([self._mask_paths] if self._mask_paths is not None else [])
            folders = {p if self._bands and a is self._image_paths else os.path.dirname(p)
                       for a in arrays for p in a.tolist()}
            for d in sorted(folders):
                h.update(b"%s:%d\n" % (d, os.stat(d).st_mtime_ns))
        else:  # every file was opened already: its size and mtime cost one more stat
            for i in range(len(self.images)):
                for p in self.images[i]:
                    st = os.stat(p)
                    h.update(f"{os.path.abspath(p)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        h.update(self._windows.tobytes())
        return h.hexdigest()

    # ------------------------------------------------------------------------------------ access
    @property
    def windows(self) -> list[tuple[int, Window]]:
        """``(image index, window)`` per sample (built on each access; a lazy window is ``None``)."""
        return [(int(i), None if h < 0 else Window(int(c), int(r), int(w), int(h)))
                for i, r, c, h, w in self._windows]

    @property
    def sizes(self) -> list[tuple[int, int] | None]:
        """Per image, its ``(height, width)`` in output pixels (after cropping to the mask and
        resampling; ``None`` when lazy)."""
        return [None if h < 0 else scaled_size(int(h), int(w), self.resample) for h, w in self._sizes]

    def _source(self, i: int) -> str:
        """``meta["source"]`` of image ``i``: its file, or its chip folder with ``bands``."""
        paths = self.images[i]
        return paths[0] if len(paths) == 1 else str(Path(paths[0]).parent)

    def sources(self) -> list[str]:
        """Per sample, the tile it was cut from (``meta["source"]``), without reading pixels."""
        per_image: dict[int, str] = {}
        out = []
        for i in self._windows[:, 0].tolist():
            if i not in per_image:
                per_image[i] = self._source(i)
            out.append(per_image[i])
        return out

    def __len__(self) -> int:
        return len(self._windows)

    def _read(
        self, index: int, with_mask: bool = True
    ) -> tuple[np.ndarray, float | None, np.ndarray | None, Window, Window]:
        """Raw image ``[C, h, w]``, its no-data value, raw mask ``[h, w]``, the window of sample
        ``index`` (output pixels) and the native window read for it.

        Each file is opened once; lazily indexed, the checks ``__init__`` skipped happen here.
        """
        i, r, c, h, w = (int(v) for v in self._windows[index])
        paths, mask = self.images[i], (self.masks[i] if with_mask or self.lazy else None)
        with ExitStack() as stack:
            srcs = [stack.enter_context(open_raster(p)) for p in paths]
            msrc = stack.enter_context(open_raster(mask)) if mask is not None else None
            if h < 0:  # lazy: the metadata comes with the read
                _, nh, nw, dtype, nd = sources_shape(srcs, paths)
                check_real_dtype(paths[0], dtype)
                if msrc is not None:
                    nh, nw = self._common_size(paths[0], (nh, nw), mask, (msrc.height, msrc.width))
                h, w = scaled_size(nh, nw, self.resample)
                nd = nd if self.nodata_override is None else self.nodata_override
            else:
                nh, nw = (int(v) for v in self._sizes[i])
                nd = self.nodata[i]
            win = Window(c, r, w, h)  # output pixels
            raw, src_win = read_scaled(srcs, paths, win, (nh, nw), self.resample, self.band_indexes)  # [C, h, w]
            raw_mask = (read_scaled([msrc], [mask], win, (nh, nw), self.resample, mask=True)[0][0]
                        if msrc is not None and with_mask else None)  # [h, w]
        return raw, nd, raw_mask, win, src_win

    def __getitem__(self, index: int) -> Sample:
        """Patch ``index``: image ``[C, P, P]`` (normalised, no-data 0), mask ``[P, P]``."""
        i = int(self._windows[index, 0])
        raw, nd, raw_mask, win, src_win = self._read(index)
        valid = valid_pixels(raw, nd)  # [h, w]
        image = normalize(raw, self.normalization, self.images[i][0])  # [C, h, w] float32
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
        mask_path = self.masks[i]
        if raw_mask is not None:
            if not self.remap and self.unlabelled != IGNORE_INDEX and not self._warned_0_255 \
                    and set(np.unique(raw_mask).tolist()) == {0, IGNORE_INDEX}:
                # binary masks saved as {0, 255}: every object pixel would be ignored, not learnt
                self._warned_0_255 = True
                warnings.warn(
                    f"mask {mask_path} holds only the values 0 and {IGNORE_INDEX}, and no remap is set: "
                    f"{IGNORE_INDEX} is the ignore index, so those pixels are ignored, not a class; for "
                    f"binary {{0, {IGNORE_INDEX}}} masks set remap: {{{IGNORE_INDEX}: 1}} (this warning is given once)",
                    stacklevel=2,
                )
            try:
                mask = remap_mask(raw_mask, self.remap, self.unlabelled)
            except ValueError as err:
                raise ValueError(f"mask {mask_path}: {err}") from err
            mask[~valid] = IGNORE_INDEX
        image, mask = pad_to(self.patch_size, image, mask)
        meta = {
            "source": self._source(i),
            "mask_source": mask_path,
            "window": [int(win.row_off), int(win.col_off), int(win.height), int(win.width)],  # output px
            "native_window": [float(src_win.row_off), float(src_win.col_off), float(src_win.height),
                              float(src_win.width)],
            "resample": self.resample,
        }
        try:
            return make_sample(image, mask, meta=meta)
        except ValueError as err:  # wrong dtype (complex image, fractional mask): name the files
            raise ValueError(f"{meta['source']} (mask {mask_path}): {err}") from err

class _PathLists(Sequence):
    """Per image, its file list: the path itself, or ``<chip folder>/<band file>`` per band."""

    def __init__(self, paths: np.ndarray, bands: list[str] | None) -> None:
        self._paths, self._bands = paths, bands

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, i: int) -> list[str]:  # type: ignore[override]
        p = os.fsdecode(self._paths[i])
        return [os.path.join(p, b) for b in self._bands] if self._bands else [p]


class _MaskPaths(Sequence):
    """Per image, its mask path, or ``None`` for image-only samples."""

    def __init__(self, paths: np.ndarray | None, n: int) -> None:
        self._paths, self._n = paths, n

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> str | None:  # type: ignore[override]
        return None if self._paths is None else os.fsdecode(self._paths[i])
