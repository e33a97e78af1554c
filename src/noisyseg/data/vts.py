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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch.utils.data import Dataset

from noisyseg.data.label_noise import LabelNoise, apply_noise, noise_rate
from noisyseg.data.sample import Sample, make_sample, normalize
from noisyseg.data.samplers import epoch_of
from noisyseg.data.textures import SPLITS, TextureBank

PAPER_SPLIT_SIZES = {"train": 6000, "val": 3600, "test": 2400}
"""Split sizes of the paper; datasets take their own ``length``."""

VTS_MEAN, VTS_STD = 0.5, 0.25
"""Normalisation of VTS images (textures lie in [0, 1]); recorded in encoder files."""


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
        num_cells: Voronoi cells per image (paper: 20); at least 2.
        categories: texture source of each class (see :class:`~noisyseg.data.textures.TextureBank`).
        noise_texture: texture source of the noise class (DTD ``matted`` in the paper).
        third_class: downstream variant — a third class whose cells carry the noise texture,
            correctly labelled; the cells are split equally among the three classes.
        bands: image bands.
        texture_variants: procedural variants per family over all splits.
        dtd_root: DTD folder for ``dtd:`` sources.
        seed: dataset seed.

    Raises:
        ValueError: for fewer than 2 cells (3 with ``third_class``), an image smaller than 8 px or
            a bad split or texture source.
    """

    def __init__(
        self,
        split: str = "train",
        size: int = 128,
        num_cells: int = 20,
        categories: tuple[str, ...] | list[str] = ("procedural:stratified", "procedural:veined"),
        noise_texture: str = "procedural:matted",
        third_class: bool = False,
        bands: int = 3,
        texture_variants: int = 40,
        dtd_root: str | None = None,
        seed: int = 0,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split {split!r} is not one of {SPLITS}")
        n_cls = len(categories) + int(third_class)
        if num_cells < max(2, n_cls):
            raise ValueError(f"num_cells={num_cells} is too small: need at least {max(2, n_cls)} (one cell per class)")
        if size < 8:
            raise ValueError(f"image size {size} is too small; use at least 8 px")
        if len(categories) < 2:
            raise ValueError(f"VTS needs at least 2 texture categories, got {list(categories)}")
        self.split, self.size, self.num_cells, self.bands, self.seed = split, size, num_cells, bands, seed
        self.third_class = third_class

        def bank(src: str) -> TextureBank:
            # procedural textures are made larger than the image so crops differ; photo tiles are
            # at least 128 px so a 512 px photo still yields 16 tiles to split
            tex_size = 2 * size if src.startswith("procedural") else max(size, 128)
            return TextureBank(src, split, tex_size, bands, texture_variants, dtd_root, seed)

        self.class_banks = [bank(c) for c in categories]
        self.noise_bank = bank(noise_texture)
        if third_class:
            self.class_banks.append(self.noise_bank)
        self.num_classes = len(self.class_banks)
        self._axis = np.arange(size, dtype=np.float32)  # pixel coordinates along y and x: [S]

    def rng(self, index: int, *extra: int) -> np.random.Generator:
        """The generator of one sample: a pure function of (seed, split, index, extra...)."""
        return np.random.default_rng([self.seed, SPLITS.index(self.split), index, *extra])

    def scene(self, index: int) -> Scene:
        """Generate scene ``index`` of this split."""
        rng = self.rng(index)
        s = self.size
        pts = rng.uniform(0, s, (self.num_cells, 2)).astype(np.float32)  # cell seeds: Nx2
        # squared distance of every pixel to every seed: HxWxN, nearest seed is the cell.
        # speed: dy^2 [H,1,N] + dx^2 [1,W,N] instead of summing a (H*W)xNx2 array; the same
        # float32 operations (a two-term sum is one addition), so the cells are bit-identical
        dy2 = (self._axis[:, None] - pts[None, :, 0]) ** 2  # HxN
        dx2 = (self._axis[:, None] - pts[None, :, 1]) ** 2  # WxN
        cells = (dy2[:, None, :] + dx2[None, :, :]).argmin(-1).astype(np.int64)  # HxW
        # split the cells equally at random between the classes
        cell_class = np.arange(self.num_cells) % self.num_classes
        cell_class = cell_class[rng.permutation(self.num_cells)]
        mask = cell_class[cells]
        image = np.empty((self.bands, s, s), dtype=np.float32)
        for c, bank in enumerate(self.class_banks):
            sel = mask == c
            image[:, sel] = bank.crop(rng, s, s)[:, sel]  # one texture image per class
        return Scene(image, mask, cells, cell_class)

    def corrupt(self, scene: Scene, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Refill a fraction of the cells, chosen uniformly at random, with the noise texture.

        Returns:
            The noisy image ``[C, H, W]`` and the ``[H, W]`` bool map of replaced pixels.
        """
        n = int(round(fraction * self.num_cells))
        chosen = rng.choice(self.num_cells, size=n, replace=False)
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
            the training mask (cells are the objects that flip); ``clean_mask`` keeps the truth.
        cache: keep generated samples in memory (they are deterministic), so later epochs cost
            nothing; ~``length * bands * size**2 * 4`` bytes.

    Raises:
        ValueError: for a non-positive length or invalid generator parameters.
    """

    def __init__(
        self,
        split: str = "train",
        length: int | None = None,
        size: int = 128,
        num_cells: int = 20,
        categories: list[str] = ("procedural:stratified", "procedural:veined"),  # type: ignore[assignment]
        noise_texture: str = "procedural:matted",
        third_class: bool = False,
        bands: int = 3,
        texture_variants: int = 40,
        dtd_root: str | None = None,
        label_noise: dict | None = None,
        seed: int = 0,
        cache: bool = False,
    ) -> None:
        self._cache: dict[int, Sample] | None = {} if cache else None
        self.gen = VTSGenerator(
            split, size, num_cells, tuple(categories), noise_texture, third_class, bands, texture_variants, dtd_root, seed
        )
        self.length = PAPER_SPLIT_SIZES[split] if length is None else int(length)
        if self.length < 1:
            raise ValueError(f"length={length} must be >= 1")
        self.noise = LabelNoise(**(label_noise or {}))
        self.num_classes = self.gen.num_classes
        self.normalization = {"mean": [VTS_MEAN] * bands, "std": [VTS_STD] * bands}

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for VTS split of length {self.length}")
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        sc = self.gen.scene(index)
        noisy = sc.mask
        if not self.noise.is_clean:
            # a separate stream (tag 1) so the noise does not change the scene
            noisy = apply_noise(sc.mask, self.noise, self.num_classes, self.gen.rng(index, 1), instances=sc.cells)
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
    comes with the index (:func:`~noisyseg.data.samplers.epoch_of`: the training loader's
    :class:`~noisyseg.data.samplers.EpochSampler` tags every index), so it reaches loader workers;
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

    def __init__(
        self,
        split: str = "train",
        length: int | None = None,
        r: float = 0.0,
        p: float = 0.5,
        mere_exposure: bool = False,
        size: int = 128,
        num_cells: int = 20,
        categories: list[str] = ("procedural:stratified", "procedural:veined"),  # type: ignore[assignment]
        noise_texture: str = "procedural:matted",
        bands: int = 3,
        texture_variants: int = 40,
        dtd_root: str | None = None,
        seed: int = 0,
        cache: bool = False,
    ) -> None:
        self._cache: dict[int, Scene] | None = {} if cache else None
        for name, v in (("r (noisy-pairs rate)", r), ("p (per-image noise)", p)):
            if not 0.0 <= float(v) <= 1.0:
                raise ValueError(f"{name}={v} is outside [0, 1]")
        self.gen = VTSGenerator(
            split, size, num_cells, tuple(categories), noise_texture, False, bands, texture_variants, dtd_root, seed
        )
        self.length = PAPER_SPLIT_SIZES[split] if length is None else int(length)
        if self.length < 1:
            raise ValueError(f"length={length} must be >= 1")
        self.r, self.p, self.mere_exposure = float(r), float(p), bool(mere_exposure)
        self.num_classes = self.gen.num_classes
        self.normalization = {"mean": [VTS_MEAN] * bands, "std": [VTS_STD] * bands}

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for VTS pairs of length {self.length}")
        if self._cache is not None and index in self._cache:
            sc = self._cache[index]
        else:
            sc = self.gen.scene(index)
            if self._cache is not None:
                self._cache[index] = sc
        epoch = epoch_of(index)
        index = int(index)
        rng = self.gen.rng(index, 2, epoch)  # pairing stream: differs every epoch
        noisy = bool(rng.random() < self.r)
        image, image2, replaced = sc.image, sc.image, 0.0
        if noisy:
            corrupted, rep = self.gen.corrupt(sc, self.p, rng)
            replaced = float(rep.mean())
            image2 = corrupted
            if self.mere_exposure:
                image = corrupted  # both views show the noise texture; no mismatch
        meta = {"index": index, "epoch": epoch, "noisy": noisy, "replaced_fraction": replaced,
                "mere_exposure": self.mere_exposure}
        return make_sample(
            normalize(image, self.normalization),
            sc.mask,
            image2=normalize(image2, self.normalization),
            mask2=sc.mask,
            noisy_pair=noisy and not self.mere_exposure,
            meta=meta,
        )
