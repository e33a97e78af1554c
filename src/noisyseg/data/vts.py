"""VTS: the synthetic Voronoi-texture segmentation dataset of Gerard & Sullivan (arXiv 2211.13756).

§IV-B of the paper: each image is cut into N random Voronoi cells, split equally at random between
two classes; each class's cells are filled from one texture image of that class's category,
randomly cropped to the image size. Noisy positive pairs (§IV-B1) replace a fraction ``p`` of a
scene's cells with the noise texture (DTD ``matted``).

Every sample is a pure function of ``(seed, split, index)`` (plus ``epoch`` for the random pairing
of :class:`VTSPairs`), generated on the fly: no disk, identical in every worker and process.

* :class:`VTSSegmentation` — images with (optionally noisy) masks and the clean mask.
* :class:`VTSPairs` — positive pairs with noisy-pair rate ``r``, per-image noise ``p`` and the
  *mere-exposure* control.

**Textures.** The paper fills the cells with crops of photographs from the Describable Textures
Dataset (DTD): ``stratified`` and ``veined`` for the two classes, ``matted`` as the noise texture.
DTD cannot be downloaded here, so :class:`TextureBank` offers three sources behind one interface:

* ``procedural:<family>`` — textures synthesised from filtered noise (Gaussian noise with a
  1/f^beta power spectrum), no download, many random variants per family, each on a pixel grid
  rotated by a random angle and coloured between two random band vectors. ``stratified``
  (parallel layers of varying thickness, gently warped: sedimentary strata), ``veined`` (marble:
  thin bright veins along level sets of a strongly turbulent field) and ``matted`` (tangled
  fibres: white noise smeared along a locally varying orientation field, each orientation
  dominating a region) stand in for the DTD categories of the paper; ``dotted``, ``cracked``
  (cell borders of a dense Voronoi diagram: dry mud) and ``woven`` are extra families.
* ``skimage:<name>`` — the CC0 texture photographs that scikit-image ships inside its wheel
  (``brick``, ``grass``, ``gravel``), cut into tiles so that splits get disjoint tiles.
* ``dtd:<category>`` — a folder in DTD's layout, ``<root>/images/<category>/*.jpg``.

Texture images are split 0.5/0.3/0.2 into train/val/test *by texture image*
(:func:`split_indices`), so no texture image appears in two splits. Procedural textures are made twice the image size so that crops differ; photo tiles are
at least 128 px so that a 512 px photo still yields 16 tiles to split. Everything is
deterministic from ``seed``.

**Speed.** :meth:`VTSGenerator.scene` finds each pixel's nearest cell seed from dy² ``[H, 1, N]``
plus dx² ``[1, W, N]`` instead of summing a ``(H*W) x N x 2`` array: the same float32 operations
(a two-term sum is one addition), so the cells are bit-identical.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from torch.utils.data import Dataset

from noisyseg.data.label_noise import LabelNoise, apply_noise, noise_rate
from noisyseg.data.loading import Sample, epoch_of, make_sample, normalize

SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = (0.5, 0.3, 0.2)
PROCEDURAL_FAMILIES = ("stratified", "veined", "matted", "dotted", "cracked", "woven")
SKIMAGE_TEXTURES = ("brick", "grass", "gravel")
CATEGORIES = ("procedural:stratified", "procedural:veined")
"""Default texture sources of the two classes (the paper's DTD ``stratified`` and ``veined``)."""

PAPER_SPLIT_SIZES = {"train": 6000, "val": 3600, "test": 2400}
"""Split sizes of the paper; datasets take their own ``length``."""

VTS_MEAN, VTS_STD = 0.5, 0.25
"""Normalisation of VTS images (textures lie in [0, 1]); recorded in encoder files."""


# ----------------------------------------------------------------------------- textures
def split_indices(n: int, split: str, seed: int) -> np.ndarray:
    """Indices ``0..n-1`` of ``split`` after a seeded 0.5/0.3/0.2 split (disjoint, covering all); ValueError for n < 3."""
    if n < len(SPLITS):
        raise ValueError(f"need at least {len(SPLITS)} texture images to split, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    bounds = np.round(np.cumsum(SPLIT_FRACTIONS) * n).astype(int)
    for k in range(len(SPLITS) - 1):  # every split keeps at least one image (n = 3 rounds val away)
        bounds[k] = min(max(bounds[k], (bounds[k - 1] if k else 0) + 1), n - (len(SPLITS) - 1 - k))
    bounds[-1] = n
    k = SPLITS.index(split)
    return np.sort(order[bounds[k - 1] if k else 0 : bounds[k]])


def _unit(x: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(x, 1), np.percentile(x, 99)
    return np.clip((x - lo) / max(hi - lo, 1e-8), 0.0, 1.0)


def _fractal_noise(rng: np.random.Generator, size: int, beta: float) -> np.ndarray:
    """Gaussian noise with a 1/f^beta power spectrum, scaled to [0, 1]: ``[size, size]``."""
    white = rng.standard_normal((size, size))
    f = np.sqrt(np.fft.fftfreq(size)[None, :] ** 2 + np.fft.fftfreq(size)[:, None] ** 2)  # [S, S]
    f[0, 0] = 1.0
    return _unit(np.real(np.fft.ifft2(np.fft.fft2(white) / f**beta)))


def _coords(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel grid rotated by a random angle (so orientation varies between variants)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    a = rng.uniform(0, np.pi)
    return xx * np.cos(a) + yy * np.sin(a), -xx * np.sin(a) + yy * np.cos(a)


def _stratified(rng: np.random.Generator, size: int) -> np.ndarray:
    _, v = _coords(rng, size)
    warp = _fractal_noise(rng, size, 2.5) * rng.uniform(8, 20)
    period = rng.uniform(6, 16)
    layers = np.sin(2 * np.pi * (v + warp) / period) + 0.5 * np.sin(2 * np.pi * (v + warp) / (period * 2.7))
    return _unit(layers + 0.35 * _fractal_noise(rng, size, 1.0))


def _veined(rng: np.random.Generator, size: int) -> np.ndarray:
    u, _ = _coords(rng, size)
    turb = _fractal_noise(rng, size, 2.0) * rng.uniform(30, 60)
    veins = 1.0 - np.abs(np.sin(2 * np.pi * (u + turb) / rng.uniform(40, 90))) ** rng.uniform(0.15, 0.35)
    return _unit(0.75 * veins + 0.25 * _fractal_noise(rng, size, 2.2))


def _matted(rng: np.random.Generator, size: int) -> np.ndarray:
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
        out += np.cos(angle_field - theta) ** 2 * smeared  # each orientation dominates a region
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


_GENERATORS = {"stratified": _stratified, "veined": _veined, "matted": _matted, "dotted": _dotted,
               "cracked": _cracked, "woven": _woven}


@functools.lru_cache(maxsize=4096)
def procedural_texture(family: str, variant: int, size: int, bands: int = 3, seed: int = 0) -> np.ndarray:
    """One procedural texture ``[bands, size, size]`` in [0, 1], cached (read-only)."""
    rng = np.random.default_rng([seed, PROCEDURAL_FAMILIES.index(family), variant, size])
    gray = _GENERATORS[family](rng, size)  # [S, S]
    lo, hi = rng.uniform(0.0, 0.45, bands), rng.uniform(0.55, 1.0, bands)  # colours at 0 and 1: [bands] each
    out = (lo[:, None, None] + (hi - lo)[:, None, None] * gray[None]).astype(np.float32)
    out.setflags(write=False)  # cached: callers must not modify it
    return out


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

    Attributes:
        ids: identifiers of the texture images in this split (disjoint across splits).

    Raises:
        ValueError: for an unknown source, or a DTD folder without the category.
    """

    def __init__(self, source: str, split: str, size: int, bands: int = 3, variants: int = 40,
                 dtd_root: str | None = None, seed: int = 0) -> None:
        kind, _, name = source.partition(":")
        if kind not in _SOURCES:
            raise ValueError(f"unknown texture source {source!r}; use procedural:<family> ({', '.join(PROCEDURAL_FAMILIES)}), "
                             f"skimage:<name> ({', '.join(SKIMAGE_TEXTURES)}) or dtd:<category>")
        self.source, self.split, self.size, self.bands = source, split, size, bands
        n, self._load = _SOURCES[kind](name, size, bands, variants, dtd_root, seed)
        self.ids = split_indices(n, split, seed)

    def crop(self, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        """A random texture image of the split, randomly cropped to ``[bands, height, width]``."""
        tex = self._load(self.ids[int(rng.integers(len(self.ids)))])
        y = int(rng.integers(tex.shape[1] - height + 1))
        x = int(rng.integers(tex.shape[2] - width + 1))
        return tex[:, y : y + height, x : x + width]


def _procedural(name: str, size: int, bands: int, variants: int, dtd_root: str | None, seed: int):
    if name not in _GENERATORS:
        raise ValueError(f"unknown procedural texture {name!r}; valid: {sorted(_GENERATORS)}")
    return variants, lambda i: procedural_texture(name, int(i), size, bands, seed)


def _skimage(name: str, size: int, bands: int, variants: int, dtd_root: str | None, seed: int):
    tiles = _skimage_tiles(name, size, bands)
    return len(tiles), lambda i: tiles[int(i)]


def _dtd(name: str, size: int, bands: int, variants: int, dtd_root: str | None, seed: int):
    files = _dtd_files(dtd_root, name)
    return len(files), lambda i: _read_photo(files[int(i)], size, bands)


_SOURCES = {"procedural": _procedural, "skimage": _skimage, "dtd": _dtd}
"""Source kind -> ``(name, size, bands, variants, dtd_root, seed) -> (image count, load(id))``."""


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


# ----------------------------------------------------------------------------- scenes
@dataclass
class Scene:
    """One generated scene before normalisation.

    Attributes:
        image: ``[C, H, W]`` float32 in [0, 1].
        mask: ``[H, W]`` int64 class of each pixel (clean).
        cells: ``[H, W]`` int64 Voronoi cell id of each pixel.
        cell_class: ``[N]`` class of each cell.
    """

    image: np.ndarray
    mask: np.ndarray
    cells: np.ndarray
    cell_class: np.ndarray


class VTSGenerator:
    """Scene generator shared by the VTS datasets.

    Args:
        split: ``train``, ``val`` or ``test`` (texture images never cross splits).
        size: image side in pixels (default 128 here; the paper's images are larger).
        num_cells: Voronoi cells per image (paper: 20); at least one per class.
        categories: texture source of each class (see :class:`TextureBank`), at least 2.
        noise_texture: texture source of the noise class (DTD ``matted`` in the paper).
        third_class: downstream variant — a third class whose cells carry the noise texture,
            correctly labelled; the cells are split equally among the three classes.
        bands: image bands.
        texture_variants: procedural variants per family over all splits.
        dtd_root: DTD folder for ``dtd:`` sources.
        seed: dataset seed.

    Attributes:
        normalization: ``{"mean", "std"}`` per band (:data:`VTS_MEAN`, :data:`VTS_STD`).

    Raises:
        ValueError: for fewer than 2 categories, fewer cells than classes, an image smaller than
            8 px or a bad split or texture source.
    """

    def __init__(self, split: str = "train", size: int = 128, num_cells: int = 20,
                 categories: tuple[str, ...] | list[str] = CATEGORIES, noise_texture: str = "procedural:matted",
                 third_class: bool = False, bands: int = 3, texture_variants: int = 40,
                 dtd_root: str | None = None, seed: int = 0) -> None:
        if split not in SPLITS:
            raise ValueError(f"split {split!r} is not one of {SPLITS}")
        if len(categories) < 2:
            raise ValueError(f"VTS needs at least 2 texture categories, got {list(categories)}")
        if num_cells < len(categories) + third_class:
            raise ValueError(f"num_cells={num_cells} is too small: one cell per class needs {len(categories) + third_class}")
        if size < 8:
            raise ValueError(f"image size {size} is too small; use at least 8 px")
        self.split, self.size, self.num_cells, self.bands, self.seed = split, size, num_cells, bands, seed
        banks = [TextureBank(src, split, 2 * size if src.startswith("procedural") else max(size, 128), bands,
                             texture_variants, dtd_root, seed) for src in (*categories, noise_texture)]
        self.noise_bank = banks[-1]
        self.class_banks = banks[:-1] + [self.noise_bank] * third_class  # third_class: the noise texture is a class
        self.num_classes = len(self.class_banks)
        self.normalization = {"mean": [VTS_MEAN] * bands, "std": [VTS_STD] * bands}
        self._axis = np.arange(size, dtype=np.float32)  # pixel coordinates along y and x: [S]

    def rng(self, index: int, *extra: int) -> np.random.Generator:
        """The generator of one sample: a pure function of (seed, split, index, extra...)."""
        return np.random.default_rng([self.seed, SPLITS.index(self.split), index, *extra])

    def scene(self, index: int) -> Scene:
        """Generate scene ``index`` of this split."""
        rng, s = self.rng(index), self.size
        pts = rng.uniform(0, s, (self.num_cells, 2)).astype(np.float32)  # cell seeds: Nx2
        dy2 = (self._axis[:, None] - pts[None, :, 0]) ** 2  # HxN
        dx2 = (self._axis[:, None] - pts[None, :, 1]) ** 2  # WxN
        cells = (dy2[:, None, :] + dx2[None, :, :]).argmin(-1).astype(np.int64)  # HxW: the nearest seed
        cell_class = (np.arange(self.num_cells) % self.num_classes)[rng.permutation(self.num_cells)]  # [N] equal shares
        mask = cell_class[cells]
        image = np.empty((self.bands, s, s), dtype=np.float32)
        for c, bank in enumerate(self.class_banks):
            sel = mask == c
            image[:, sel] = bank.crop(rng, s, s)[:, sel]  # one texture image per class
        return Scene(image, mask, cells, cell_class)

    def corrupt(self, scene: Scene, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``round(fraction * N)`` random cells refilled with the noise texture: image ``[C, H, W]``, replaced ``[H, W]`` bool."""
        chosen = rng.choice(self.num_cells, size=int(round(fraction * self.num_cells)), replace=False)
        replaced = np.isin(scene.cells, chosen)
        image = scene.image.copy()
        image[:, replaced] = self.noise_bank.crop(rng, self.size, self.size)[:, replaced]
        return image, replaced


class VTSSegmentation(Dataset):
    """VTS images with clean and (optionally) noisy masks — the noisy-label pretraining data.

    Args:
        split: ``train``, ``val`` or ``test``.
        length: number of images (paper: 6000/3600/2400; defaults to the paper's size of ``split``).
        size, num_cells, categories, noise_texture, third_class, bands, texture_variants,
        dtd_root, seed: see :class:`VTSGenerator`.
        label_noise: keyword arguments of :class:`~noisyseg.data.label_noise.LabelNoise` applied to
            the training mask (cells are the objects that flip), drawn from the sample's own
            stream (tag 1) so the noise does not change the scene; ``clean_mask`` keeps the truth.
        cache: keep generated samples in memory (they are deterministic), so later epochs cost
            nothing; ~``length * bands * size**2 * 4`` bytes.

    Raises:
        ValueError: for a non-positive length or invalid generator parameters.
    """

    def __init__(self, split: str = "train", length: int | None = None, size: int = 128, num_cells: int = 20,
                 categories: list[str] = CATEGORIES, noise_texture: str = "procedural:matted",  # type: ignore[assignment]
                 third_class: bool = False, bands: int = 3, texture_variants: int = 40, dtd_root: str | None = None,
                 label_noise: dict | None = None, seed: int = 0, cache: bool = False) -> None:
        self.gen = VTSGenerator(split, size, num_cells, categories, noise_texture, third_class, bands,
                                texture_variants, dtd_root, seed)
        self.length = PAPER_SPLIT_SIZES[split] if length is None else int(length)
        if self.length < 1:
            raise ValueError(f"length={length} must be >= 1")
        self.noise = LabelNoise(**(label_noise or {}))
        self.num_classes, self.normalization = self.gen.num_classes, self.gen.normalization
        self._cache: dict[int, Sample] | None = {} if cache else None

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for VTS split of length {self.length}")
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        sc = self.gen.scene(index)
        noisy = apply_noise(sc.mask, self.noise, self.num_classes, self.gen.rng(index, 1), sc.cells)
        meta = {"index": index, "split": self.gen.split, "noise_rate": noise_rate(noisy, sc.mask)}
        sample = make_sample(normalize(sc.image, self.normalization), noisy, clean_mask=sc.mask, meta=meta)
        if self._cache is not None:
            self._cache[index] = sample
        return sample


class VTSPairs(Dataset):
    """VTS positive pairs with noisy pairs, after Gerard & Sullivan §IV-B1.

    Each time an image is loaded, with probability ``r`` it is paired with its noisy partner — the
    same scene with a fraction ``p`` of its cells refilled with the noise texture — otherwise with a
    copy of itself (the training task augments both views independently). ``mask`` and ``mask2``
    are the noise-free labels of the scene for both images, as in the paper's dense losses.
    With ``mere_exposure`` a noisy pair is replaced by two copies of the noisy image: the encoder
    sees the noise texture exactly as often, but never a mismatched pair.

    "Each time loaded" is made reproducible by drawing from (seed, split, index, epoch). The epoch
    comes with the index (:func:`~noisyseg.data.loading.epoch_of`: the training loader's
    :class:`~noisyseg.data.loading.EpochSampler` tags every index), so it reaches loader workers;
    a plain integer index is epoch 0.

    Args:
        r: noisy-pairs rate in [0, 1].
        p: per-image noise, the fraction of cells replaced, in [0, 1].
        mere_exposure: the control arm.
        cache: keep generated scenes in memory (the pairing is still redrawn every epoch).
        Others: see :class:`VTSSegmentation`.

    Raises:
        ValueError: when ``r`` or ``p`` lies outside [0, 1].
    """

    draws_per_epoch = True  # the pairing is redrawn every epoch: never cache samples

    def __init__(self, split: str = "train", length: int | None = None, r: float = 0.0, p: float = 0.5,
                 mere_exposure: bool = False, size: int = 128, num_cells: int = 20,
                 categories: list[str] = CATEGORIES, noise_texture: str = "procedural:matted",  # type: ignore[assignment]
                 bands: int = 3, texture_variants: int = 40, dtd_root: str | None = None, seed: int = 0,
                 cache: bool = False) -> None:
        if not (0.0 <= float(r) <= 1.0 and 0.0 <= float(p) <= 1.0):
            raise ValueError(f"r (noisy-pairs rate)={r} or p (per-image noise)={p} is outside [0, 1]")
        self.gen = VTSGenerator(split, size, num_cells, categories, noise_texture, False, bands,
                                texture_variants, dtd_root, seed)
        self.length = PAPER_SPLIT_SIZES[split] if length is None else int(length)
        if self.length < 1:
            raise ValueError(f"length={length} must be >= 1")
        self.r, self.p, self.mere_exposure = float(r), float(p), bool(mere_exposure)
        self.num_classes, self.normalization = self.gen.num_classes, self.gen.normalization
        self.cache, self._scenes = cache, {}  # index -> Scene, kept when cache

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for VTS pairs of length {self.length}")
        sc = self._scenes.get(index) or self.gen.scene(index)
        if self.cache:
            self._scenes[index] = sc
        epoch, index = epoch_of(index), int(index)
        rng = self.gen.rng(index, 2, epoch)  # pairing stream: differs every epoch
        noisy = bool(rng.random() < self.r)
        image2, replaced = self.gen.corrupt(sc, self.p, rng) if noisy else (sc.image, np.zeros(1))  # replaced: [H, W] bool
        image = image2 if self.mere_exposure else sc.image  # mere exposure: both views show the noise, no mismatch
        meta = {"index": index, "epoch": epoch, "noisy": noisy, "replaced_fraction": float(replaced.mean()),
                "mere_exposure": self.mere_exposure}
        return make_sample(normalize(image, self.normalization), sc.mask, image2=normalize(image2, self.normalization),
                           mask2=sc.mask, noisy_pair=noisy and not self.mere_exposure, meta=meta)
