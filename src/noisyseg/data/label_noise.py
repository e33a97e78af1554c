"""Seeded label-noise functions on masks, reused by every dataset.

Each function is pure: ``(mask, ..., rng) -> noisy mask`` on ``int64``/integer ``[H, W]`` numpy
arrays, never touching :data:`IGNORE_INDEX` pixels. They model the noise that cheap labels carry:

* :func:`flip_objects` — whole cells / objects get the wrong class (OSM tags, product errors);
* :func:`shift_boundaries` — borders eroded or dilated (misregistration, LiDAR footprints);
* :func:`coarsen` — a 10 m product over 1 m imagery (block-mode downsample, nearest upsample);
* :func:`merge_classes` — pretraining classes that do not match the downstream ones;
* :func:`drop_objects` — objects missing from the product (set to background).

:func:`apply_noise` chains them from a :class:`LabelNoise` config and :func:`noise_rate` measures
the realised pixel noise rate, which is what reports quote.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from noisyseg.data.sample import IGNORE_INDEX


@dataclass
class LabelNoise:
    """Which noise to apply and how much (all default to none).

    Attributes:
        flip_rate: fraction of objects (cells) whose class is replaced by another random class.
        boundary_shift: pixels to erode (<0) or dilate (>0) the foreground classes; 0 = none.
        coarse_factor: block size of the coarse product (e.g. 10 for 10 m over 1 m); 1 = none.
        merge: class id -> class id mapping applied last (e.g. ``{2: 1}`` merges 2 into 1).
        drop_rate: fraction of foreground objects removed (set to ``background``).
        background: class that dropped objects and boundary shifts fall back to.
    """

    flip_rate: float = 0.0
    boundary_shift: int = 0
    coarse_factor: int = 1
    merge: dict[int, int] = field(default_factory=dict)
    drop_rate: float = 0.0
    background: int = 0

    def __post_init__(self) -> None:
        for name in ("flip_rate", "drop_rate"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"LabelNoise.{name}={v} is outside [0, 1]")
        if self.coarse_factor < 1:
            raise ValueError(f"LabelNoise.coarse_factor={self.coarse_factor} must be >= 1")

    @property
    def is_clean(self) -> bool:
        return (
            self.flip_rate == 0
            and self.boundary_shift == 0
            and self.coarse_factor == 1
            and not self.merge
            and self.drop_rate == 0
        )


def objects(mask: np.ndarray, instances: np.ndarray | None = None) -> np.ndarray:
    """Object ids ``[H, W]`` (0 = none): given instances, else connected components per class."""
    if instances is not None:
        return instances.astype(np.int64) + 1
    out = np.zeros(mask.shape, dtype=np.int64)
    next_id = 1
    for c in np.unique(mask):
        if c == IGNORE_INDEX:
            continue
        lab, n = ndimage.label(mask == c)
        out[lab > 0] = lab[lab > 0] + next_id - 1
        next_id += n
    return out


def flip_objects(
    mask: np.ndarray,
    rate: float,
    num_classes: int,
    rng: np.random.Generator,
    instances: np.ndarray | None = None,
) -> np.ndarray:
    """Give a fraction ``rate`` of objects a different, uniformly drawn class.

    Args:
        mask: ``[H, W]`` labels.
        rate: fraction of objects to flip, in [0, 1].
        num_classes: classes to draw from (``0..num_classes-1``).
        rng: seeded generator.
        instances: optional ``[H, W]`` object ids (e.g. Voronoi cells); else connected components.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"flip rate {rate} is outside [0, 1]")
    if num_classes < 2:
        raise ValueError(f"flipping needs num_classes >= 2, got {num_classes}")
    out = mask.copy()
    obj = objects(mask, instances)
    ids = np.unique(obj[(obj > 0) & (mask != IGNORE_INDEX)])
    n_flip = int(round(rate * len(ids)))
    if n_flip == 0:
        return out
    chosen = rng.choice(ids, size=n_flip, replace=False)
    for oid in chosen:
        sel = (obj == oid) & (mask != IGNORE_INDEX)
        cur = int(np.bincount(mask[sel]).argmax())
        # a *different* class: shift by 1..num_classes-1 modulo num_classes
        out[sel] = (cur + rng.integers(1, num_classes)) % num_classes
    return out


def shift_boundaries(mask: np.ndarray, pixels: int, background: int = 0) -> np.ndarray:
    """Erode (``pixels < 0``) or dilate (``pixels > 0``) every non-background class.

    Dilation grows each class over background only (first class wins where two meet); erosion
    turns the lost border into background. Deterministic.
    """
    if pixels == 0:
        return mask.copy()
    out = mask.copy()
    valid = mask != IGNORE_INDEX
    struct = ndimage.generate_binary_structure(2, 1)
    classes = [c for c in np.unique(mask) if c not in (background, IGNORE_INDEX)]
    if pixels < 0:
        for c in classes:
            region = mask == c
            kept = ndimage.binary_erosion(region, struct, iterations=-pixels)
            out[region & ~kept] = background
    else:
        for c in classes:
            grown = ndimage.binary_dilation(mask == c, struct, iterations=pixels)
            out[grown & (out == background) & valid & (mask == background)] = c
    return out


def coarsen(mask: np.ndarray, factor: int) -> np.ndarray:
    """Block-mode downsample by ``factor`` then nearest-neighbour upsample to the input size.

    Models a coarse land-cover product (e.g. 10 m Dynamic World over 1 m imagery). Each block takes
    its most frequent valid label; all-ignore blocks stay ignored.
    """
    if factor < 1:
        raise ValueError(f"coarse factor {factor} must be >= 1")
    if factor == 1:
        return mask.copy()
    h, w = mask.shape
    hp, wp = -(-h // factor) * factor, -(-w // factor) * factor
    padded = np.full((hp, wp), IGNORE_INDEX, dtype=np.int64)
    padded[:h, :w] = mask
    blocks = padded.reshape(hp // factor, factor, wp // factor, factor).transpose(0, 2, 1, 3)
    blocks = blocks.reshape(hp // factor, wp // factor, factor * factor)  # [h', w', f*f]
    n_cls = int(max(mask[mask != IGNORE_INDEX].max(initial=0), 0)) + 1
    counts = np.stack([(blocks == c).sum(-1) for c in range(n_cls)], -1)  # [h', w', K]
    coarse = counts.argmax(-1)
    coarse[counts.sum(-1) == 0] = IGNORE_INDEX
    up = np.repeat(np.repeat(coarse, factor, 0), factor, 1)[:h, :w]
    return up.astype(mask.dtype)


def merge_classes(mask: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    """Relabel with ``mapping`` (source -> target); unmapped classes keep their id."""
    out = mask.copy()
    for src, dst in mapping.items():
        out[mask == int(src)] = int(dst)
    return out


def drop_objects(
    mask: np.ndarray,
    rate: float,
    rng: np.random.Generator,
    background: int = 0,
    instances: np.ndarray | None = None,
) -> np.ndarray:
    """Remove a fraction ``rate`` of foreground objects (they become ``background``)."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"drop rate {rate} is outside [0, 1]")
    out = mask.copy()
    obj = objects(mask, instances)
    fg = (obj > 0) & (mask != background) & (mask != IGNORE_INDEX)
    ids = np.unique(obj[fg])
    n_drop = int(round(rate * len(ids)))
    if n_drop:
        chosen = rng.choice(ids, size=n_drop, replace=False)
        out[np.isin(obj, chosen) & fg] = background
    return out


def apply_noise(
    mask: np.ndarray,
    noise: LabelNoise,
    num_classes: int,
    rng: np.random.Generator,
    instances: np.ndarray | None = None,
) -> np.ndarray:
    """Apply ``noise`` in a fixed order: drop, flip, boundary shift, coarsen, merge."""
    out = np.asarray(mask).astype(np.int64, copy=True)
    if noise.drop_rate:
        out = drop_objects(out, noise.drop_rate, rng, noise.background, instances)
    if noise.flip_rate:
        out = flip_objects(out, noise.flip_rate, num_classes, rng, instances)
    if noise.boundary_shift:
        out = shift_boundaries(out, noise.boundary_shift, noise.background)
    if noise.coarse_factor > 1:
        out = coarsen(out, noise.coarse_factor)
    if noise.merge:
        out = merge_classes(out, noise.merge)
    out[np.asarray(mask) == IGNORE_INDEX] = IGNORE_INDEX
    return out


def noise_rate(noisy: np.ndarray, clean: np.ndarray) -> float:
    """Realised pixel noise rate: fraction of valid clean pixels whose label changed."""
    valid = np.asarray(clean) != IGNORE_INDEX
    n = int(valid.sum())
    if n == 0:
        return 0.0
    return float((np.asarray(noisy)[valid] != np.asarray(clean)[valid]).mean())
