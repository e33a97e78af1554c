"""Patch grids: where the patches of a raster start, and raster sizes after resampling.

Every tiled dataset (:class:`~noisyseg.data.raster.RasterSegmentation`, the temporal pairs,
xBD) cuts its rasters with :func:`patch_grid`; every dataset that reads at another resolution
sizes its output with :func:`scaled_size` and maps output windows back to file pixels with
:func:`native_window`.
"""

from __future__ import annotations

import math

from rasterio.windows import Window


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


def patch_grid(height: int, width: int, patch: int, overlap: int = 0) -> list[tuple[int, int, int, int]]:
    """The patches of a ``height x width`` raster, row by row: ``(row, col, h, w)`` each.

    Starts come from :func:`patch_starts` on both axes; ``h`` and ``w`` are ``patch`` except on an
    axis shorter than ``patch``, where the one patch is the whole axis (the reader pads it).

    Raises:
        ValueError: as :func:`patch_starts`.
    """
    cols = patch_starts(width, patch, overlap)
    return [(r, c, min(patch, height - r), min(patch, width - c))
            for r in patch_starts(height, patch, overlap) for c in cols]


def check_resample(resample: float) -> float:
    """``resample`` as a float, validated: finite and > 0.

    Raises:
        ValueError: not a finite number > 0 (names the value).
    """
    try:
        r = float(resample)
    except (TypeError, ValueError):
        r = math.nan
    if isinstance(resample, bool) or not math.isfinite(r) or r <= 0:
        raise ValueError(f"resample={resample!r} must be a finite number > 0 (1: native resolution, "
                         f"0.5: half the pixels per side, 2: twice)")
    return r


def scaled_size(height: int, width: int, resample: float) -> tuple[int, int]:
    """Output ``(height, width)`` of a raster read at ``resample`` x its resolution.

    Each side is ``side * resample`` rounded half up, at least 1: 1024 at 0.5 -> 512, 439 at 0.5
    -> 220. The output grid covers the whole raster, so an output pixel spans
    ``height / out_height`` x ``width / out_width`` native pixels (2 x 2 at 0.5 for even sides).
    """
    if resample == 1:
        return int(height), int(width)
    return max(1, math.floor(height * resample + 0.5)), max(1, math.floor(width * resample + 0.5))


def native_window(window: Window, native: tuple[int, int], out: tuple[int, int]) -> Window:
    """The native-pixel window (fractional offsets allowed) that an output-pixel ``window`` covers.

    Args:
        window: a window in output pixels of a raster read at size ``out``.
        native: the raster's ``(height, width)`` in its own pixels.
        out: its ``(height, width)`` after resampling (:func:`scaled_size`).
    """
    sy, sx = native[0] / out[0], native[1] / out[1]  # native pixels per output pixel
    return Window(window.col_off * sx, window.row_off * sy, window.width * sx, window.height * sy)
