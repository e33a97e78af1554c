"""Texture sources for the Voronoi-texture segmentation dataset (VTS).

Gerard & Sullivan (arXiv 2211.13756, §IV-B) fill Voronoi cells with crops of texture photographs
from the Describable Textures Dataset (DTD): ``stratified`` and ``veined`` for the two classes and
``matted`` as the noise texture. DTD cannot be downloaded here, so three sources are offered, all
behind one interface, :class:`TextureBank`:

* ``procedural:<family>`` — textures synthesised from filtered noise, no download, many random
  variants per family. ``stratified``, ``veined`` and ``matted`` stand in for the DTD categories
  of the paper; ``dotted``, ``cracked`` and ``woven`` are extra families.
* ``skimage:<name>`` — the CC0 texture photographs that scikit-image ships inside its wheel
  (``brick``, ``grass``, ``gravel``), cut into tiles so that splits get disjoint tiles.
* ``dtd:<category>`` — a folder in DTD's layout, ``<root>/images/<category>/*.jpg``.

Texture images are split 0.5/0.3/0.2 into train/val/test *by texture image*, so no texture image
appears in two splits. Everything is deterministic from ``seed``.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from scipy import ndimage

SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = (0.5, 0.3, 0.2)
PROCEDURAL_FAMILIES = ("stratified", "veined", "matted", "dotted", "cracked", "woven")
SKIMAGE_TEXTURES = ("brick", "grass", "gravel")


def split_indices(n: int, split: str, seed: int, fractions=SPLIT_FRACTIONS) -> np.ndarray:
    """Indices ``0..n-1`` of one split after a seeded shuffle; splits are disjoint and cover all.

    Raises:
        ValueError: for an unknown split, a fraction outside (0, 1) or fewer items than splits.
    """
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {SPLITS}")
    for f in fractions:
        if not 0.0 < f < 1.0:
            raise ValueError(f"split fraction {f} is outside (0, 1); fractions were {tuple(fractions)}")
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split fractions {tuple(fractions)} must sum to 1")
    if n < len(SPLITS):
        raise ValueError(f"need at least {len(SPLITS)} texture images to split, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    # cumulative boundaries, each split getting at least one image
    bounds = np.round(np.cumsum(fractions) * n).astype(int)
    bounds = np.maximum(bounds, np.arange(1, len(SPLITS) + 1))
    bounds[-1] = n
    start = 0 if split == "train" else bounds[SPLITS.index(split) - 1]
    return np.sort(order[start : bounds[SPLITS.index(split)]])


# ----------------------------------------------------------------------------- procedural textures


def _fractal_noise(rng: np.random.Generator, size: int, beta: float) -> np.ndarray:
    """Gaussian noise with a 1/f^beta power spectrum, scaled to [0, 1]. ``[size, size]``."""
    white = rng.standard_normal((size, size))
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.fftfreq(size)[None, :]
    f = np.sqrt(fx**2 + fy**2)
    f[0, 0] = 1.0
    out = np.real(np.fft.ifft2(np.fft.fft2(white) / f**beta))
    return _unit(out)


def _unit(x: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(x, 1), np.percentile(x, 99)
    return np.clip((x - lo) / max(hi - lo, 1e-8), 0.0, 1.0)


def _coords(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel grid rotated by a random angle (so orientation varies between variants)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    a = rng.uniform(0, np.pi)
    return xx * np.cos(a) + yy * np.sin(a), -xx * np.sin(a) + yy * np.cos(a)


def _stratified(rng: np.random.Generator, size: int) -> np.ndarray:
    # parallel layers of varying thickness, gently warped: sedimentary strata
    u, v = _coords(rng, size)
    warp = _fractal_noise(rng, size, 2.5) * rng.uniform(8, 20)
    period = rng.uniform(6, 16)
    layers = np.sin(2 * np.pi * (v + warp) / period) + 0.5 * np.sin(2 * np.pi * (v + warp) / (period * 2.7))
    grain = _fractal_noise(rng, size, 1.0)
    return _unit(layers + 0.35 * grain)


def _veined(rng: np.random.Generator, size: int) -> np.ndarray:
    # marble: thin bright veins along level sets of a strongly turbulent field
    u, _ = _coords(rng, size)
    turb = _fractal_noise(rng, size, 2.0) * rng.uniform(30, 60)
    veins = np.abs(np.sin(2 * np.pi * (u + turb) / rng.uniform(40, 90)))
    veins = 1.0 - veins ** rng.uniform(0.15, 0.35)
    base = _fractal_noise(rng, size, 2.2)
    return _unit(0.75 * veins + 0.25 * base)


def _matted(rng: np.random.Generator, size: int) -> np.ndarray:
    # tangled fibres: white noise smeared along a locally varying orientation field
    out = np.zeros((size, size))
    angle_field = _fractal_noise(rng, size, 3.0) * np.pi * 2
    for k in range(4):
        theta = float(np.median(angle_field)) + k * np.pi / 4 + rng.uniform(-0.3, 0.3)
        fibres = rng.standard_normal((size, size))
        length = int(rng.integers(5, 11))
        kernel = np.zeros((2 * length + 1, 2 * length + 1))
        for t in np.linspace(-length, length, 4 * length + 1):
            kernel[int(round(length + t * np.sin(theta))), int(round(length + t * np.cos(theta)))] = 1
        smeared = ndimage.convolve(fibres, kernel / kernel.sum(), mode="wrap")
        weight = np.cos(angle_field - theta) ** 2  # each orientation dominates a region
        out += weight * smeared
    return _unit(out)


def _dotted(rng: np.random.Generator, size: int) -> np.ndarray:
    img = np.zeros((size, size))
    n = int(rng.integers(20, 60))
    yy, xx = np.mgrid[0:size, 0:size]
    r = rng.uniform(3, 8)
    for cy, cx in rng.uniform(0, size, (n, 2)):
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = 1.0
    return _unit(img + 0.2 * _fractal_noise(rng, size, 1.5))


def _cracked(rng: np.random.Generator, size: int) -> np.ndarray:
    # cell borders of a dense Voronoi diagram: dry mud
    n = int(rng.integers(30, 80))
    pts = rng.uniform(0, size, (n, 2))
    yy, xx = np.mgrid[0:size, 0:size]
    d = np.sqrt((yy[..., None] - pts[:, 0]) ** 2 + (xx[..., None] - pts[:, 1]) ** 2)
    d.sort(-1)
    edge = np.exp(-(d[..., 1] - d[..., 0]) / rng.uniform(1.0, 2.5))
    return _unit(1.0 - edge + 0.3 * _fractal_noise(rng, size, 1.8))


def _woven(rng: np.random.Generator, size: int) -> np.ndarray:
    u, v = _coords(rng, size)
    p = rng.uniform(6, 12)
    a = np.sin(2 * np.pi * u / p)
    b = np.sin(2 * np.pi * v / p)
    checker = np.sign(np.sin(np.pi * u / p) * np.sin(np.pi * v / p))
    return _unit(np.where(checker > 0, a, b) + 0.2 * _fractal_noise(rng, size, 1.2))


_GENERATORS = {
    "stratified": _stratified,
    "veined": _veined,
    "matted": _matted,
    "dotted": _dotted,
    "cracked": _cracked,
    "woven": _woven,
}


def _colourise(gray: np.ndarray, rng: np.random.Generator, bands: int) -> np.ndarray:
    """Map a ``[S, S]`` texture in [0, 1] to ``[bands, S, S]`` between two random band vectors."""
    lo = rng.uniform(0.0, 0.45, bands)
    hi = rng.uniform(0.55, 1.0, bands)
    return (lo[:, None, None] + (hi - lo)[:, None, None] * gray[None]).astype(np.float32)


@functools.lru_cache(maxsize=4096)
def procedural_texture(family: str, variant: int, size: int, bands: int = 3, seed: int = 0) -> np.ndarray:
    """One procedural texture image ``[bands, size, size]`` in [0, 1], cached.

    Raises:
        ValueError: for an unknown family.
    """
    if family not in _GENERATORS:
        raise ValueError(f"unknown procedural texture family {family!r}; valid: {sorted(_GENERATORS)}")
    rng = np.random.default_rng([seed, PROCEDURAL_FAMILIES.index(family), variant, size])
    out = _colourise(_GENERATORS[family](rng, size), rng, bands)
    out.setflags(write=False)  # cached: callers must not modify it
    return out


# ----------------------------------------------------------------------------- texture bank


class TextureBank:
    """The texture images of one category in one split, each as ``[bands, S, S]`` float32 in [0, 1].

    Args:
        source: ``procedural:<family>``, ``skimage:<name>`` or ``dtd:<category>``.
        split: ``train``, ``val`` or ``test``.
        size: side of each texture image; must be at least the VTS image size.
        bands: output bands (greyscale photos are replicated; colour ones keep RGB when 3).
        variants: procedural variants in all splits together (split 0.5/0.3/0.2).
        dtd_root: DTD folder (with ``images/<category>/``) for ``dtd:`` sources.
        seed: seed of the split shuffle and of procedural variants.

    Raises:
        ValueError: for an unknown source, or a DTD folder without the category.
    """

    def __init__(
        self,
        source: str,
        split: str,
        size: int,
        bands: int = 3,
        variants: int = 40,
        dtd_root: str | None = None,
        seed: int = 0,
    ) -> None:
        kind, _, name = source.partition(":")
        self.source, self.split, self.size, self.bands, self.seed = source, split, size, bands, seed
        if kind == "procedural":
            if name not in _GENERATORS:
                raise ValueError(f"unknown procedural texture {name!r}; valid: {sorted(_GENERATORS)}")
            self._ids = split_indices(variants, split, seed)
            self._load = lambda i: procedural_texture(name, int(i), size, bands, seed)
        elif kind == "skimage":
            self._tiles = _skimage_tiles(name, size, bands)
            self._ids = split_indices(len(self._tiles), split, seed)
            self._load = lambda i: self._tiles[int(i)]
        elif kind == "dtd":
            files = _dtd_files(dtd_root, name)
            self._ids = split_indices(len(files), split, seed)
            self._load = lambda i: _read_photo(files[int(i)], size, bands)
        else:
            raise ValueError(
                f"unknown texture source {source!r}; use procedural:<family> ({', '.join(PROCEDURAL_FAMILIES)}), "
                f"skimage:<name> ({', '.join(SKIMAGE_TEXTURES)}) or dtd:<category>"
            )

    @property
    def ids(self) -> np.ndarray:
        """Identifiers of the texture images in this split (disjoint across splits)."""
        return self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, k: int) -> np.ndarray:
        return self._load(self._ids[k])

    def crop(self, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        """A random texture image of the split, randomly cropped to ``[bands, height, width]``."""
        tex = self[int(rng.integers(len(self)))]
        y = int(rng.integers(tex.shape[1] - height + 1))
        x = int(rng.integers(tex.shape[2] - width + 1))
        return tex[:, y : y + height, x : x + width]


@functools.lru_cache(maxsize=16)
def _skimage_tiles(name: str, size: int, bands: int) -> list[np.ndarray]:
    """Non-overlapping ``size`` tiles of a scikit-image texture photograph (shipped in its wheel)."""
    if name not in SKIMAGE_TEXTURES:
        raise ValueError(f"unknown scikit-image texture {name!r}; valid: {SKIMAGE_TEXTURES}")
    import skimage.data

    photo = getattr(skimage.data, name)().astype(np.float32) / 255.0  # [512, 512] greyscale
    n = photo.shape[0] // size
    if n * n < len(SPLITS):
        raise ValueError(f"skimage:{name} ({photo.shape[0]} px) gives fewer than 3 tiles of {size} px")
    tiles = []
    for i in range(n):
        for j in range(n):
            t = photo[i * size : (i + 1) * size, j * size : (j + 1) * size]
            tiles.append(np.repeat(t[None], bands, 0))
    return tiles


def _dtd_files(root: str | None, category: str) -> list[Path]:
    if root is None:
        raise ValueError(f"texture source dtd:{category} needs dtd_root (a folder with images/<category>/)")
    folder = Path(root) / "images" / category
    if not folder.is_dir():
        have = sorted(p.name for p in (Path(root) / "images").glob("*") if p.is_dir())
        raise ValueError(f"DTD folder {folder} does not exist; categories under {root}/images: {have or 'none'}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    if len(files) < len(SPLITS):
        raise ValueError(f"DTD category folder {folder} has {len(files)} images; need at least {len(SPLITS)}")
    return files


@functools.lru_cache(maxsize=512)
def _read_photo(path: Path, size: int, bands: int) -> np.ndarray:
    from PIL import Image

    try:
        img = Image.open(path).convert("RGB" if bands == 3 else "L")
    except OSError as e:
        raise ValueError(f"cannot read texture image {path}: {e}") from e
    scale = size / min(img.size)
    if scale > 1:  # upsample small photos so a crop of `size` fits
        img = img.resize((int(np.ceil(img.width * scale)), int(np.ceil(img.height * scale))))
    arr = np.asarray(img, dtype=np.float32) / 255.0
    arr = arr.transpose(2, 0, 1) if arr.ndim == 3 else np.repeat(arr[None], bands, 0)
    return arr
