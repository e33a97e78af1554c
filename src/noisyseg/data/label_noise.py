"""Seeded label-noise operations on masks, reused by every dataset.

Each function is pure: ``(mask, ..., rng) -> noisy mask`` on ``int64``/integer ``[H, W]`` numpy
arrays, never touching :data:`IGNORE_INDEX` pixels. They model the noise that cheap labels carry:

* :func:`flip_objects` — whole cells / objects (or fixed blocks) get the wrong class (OSM tags,
  product errors);
* :func:`shift_boundaries` — borders eroded or dilated (misregistration, LiDAR footprints);
* :func:`jitter_objects` — each object dilated or eroded and translated on its own (OpenStreetMap /
  automatic building footprints);
* :func:`coarsen` — a 10 m product over 1 m imagery (block-mode downsample, nearest upsample);
* :func:`merge_classes` — pretraining classes that do not match the downstream ones;
* :func:`drop_objects` — objects missing from the product (set to background).

A noise model is a list of operations (:class:`NoiseOp` subclasses: :class:`Drop`, :class:`Flip`,
:class:`Boundary`, :class:`JitterObjects`, :class:`Coarsen`, :class:`Merge`) applied in the order
given, each to the previous one's output, drawing from one generator in order
(:func:`apply_noise`). :func:`parse_noise` builds the list from YAML-style specs::

    [{op: coarsen, factor: 16}, {op: flip, rate: 0.2, unit: blocks, block: 16}]
    [{op: drop, rate: 0.3}, {op: jitter_objects, grow: 2, shift: 3}]

or from the :class:`LabelNoise` fields (``{flip_rate: 0.3, coarse_factor: 8}``), which stand for the
fixed order drop, flip, boundary shift, coarsen, merge. :func:`apply_noise` applies any of these
specs. Objects are those of the current mask (connected components per class), except that
caller-given ``instances`` ``[H, W]`` (e.g. Voronoi cells) serve the object-level ops (drop, flip of
objects, jitter_objects) for as long as they still tile the mask: from the first op up to the
first one that moves a boundary (boundary, jitter_objects, coarsen, flip of blocks).

**Realised noise.** The noise a config asks for (a flip rate, a block size) is not the noise the
labels carry: flips of small objects change few pixels, coarsening erases thin ones.
:func:`noise_rate` measures the realised pixel noise rate of one mask; :class:`AgreementCounter`,
:func:`label_agreement` and :func:`dataset_agreement` measure the result as a confusion matrix of
noisy labels against clean ones (rows clean, columns noisy) and the scores read from it
(:meth:`AgreementCounter.result`):

* ``agreement`` — fraction of counted pixels whose noisy label equals the clean one;
* ``precision[k]`` — of the pixels the noisy mask calls ``k``, the fraction that are ``k``;
* ``recall[k]`` — of the pixels that are ``k``, the fraction the noisy mask calls ``k``;
* ``iou[k]`` — intersection over union of the noisy and clean ``k`` regions.

Counted pixels are those valid (not :data:`IGNORE_INDEX`) in both masks; ``noisy_ignored`` counts
clean pixels that the noisy mask ignores (``noisy_ignored_by_class``: per clean class),
``clean_ignored`` the pixels the clean mask ignores. A score with a zero denominator is NaN. The
confusion matrices of a dataset's samples are summed, so the scores weigh every pixel alike (not
every sample)::

    d = dataset_agreement(NoisyLabels(ds, noise=[{"op": "drop", "rate": 0.3}]), num_classes=2)
    print(format_agreement(d, ["background", "building"]))

``noisyseg data noise-report`` (:func:`noisyseg.data.preview.noise_report_main`) does this for one
split of a config and writes the confusion matrix as CSV, PNG and JSON.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from noisyseg.data.loading import CLEAN_MASK, IGNORE_INDEX, MASK

PROGRESS_FROM = 50
"""Datasets with at least this many samples get a tqdm progress bar in :func:`dataset_agreement`."""


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
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"LabelNoise.{name}={getattr(self, name)} is outside [0, 1]")
        if self.coarse_factor < 1:
            raise ValueError(f"LabelNoise.coarse_factor={self.coarse_factor} must be >= 1")

    def ops(self) -> list[NoiseOp]:
        """The same noise as an operation list: drop, flip, boundary, coarsen, merge (those set)."""
        out: list[NoiseOp] = [Drop(self.drop_rate, self.background)] if self.drop_rate else []
        out += [Flip(self.flip_rate)] if self.flip_rate else []
        out += [Boundary(self.boundary_shift, self.background)] if self.boundary_shift else []
        out += [Coarsen(self.coarse_factor)] if self.coarse_factor > 1 else []
        return out + ([Merge(dict(self.merge))] if self.merge else [])


def objects(mask: np.ndarray, instances: np.ndarray | None = None) -> np.ndarray:
    """Object ids ``[H, W]`` (0 = none): given instances, else connected components per class."""
    if instances is not None:
        return instances.astype(np.int64) + 1
    out = np.zeros(mask.shape, dtype=np.int64)
    next_id = 1
    for c in np.unique(mask[mask != IGNORE_INDEX]):
        lab, n = ndimage.label(mask == c)
        out[lab > 0] = lab[lab > 0] + next_id - 1
        next_id += n
    return out


def flip_objects(mask: np.ndarray, rate: float, num_classes: int, rng: np.random.Generator,
                 instances: np.ndarray | None = None) -> np.ndarray:
    """Give ``round(rate * objects)`` objects of ``mask`` ``[H, W]`` another class of ``0..num_classes-1`` (:func:`objects`)."""
    if num_classes < 2:
        raise ValueError(f"flipping needs num_classes >= 2, got {num_classes}")
    out = mask.copy()
    obj = objects(mask, instances)
    ids = np.unique(obj[(obj > 0) & (mask != IGNORE_INDEX)])
    for oid in rng.choice(ids, size=int(round(rate * len(ids))), replace=False):  # none: rng untouched
        sel = (obj == oid) & (mask != IGNORE_INDEX)
        cur = int(np.bincount(mask[sel]).argmax())
        out[sel] = (cur + rng.integers(1, num_classes)) % num_classes  # a different class: shift by 1..K-1 mod K
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


def block_ids(shape: tuple[int, int], block: int) -> np.ndarray:
    """Ids ``[H, W]`` of a grid of ``block x block`` squares (edge blocks cut by the image border)."""
    if block < 1:
        raise ValueError(f"block size {block} must be >= 1")
    n_cols = -(-shape[1] // block)  # blocks per row, the last one maybe cut
    rows, cols = np.arange(shape[0]) // block, np.arange(shape[1]) // block
    return rows[:, None] * n_cols + cols[None, :]  # [H, W]


def jitter_objects(
    mask: np.ndarray,
    grow: int,
    shift: int,
    rng: np.random.Generator,
    background: int = 0,
    instances: np.ndarray | None = None,
) -> np.ndarray:
    """Redraw every foreground object dilated or eroded by ``grow`` px and translated up to ``shift`` px.

    The noise of OpenStreetMap and automatic building footprints: outlines a few pixels too large
    or too small, each offset on its own (the registration noise of Mnih & Hinton 2012, "Learning
    to label aerial images from noisy data"; their omission noise is :func:`drop_objects`). It
    follows a plain calibration loop over ``ndimage.label`` components. Per object, in id order:
    dilate (probability 0.5) or erode by ``grow`` pixels (4-connected, as :func:`shift_boundaries`),
    then translate by ``(dy, dx)`` drawn uniformly from ``-shift..shift`` each. The output starts as
    ``background`` and the objects are painted in id order (a later object covers an earlier one
    where they meet); an object eroded away is lost. Pixels moved past the image border are lost
    (deviation: the loop's ``np.roll`` wraps them to the opposite side).

    Args:
        mask: ``[H, W]`` labels.
        grow: pixels to dilate or erode, >= 0.
        shift: largest translation per axis in pixels, >= 0.
        rng: seeded generator; three draws per object (``random``, then ``integers`` for dy, dx).
        background: the class that is not an object.
        instances: optional ``[H, W]`` object ids; else connected components per class.

    Returns:
        ``[H, W]`` labels; ignore pixels of ``mask`` stay ignored.

    Raises:
        ValueError: a negative ``grow`` or ``shift``.
    """
    if grow < 0 or shift < 0:
        raise ValueError(f"jitter_objects grow={grow} and shift={shift} must be >= 0")
    obj = objects(mask, instances)
    fg = (obj > 0) & (mask != background) & (mask != IGNORE_INDEX)
    fg_obj = np.where(fg, obj, 0)  # [H, W] foreground object ids, 0 elsewhere
    out = np.where(mask == IGNORE_INDEX, IGNORE_INDEX, background).astype(mask.dtype)
    h, w = mask.shape
    struct = ndimage.generate_binary_structure(2, 1)
    boxes = ndimage.find_objects(fg_obj)
    for oid in np.unique(fg_obj[fg]):
        rows, cols = boxes[oid - 1]
        # the object's box plus `grow` on every side: dilation and erosion there equal the full-image ones
        r0, r1 = max(rows.start - grow, 0), min(rows.stop + grow, h)
        c0, c1 = max(cols.start - grow, 0), min(cols.stop + grow, w)
        sel = fg_obj[r0:r1, c0:c1] == oid  # [h', w']
        cls = int(np.bincount(mask[r0:r1, c0:c1][sel]).argmax())
        if rng.random() < 0.5:
            shape = ndimage.binary_dilation(sel, struct, iterations=grow) if grow else sel
        else:
            shape = ndimage.binary_erosion(sel, struct, iterations=grow) if grow else sel
        dy, dx = int(rng.integers(-shift, shift + 1)), int(rng.integers(-shift, shift + 1))
        t0, t1 = max(r0 + dy, 0), min(r1 + dy, h)  # target rows / columns, clipped (no np.roll wrap)
        u0, u1 = max(c0 + dx, 0), min(c1 + dx, w)
        if t0 >= t1 or u0 >= u1:
            continue
        piece = shape[t0 - r0 - dy:t1 - r0 - dy, u0 - c0 - dx:u1 - c0 - dx]
        target = out[t0:t1, u0:u1]  # a view into out
        target[piece & (target != IGNORE_INDEX)] = cls
    return out


# -------------------------------------------------------------------------------- operation lists
class NoiseOp:
    """One step of a noise list: ``op(mask, num_classes, rng, instances) -> noisy mask``.

    Subclasses are frozen dataclasses whose fields are the YAML keys; ``op`` is the YAML name.
    ``uses_objects``: the step acts on objects, so caller-given instances apply to it;
    :meth:`keeps_objects`: after the step the instances still tile the mask (no boundary moved).
    """

    op: ClassVar[str]
    uses_objects: ClassVar[bool] = False

    def keeps_objects(self) -> bool:
        return True

    def __call__(self, mask: np.ndarray, num_classes: int, rng: np.random.Generator,
                 instances: np.ndarray | None = None) -> np.ndarray:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """The YAML form, ``{op: name, field: value, ...}``."""
        return {"op": self.op, **{f.name: getattr(self, f.name) for f in fields(self)}}  # type: ignore[arg-type]


def _check_rate(op: str, rate: float) -> None:
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"noise op {op!r}: rate={rate} is outside [0, 1]")


def _check_int(op: str, name: str, value: Any, low: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or (low is not None and value < low):
        want = "an integer" if low is None else f"an integer >= {low}"
        raise ValueError(f"noise op {op!r}: {name}={value!r} must be {want}")


@dataclass(frozen=True)
class Drop(NoiseOp):
    """Remove a fraction of the foreground objects (:func:`drop_objects`)."""

    rate: float  # fraction of foreground objects set to background, in [0, 1]
    background: int = 0  # the class dropped objects become
    op: ClassVar[str] = "drop"
    uses_objects: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check_rate(self.op, self.rate)

    def __call__(self, mask, num_classes, rng, instances=None):
        return drop_objects(mask, self.rate, rng, self.background, instances)


@dataclass(frozen=True)
class Flip(NoiseOp):
    """Give a fraction of the objects or of the ``block x block`` squares another class (:func:`flip_objects`)."""

    rate: float  # fraction of units flipped, in [0, 1]; round(rate * n_units) of them
    unit: str = "objects"  # "objects": objects of the current mask (or instances); "blocks": a fixed grid
    block: int | None = None  # side of the grid squares, needed with unit "blocks"
    op: ClassVar[str] = "flip"
    uses_objects: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check_rate(self.op, self.rate)
        if self.unit not in ("objects", "blocks"):
            raise ValueError(f"noise op 'flip': unit={self.unit!r}; valid: 'objects', 'blocks'")
        if self.unit == "blocks":
            _check_int(self.op, "block", self.block, 1)
        elif self.block is not None:
            raise ValueError(f"noise op 'flip': block={self.block} is only used with unit: blocks")

    def keeps_objects(self) -> bool:
        return self.unit == "objects"

    def __call__(self, mask, num_classes, rng, instances=None):
        if self.unit == "blocks":
            instances = block_ids(mask.shape, self.block)  # type: ignore[arg-type]
        return flip_objects(mask, self.rate, num_classes, rng, instances)


@dataclass(frozen=True)
class Boundary(NoiseOp):
    """Erode (< 0) or dilate (> 0) every foreground class by ``pixels`` (:func:`shift_boundaries`)."""

    pixels: int  # signed border shift in pixels
    background: int = 0  # the class grown over / given back
    op: ClassVar[str] = "boundary"

    def __post_init__(self) -> None:
        _check_int(self.op, "pixels", self.pixels, None)

    def keeps_objects(self) -> bool:
        return self.pixels == 0

    def __call__(self, mask, num_classes, rng, instances=None):
        return shift_boundaries(mask, self.pixels, self.background)


@dataclass(frozen=True)
class JitterObjects(NoiseOp):
    """Dilate or erode each object by ``grow`` px, translate it up to ``shift`` px (:func:`jitter_objects`)."""

    grow: int = 0  # pixels each object is dilated or eroded by (probability 0.5 each)
    shift: int = 0  # largest translation per axis in pixels
    background: int = 0  # the class that is not an object
    op: ClassVar[str] = "jitter_objects"
    uses_objects: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check_int(self.op, "grow", self.grow, 0)
        _check_int(self.op, "shift", self.shift, 0)

    def keeps_objects(self) -> bool:
        return self.grow == 0 and self.shift == 0

    def __call__(self, mask, num_classes, rng, instances=None):
        return jitter_objects(mask, self.grow, self.shift, rng, self.background, instances)


@dataclass(frozen=True)
class Coarsen(NoiseOp):
    """Block-mode downsample by ``factor`` and upsample back (:func:`coarsen`)."""

    factor: int  # block side of the coarse product, >= 1
    op: ClassVar[str] = "coarsen"

    def __post_init__(self) -> None:
        _check_int(self.op, "factor", self.factor, 1)

    def keeps_objects(self) -> bool:
        return self.factor == 1

    def __call__(self, mask, num_classes, rng, instances=None):
        return coarsen(mask, self.factor)


@dataclass(frozen=True)
class Merge(NoiseOp):
    """Relabel classes with ``mapping`` (source -> target) (:func:`merge_classes`)."""

    mapping: dict[int, int]  # YAML keys may be strings; stored as ints
    op: ClassVar[str] = "merge"

    def __post_init__(self) -> None:
        if not isinstance(self.mapping, dict):
            raise ValueError(f"noise op 'merge': mapping={self.mapping!r} must be a class -> class mapping")
        try:
            object.__setattr__(self, "mapping", {int(k): int(v) for k, v in self.mapping.items()})
        except (TypeError, ValueError) as err:
            raise ValueError(f"noise op 'merge': mapping={self.mapping!r} must map integers to integers") from err

    def __call__(self, mask, num_classes, rng, instances=None):
        return merge_classes(mask, self.mapping)


OPS: dict[str, type[NoiseOp]] = {"drop": Drop, "flip": Flip, "boundary": Boundary, "jitter_objects": JitterObjects,
                                  "coarsen": Coarsen, "merge": Merge}
"""YAML ``op`` name -> operation class."""


def parse_op(entry: NoiseOp | dict[str, Any], position: int = 0) -> NoiseOp:
    """One operation from ``{op: name, field: value, ...}`` (or an operation, returned as is).

    Raises:
        ValueError: not a mapping, no or an unknown ``op``, an unknown or missing field, a bad value;
            the message names the entry and lists what is valid.
    """
    if isinstance(entry, NoiseOp):
        return entry
    if not isinstance(entry, dict) or "op" not in entry:
        raise ValueError(f"noise entry {position} {entry!r} must be a mapping with an 'op' key; "
                         f"valid ops: {sorted(OPS)}")
    name = entry["op"]
    if name not in OPS:
        raise ValueError(f"noise entry {position}: unknown op {name!r}; valid ops: {sorted(OPS)}")
    cls = OPS[name]
    valid = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    kwargs = {k: v for k, v in entry.items() if k != "op"}
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ValueError(f"noise entry {position} (op {name!r}): unknown field(s) {unknown}; valid: {valid}")
    try:
        return cls(**kwargs)
    except TypeError as err:  # a required field missing
        raise ValueError(f"noise entry {position} (op {name!r}): {err}; fields: {valid}") from err


def legacy_noise(cfg: dict[str, Any]) -> LabelNoise:
    """:class:`LabelNoise` from its field dict (YAML ``merge`` keys may be strings).

    Raises:
        ValueError: an unknown field (lists the valid ones) or a bad value.
    """
    valid = {f.name for f in fields(LabelNoise)}
    unknown = sorted(set(cfg) - valid)
    if unknown:
        raise ValueError(f"unknown noise field(s) {unknown}; valid: {sorted(valid)}, "
                         f"or a list of ops {{op: ...}} with op one of {sorted(OPS)}")
    cfg = dict(cfg)
    if "merge" in cfg:
        cfg["merge"] = {int(k): int(v) for k, v in (cfg["merge"] or {}).items()}
    return LabelNoise(**cfg)


NoiseSpec = LabelNoise | dict[str, Any] | Sequence[NoiseOp | dict[str, Any]] | None
"""What :func:`parse_noise` takes."""


def parse_noise(spec: NoiseSpec) -> list[NoiseOp]:
    """The operation list of ``spec``: ``None``, a :class:`LabelNoise` or its field dict, an op dict or a list of ops.

    Raises:
        ValueError: an unknown field or op (listing the valid ones), or a bad value.
    """
    if spec is None:
        return []
    if isinstance(spec, LabelNoise):
        return spec.ops()
    if isinstance(spec, NoiseOp):
        return [spec]
    if isinstance(spec, dict):
        return [parse_op(spec)] if "op" in spec else legacy_noise(spec).ops()
    if isinstance(spec, (list, tuple)):
        return [parse_op(e, i) for i, e in enumerate(spec)]
    raise ValueError(f"noise spec {spec!r} must be a mapping of LabelNoise fields or a list of ops")


def apply_noise(mask: np.ndarray, noise: NoiseSpec, num_classes: int, rng: np.random.Generator,
                instances: np.ndarray | None = None) -> np.ndarray:
    """``mask`` ``[H, W]`` after the operations of ``noise`` (:func:`parse_noise`), each drawing from ``rng`` in turn.

    Returns int64 ``[H, W]``, IGNORE_INDEX where ``mask`` has it (``instances``: the module docstring).
    """
    clean = np.asarray(mask)
    out = clean.astype(np.int64, copy=True)
    for op in parse_noise(noise):
        out = op(out, num_classes, rng, instances if op.uses_objects else None)
        if not op.keeps_objects():
            instances = None  # the boundaries moved: objects come from the mask from here on
    out[clean == IGNORE_INDEX] = IGNORE_INDEX
    return out


def noise_rate(noisy: np.ndarray, clean: np.ndarray) -> float:
    """Realised pixel noise rate: fraction of valid clean pixels whose label changed (0 without any)."""
    valid = np.asarray(clean) != IGNORE_INDEX
    return float((np.asarray(noisy)[valid] != np.asarray(clean)[valid]).mean()) if valid.any() else 0.0


# -------------------------------------------------------------------------------- realised noise
class AgreementCounter:
    """Accumulate the noisy-vs-clean confusion matrix ``[K, K]`` (rows clean, columns noisy) over masks.

    Args:
        num_classes: size of the matrix; a label outside ``0..num_classes-1`` is an error. ``None``:
            the matrix grows to the largest label seen (for previews of unknown datasets).

    Raises:
        ValueError: ``num_classes < 1``; from :meth:`update`, masks of different shapes or a label
            outside the classes.
    """

    def __init__(self, num_classes: int | None = None) -> None:
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes={num_classes} must be >= 1")
        self.num_classes = num_classes
        # [K, 1 + K], rows clean: column 0 the pixels the noisy mask ignores, column 1 + j noisy label j
        self.counts = np.zeros((num_classes or 0, (num_classes or 0) + 1), np.int64)
        self.clean_ignored = 0  # pixels the clean mask ignores (whatever the noisy one says)
        self.samples = 0

    def update(self, noisy: Any, clean: Any) -> None:
        """Add one pair of ``[H, W]`` masks (numpy arrays or CPU tensors)."""
        noisy, clean = np.asarray(noisy).astype(np.int64), np.asarray(clean).astype(np.int64)
        if noisy.shape != clean.shape:
            raise ValueError(f"noisy mask {noisy.shape} and clean mask {clean.shape} differ in shape")
        clean_valid = clean != IGNORE_INDEX  # [H, W]
        c, n = clean[clean_valid], noisy[clean_valid]  # [P], n holds IGNORE_INDEX where the noisy mask ignores
        labels = np.concatenate([c, n[n != IGNORE_INDEX]])
        top, low, k = int(labels.max(initial=-1)), int(labels.min(initial=0)), len(self.counts)
        if low < 0 or (self.num_classes is not None and top >= k):
            raise ValueError(f"label {low if low < 0 else top} is outside 0..{k - 1} (num_classes={k}; "
                             f"ignore is {IGNORE_INDEX})")
        if top >= k:  # a growing matrix: zero rows and columns for the new labels
            self.counts, k = np.pad(self.counts, (0, top + 1 - k)), top + 1
        column = np.where(n == IGNORE_INDEX, 0, n + 1)  # [P]
        self.counts += np.bincount(c * (k + 1) + column, minlength=k * (k + 1)).reshape(k, k + 1)
        self.clean_ignored += int((~clean_valid).sum())
        self.samples += 1

    def result(self) -> dict[str, Any]:
        """The scores of the module docstring as plain Python values: ``pixels`` (counted), ``agreement``,
        ``[K]`` lists ``precision``, ``recall``, ``iou`` and ``noisy_ignored_by_class``, ``confusion`` ``[K, K]``
        as nested lists, ``samples``, ``noisy_ignored`` and ``clean_ignored``."""
        conf, dropped = self.counts[:, 1:], self.counts[:, 0]  # [K, K] rows clean, columns noisy; [K]
        diag, clean_total, noisy_total = np.diag(conf).astype(np.float64), conf.sum(1), conf.sum(0)  # [K] each
        den = np.stack([noisy_total, clean_total, clean_total + noisy_total - diag])  # [3, K]: precision, recall, IoU
        with np.errstate(divide="ignore", invalid="ignore"):  # a zero denominator gives NaN
            precision, recall, iou = np.where(den > 0, diag / np.maximum(den, 1), np.nan).tolist()
        pixels = int(conf.sum())
        return {"pixels": pixels, "agreement": float(diag.sum() / pixels) if pixels else float("nan"),
                "precision": precision, "recall": recall, "iou": iou, "confusion": conf.tolist(),
                "samples": self.samples, "noisy_ignored": int(dropped.sum()),
                "noisy_ignored_by_class": dropped.tolist(), "clean_ignored": self.clean_ignored}


def label_agreement(noisy: Any, clean: Any, num_classes: int) -> dict[str, Any]:
    """How far one noisy ``[H, W]`` mask is from its clean ``[H, W]`` mask: :meth:`AgreementCounter.result` without ``samples``.

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
    """:meth:`AgreementCounter.result` over ``dataset[:max_samples]``; ``progress``: tqdm (``None``: :data:`PROGRESS_FROM`).

    Raises:
        ValueError: a sample without ``mask`` or ``clean_mask``, or a label outside the classes.
    """
    n = len(dataset) if max_samples is None else min(len(dataset), int(max_samples))
    counter = AgreementCounter(num_classes)
    for i in tqdm(range(n), desc="label agreement", unit="sample", file=sys.stderr,
                  disable=not (n >= PROGRESS_FROM if progress is None else progress)):
        s = dataset[i]
        if MASK not in s or CLEAN_MASK not in s:
            raise ValueError(f"{type(dataset).__name__}[{i}] has no {[k for k in (MASK, CLEAN_MASK) if k not in s]}: "
                             f"agreement needs the noisy '{MASK}' and the '{CLEAN_MASK}'")
        counter.update(s[MASK], s[CLEAN_MASK])
    return counter.result()


def format_agreement(d: dict[str, Any], class_names: Sequence[str] | None = None) -> str:
    """A few readable lines: overall agreement, then precision / recall / IoU per class."""

    def pct(x: float) -> str:
        return "    -" if x != x else f"{100 * x:5.1f}"  # NaN: no pixel of the class

    names = [str(class_names[i]) if class_names and i < len(class_names) else f"class {i}" for i in range(len(d["iou"]))]
    width = max([len(n) for n in names] + [5])
    where = f" in {d['samples']} sample{'s' * (d['samples'] != 1)}" if "samples" in d else ""
    ignored = f"; {d['noisy_ignored']:,} clean pixels ignored in the noisy mask" if d.get("noisy_ignored") else ""
    lines = [f"noisy vs clean labels: {pct(d['agreement']).strip()} % of {d['pixels']:,} pixels agree{where}{ignored}",
             f"  {'class':<{width}}  precision  recall    IoU   (%)"]
    for i, name in enumerate(names):
        lines.append(f"  {name:<{width}}  {pct(d['precision'][i]):>9}  {pct(d['recall'][i]):>6}  {pct(d['iou'][i]):>5}")
    return "\n".join(lines)
