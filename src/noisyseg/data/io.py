"""Raster files in, arrays out: finding files, opening them, windowed and resampled reads.

Every dataset that reads imagery goes through here: :func:`find_paths` resolves globs and lists
(header sidecars dropped), :func:`open_raster` opens one file with rasterio and names it when GDAL
cannot, :func:`read_sources` reads ``[C, h, w]`` from one multi-band file or one file per band,
optionally resampled by GDAL (:func:`read_scaled`: output-pixel windows, imagery by
:func:`image_resampling`, masks by :data:`MASK_RESAMPLING`), :func:`valid_pixels` says which
pixels hold data, and :func:`resize_image` resizes arrays already in memory (PIL) for readers that
decode whole images.
"""

from __future__ import annotations

import os
import warnings
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from PIL import Image
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.windows import Window

from noisyseg.data.grid import native_window, scaled_size
from noisyseg.data.index import glob_paths

SIDECAR_SUFFIXES = (".hdr", ".aux.xml", ".ovr", ".xml", ".prj", ".tfw", ".pgw", ".wld", ".json")
"""Files a glob may match that are headers or sidecars, never rasters (ENVI ``.hdr`` / ``.HDR``)."""



def image_resampling(resample: float) -> Resampling:
    """How imagery is resampled: area ``average`` to shrink, ``bilinear`` to enlarge.

    ``average`` gives each output pixel the mean of the native pixels its footprint covers (what
    a coarser sensor records; no aliasing, band means kept, GDAL leaves the file's no-data pixels
    out of the mean). Enlarging, ``average`` would copy blocks like nearest, so bilinear is used.
    GDAL rounds the result to the file's data type (integer imagery: to the nearest count).
    Masks always use ``nearest`` (:data:`MASK_RESAMPLING`).
    """
    return Resampling.average if resample < 1 else Resampling.bilinear


MASK_RESAMPLING = Resampling.nearest
"""Masks are resampled by nearest neighbour: every output pixel takes one native label, so class ids
and ignore / unlabelled values stay exact, and each class keeps its pixel share in expectation.
(A majority vote -- GDAL ``mode`` -- erodes minority classes such as small or thin buildings and
breaks 2 x 2 ties by GDAL's internal order.)"""


def open_raster(path: str | os.PathLike) -> rasterio.DatasetReader:
    """Open a raster with rasterio, naming the file when GDAL cannot read it.

    Raises:
        OSError: the file is missing or not a raster GDAL can read, or a PNG file is truncated.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)  # PNG / BMP have no CRS
            src = rasterio.open(path)
    except RasterioIOError as err:
        raise OSError(f"cannot read raster file {path}: {err}") from err
    if src.driver == "PNG" and not png_complete(path):
        src.close()
        raise OSError(f"cannot read raster file {path}: the PNG file is truncated (its final IEND chunk is "
                      "missing); copy or download it again")
    return src


PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # length 0, type, CRC of the empty IEND chunk
PNG_TAIL = 65536  # bytes searched for IEND when the file does not end with it (data after IEND)


def png_complete(path: str | os.PathLike) -> bool:
    """Whether a PNG file holds its final ``IEND`` chunk (``True`` for paths that are not local files).

    GDAL's whole-image PNG read returns uninitialised pixels for a truncated file, without an
    error, when the image is one block; a truncated file lacks the final chunk.
    """
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - len(PNG_IEND)))
            if f.read() == PNG_IEND:
                return True
            f.seek(max(0, size - PNG_TAIL))
            return PNG_IEND in f.read()
    except (OSError, TypeError):
        return True  # a /vsi... path or URL: left to GDAL


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
    with ExitStack() as stack:
        srcs = [stack.enter_context(open_raster(p)) for p in paths]
        return read_sources(srcs, paths, window, indexes)


def read_sources(
    srcs: list[rasterio.DatasetReader], paths: list[str], window: Window | None,
    indexes: list[int] | None = None, out_shape: tuple[int, int] | None = None,
    resampling: Resampling = Resampling.nearest,
) -> np.ndarray:
    """:func:`read_window` from rasters already open (``paths`` name them in errors).

    With ``out_shape`` ``(h, w)``, ``window`` (native pixels, fractional offsets allowed) is read
    resampled to ``h x w`` by GDAL with ``resampling``.
    """
    arrays = []
    for src, p in zip(srcs, paths):
        bands = indexes if len(paths) == 1 else 1
        kwargs: dict[str, Any] = {}
        if out_shape is not None:
            count = (len(bands) if isinstance(bands, (list, tuple)) else src.count) if len(paths) == 1 else None
            kwargs = {"out_shape": tuple(out_shape) if count is None else (count, *out_shape),
                      "resampling": resampling}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            try:
                arr = src.read(bands, window=window, **kwargs)
            except (RasterioIOError, IndexError) as err:
                raise OSError(f"cannot read bands {indexes} of raster file {p}: {err}") from err
        arrays.append(arr if arr.ndim == 3 else arr[None])
    return np.concatenate(arrays, 0)  # [C, h, w]


def raster_shape(paths: list[str]) -> tuple[int, int, int, str, float | None]:
    """``(bands, height, width, dtype, nodata)`` from metadata only (no pixels read).

    Raises:
        ValueError: single-band files of one image differ in size (names them).
    """
    with ExitStack() as stack:
        return sources_shape([stack.enter_context(open_raster(p)) for p in paths], paths)


def sources_shape(
    srcs: list[rasterio.DatasetReader], paths: list[str]
) -> tuple[int, int, int, str, float | None]:
    """:func:`raster_shape` of rasters already open."""
    shapes = [(src.count, src.height, src.width, src.dtypes[0], src.nodata) for src in srcs]
    if len({s[1:3] for s in shapes}) > 1:
        sizes = ", ".join(f"{p} {s[1]}x{s[2]}" for p, s in zip(paths, shapes))
        raise ValueError(f"band files of one image differ in size: {sizes}")
    bands = sum(s[0] for s in shapes) if len(paths) > 1 else shapes[0][0]
    return bands, shapes[0][1], shapes[0][2], shapes[0][3], shapes[0][4]


def valid_pixels(image: np.ndarray, nodata: float | None) -> np.ndarray:
    """``[H, W]`` bool: a pixel is no-data when every band equals ``nodata``, or any band is NaN/Inf.

    One non-finite band is enough: the pixel cannot be fed to a network, and it would turn the
    streamed band statistics (and with them every normalised image) into NaN.
    """
    invalid = np.any(~np.isfinite(image), 0) if image.dtype.kind == "f" else np.zeros(image.shape[1:], bool)
    if nodata is not None:
        invalid |= np.all(image == nodata, 0)
    return ~invalid


def read_scaled(
    srcs: list[rasterio.DatasetReader], paths: list[str], window: Window, native: tuple[int, int],
    resample: float, indexes: list[int] | None = None, mask: bool = False,
) -> tuple[np.ndarray, Window]:
    """Read an output-pixel ``window`` of rasters read at ``resample`` x their resolution.

    Args:
        srcs: the open rasters of one image (:func:`read_sources`).
        paths: their paths, for errors.
        window: the region in output pixels (the grid of :func:`~noisyseg.data.grid.scaled_size`).
        native: the rasters' ``(height, width)`` in their own pixels.
        resample: the read factor (1: native pixels, read as they are).
        indexes: 1-based bands of a single multi-band file.
        mask: resample as a mask (:data:`MASK_RESAMPLING`) instead of imagery
            (:func:`image_resampling`).

    Returns:
        ``[C, h, w]`` pixels and the native window read for them (``window`` itself at 1).
    """
    if resample == 1:
        src_win, shape = window, None
    else:  # the native region under the output window, read resampled to h x w
        src_win = native_window(window, native, scaled_size(*native, resample))
        shape = (int(window.height), int(window.width))
    resampling = MASK_RESAMPLING if mask else image_resampling(resample)
    return read_sources(srcs, paths, src_win, indexes, shape, resampling), src_win


def check_real_dtype(path: str, dtype: str) -> None:
    """Reject complex rasters: a float cast would silently drop the imaginary part.

    Raises:
        ValueError: ``dtype`` is complex (names the file).
    """
    if np.dtype(dtype).kind == "c":
        raise ValueError(f"image {path} has dtype {dtype}; bands must be real (int or float)")


def find_files(root: Path, pattern: str | list[str], what: str, dirs: bool = False) -> list[Path]:
    """Resolve a glob (relative to ``root``) or an explicit list, dropping header sidecars.

    Raises:
        FileNotFoundError: the glob matches nothing, or a listed file is missing (named).
    """
    return [Path(p) for p in find_paths(root, pattern, what, dirs)]


def find_paths(root: Path, pattern: str | list[str], what: str, dirs: bool = False,
               stats: dict[str, Any] | None = None) -> list[str]:
    """:func:`find_files` as ``str`` paths, listed without a ``stat`` per file
    (:func:`~noisyseg.data.index.glob_paths`).

    Matches that are not regular files (a FIFO, a device such as a link to ``/dev/zero``, a broken
    link) are skipped with a warning that counts them, added to ``stats["not_files_skipped"]``.

    Raises:
        FileNotFoundError: the glob matches nothing, or a listed file is missing (named).
    """
    if isinstance(pattern, (list, tuple)):
        out = [str(root / p) for p in pattern]
        for p in out:
            if not os.path.exists(p):
                raise FileNotFoundError(f"{what} file {p} does not exist")
        return out
    full = str(root / pattern)
    special: list[str] = []
    out = [p for p in glob_paths(full, dirs, special)
           if not p.lower().endswith(SIDECAR_SUFFIXES)]  # suffixes hold no "/"
    if special:
        warnings.warn(f"skipped {len(special)} {what} path(s) matching {full!r} that are not regular files "
                      f"(FIFO, device, socket or broken link): {special[:5]}", stacklevel=2)
        if stats is not None:
            stats["not_files_skipped"] = stats.get("not_files_skipped", 0) + len(special)
    if not out:
        kind = "folders" if dirs else "files"
        raise FileNotFoundError(f"the {what} glob {full!r} matches no {kind}")
    return out


def resize_image(image: np.ndarray, out_size: tuple[int, int]) -> np.ndarray:
    """``[C, H, W]`` -> float32 ``[C, H', W']``: PIL ``BOX`` (area mean) to shrink, ``BILINEAR`` to enlarge.

    Each band is resized as a float image, so averages are not rounded to integers; the output grid
    spans the whole image (as :func:`~noisyseg.data.grid.scaled_size`'s).
    """
    oh, ow = out_size
    method = Image.Resampling.BOX if oh * ow < image.shape[1] * image.shape[2] else Image.Resampling.BILINEAR
    bands = [np.asarray(Image.fromarray(b.astype(np.float32)).resize((ow, oh), method)) for b in image]
    return np.stack(bands)  # [C, H', W']
