"""xBD / xView2 building-damage data (Gupta et al. 2019, "xBD: A Dataset for Assessing Building
Damage from Satellite Imagery", CVPR-W; reference code: github.com/DIUx-xView/xView2_baseline).

Released layout: ``<root>/<split>/images/<id>_{pre,post}_disaster.png`` and
``<root>/<split>/labels/<id>_{pre,post}_disaster.json`` with splits train / tier3 / hold / test.
Each label JSON lists ``features.xy``: WKT polygons in pixel coordinates, post features with
``properties.subtype``. The WKT is parsed by shapely; masks are rasterised here with
``rasterio.features.rasterize`` (pixel centres inside the polygon; features burnt in JSON order,
later ones win where they overlap):

* pre: 0 background, 1 building;
* post: 0 background, 1 no-damage, 2 minor-damage, 3 major-damage, 4 destroyed,
  ``un-classified`` -> IGNORE_INDEX.

Every 1024x1024 image is cut into non-overlapping ``tile_size`` tiles (four 512x512 by default),
optionally after resampling it (``resample``: images by PIL box / bilinear, masks rasterised from
the polygons directly on the output grid).
Label JSONs are parsed once in ``__init__`` (JSON only, no imagery) so bad files fail or are
skipped up front and ``stats`` holds polygon counts. The xView2 score lives in
:mod:`noisyseg.metrics.xview2`.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from affine import Affine
from PIL import Image
from rasterio.features import rasterize
from shapely.geometry.base import BaseGeometry
from torch.utils.data import Dataset

from noisyseg.data.grid import check_resample, patch_grid, scaled_size
from noisyseg.data.io import resize_image
from noisyseg.data.pairing import undersample
from noisyseg.data.loading import IGNORE_INDEX, Sample, make_sample, normalize
from noisyseg.runfiles import write_json

DAMAGE_CLASSES: dict[str, int] = {
    "no-damage": 1, "minor-damage": 2, "major-damage": 3, "destroyed": 4, "un-classified": IGNORE_INDEX,
}
"""``properties.subtype`` -> post-mask class (the xView2 baseline's numbering)."""
SPLITS = ("train", "tier3", "hold", "test")


# ------------------------------------------------------------------------------------- WKT / JSON
def parse_wkt(wkt: str) -> BaseGeometry:
    """A WKT ``POLYGON`` / ``MULTIPOLYGON`` as a 2-D shapely geometry (``shapely.from_wkt``).

    An unclosed ring is closed (``on_invalid="fix"``; a degenerate one burns no pixel), a z
    coordinate dropped; ``POLYGON EMPTY`` gives an empty geometry.

    Raises:
        ValueError: not WKT, not a (multi)polygon, or a non-finite coordinate.
    """
    with np.errstate(invalid="ignore"):  # GEOS reports WKT it cannot read as a NaN-style warning
        geom = shapely.from_wkt(wkt, on_invalid="fix")  # None: not WKT
    if geom is None:
        raise ValueError(f"cannot parse {str(wkt)[:40]!r} as WKT")
    if geom.geom_type not in ("Polygon", "MultiPolygon"):
        raise ValueError(f"geometry type {geom.geom_type.upper()!r} is not POLYGON or MULTIPOLYGON")
    if not np.isfinite(shapely.get_coordinates(geom)).all():
        raise ValueError(f"{wkt[:40]!r} has non-finite coordinates")
    return shapely.force_2d(geom)


def load_label(path: Path, post: bool, skip_malformed: bool, stats: dict[str, int]) -> dict[str, Any]:
    """Parse one label JSON into ``{"size": (H, W), "shapes": [(geom, class, bounds)]}``.

    Raises:
        ValueError: malformed JSON, or a malformed feature / subtype (names the file and the
            feature index) unless ``skip_malformed`` (then the feature is skipped and counted).
    """
    try:
        obj = json.loads(path.read_text())
        feats = obj["features"]["xy"]
        meta = obj.get("metadata", {})
        size = (int(meta.get("height", 1024)), int(meta.get("width", 1024)))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"malformed xBD label file {path}: {err}") from err
    shapes = []
    for i, feat in enumerate(feats):
        try:
            geom = parse_wkt(feat["wkt"])
            if geom.is_empty:
                continue
            if post:
                sub = feat.get("properties", {}).get("subtype")
                if sub not in DAMAGE_CLASSES:
                    raise ValueError(f"subtype {sub!r} is not one of {sorted(DAMAGE_CLASSES)}")
                value = DAMAGE_CLASSES[sub]
            else:
                value = 1
        except (KeyError, TypeError, ValueError) as err:
            if not skip_malformed:
                raise ValueError(f"{path}: feature {i}: malformed ({err})") from err
            stats["malformed_features_skipped"] += 1
            continue
        x0, y0, x1, y1 = b = geom.bounds
        if x1 <= 0 or y1 <= 0 or x0 >= size[1] or y0 >= size[0]:
            stats["polygons_outside"] += 1  # entirely off the image: nothing to burn
        elif x0 < 0 or y0 < 0 or x1 > size[1] or y1 > size[0]:
            stats["polygons_clipped"] += 1  # rasterize clips it to the image
        stats["polygons"] += 1
        shapes.append((geom, value, b))
    return {"size": size, "shapes": shapes}


def burn(label: dict[str, Any], out_size: tuple[int, int] | None = None) -> np.ndarray:
    """Rasterise parsed shapes into a uint8 ``[H', W']`` mask.

    Args:
        label: from :func:`load_label`; polygons in native pixel coordinates.
        out_size: ``(H', W')`` of the output grid (default the label's own size). The grid spans
            the whole image, so output pixel ``(r, c)`` covers native ``[c * W / W', (c + 1) * W / W']``
            and is burnt when its centre lies inside a polygon: the polygons are rasterised exactly
            at the output resolution, not resampled from a native-size mask.
    """
    h, w = label["size"]
    oh, ow = out_size or (h, w)
    if not label["shapes"]:
        return np.zeros((oh, ow), np.uint8)
    return rasterize(
        [(g, v) for g, v, _ in label["shapes"]], out_shape=(oh, ow), fill=0,
        transform=Affine.scale(w / ow, h / oh), dtype="uint8",  # output pixel -> native pixel coords
    )


# -------------------------------------------------------------------------------------- split file
def site_of(image_id: str) -> str:
    """Disaster site of an id: ``"joplin-tornado_00000000"`` -> ``"joplin-tornado"``."""
    return image_id.rsplit("_", 1)[0]


def list_ids(root: str | Path, split: str) -> list[str]:
    """``<split>/<id>`` for every image id (pre or post image present) in a split folder.

    Raises:
        FileNotFoundError: the split's images folder does not exist.
    """
    folder = Path(root) / split / "images"
    if not folder.is_dir():
        raise FileNotFoundError(f"xBD split folder {folder} does not exist (splits: {SPLITS})")
    ids = {re.sub(r"_(pre|post)_disaster$", "", p.stem) for p in folder.glob("*_disaster.png")}
    return [f"{split}/{i}" for i in sorted(ids)]


def make_split(
    root: str, out: str, splits: list[str] | None = None, val_fraction: float = 0.3, seed: int = 0
) -> dict[str, Any]:
    """A seeded train/val split of ``splits`` stratified over disaster sites, saved atomically.

    Each site's ids are shuffled with ``seed`` and ``round(val_fraction * n)`` go to val, so every
    site keeps its share in both subsets.

    Returns:
        The manifest ``{"train": [...], "val": [...], "sites": {...}, "seed", "val_fraction",
        "splits"}``; ids are ``<split>/<id>``.

    Raises:
        ValueError: ``val_fraction`` outside ``[0, 1)``.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction} is outside [0, 1)")
    splits = list(splits or ["train", "tier3"])
    by_site: dict[str, list[str]] = {}
    for s in splits:
        for i in list_ids(root, s):
            by_site.setdefault(site_of(i.split("/", 1)[1]), []).append(i)
    rng = np.random.default_rng(seed)
    manifest: dict[str, Any] = {"seed": seed, "val_fraction": val_fraction, "splits": splits,
                                "train": [], "val": [], "sites": {}}
    for site in sorted(by_site):
        ids = sorted(by_site[site])
        order = rng.permutation(len(ids))
        n_val = int(round(val_fraction * len(ids)))
        val = sorted(ids[j] for j in order[:n_val])
        manifest["val"] += val
        manifest["train"] += [i for i in ids if i not in set(val)]
        manifest["sites"][site] = {"train": len(ids) - n_val, "val": n_val}
    write_json(out, manifest)
    return manifest


# ---------------------------------------------------------------------------------------- datasets
class XBDSegmentation(Dataset):
    """xBD tiles with the pre (building) or post (damage) mask of that same image.

    Args:
        root: xBD root holding the split folders.
        splits: split folders to read (``train``, ``tier3``, ``hold``, ``test``).
        phase: ``"pre"`` (1 building) or ``"post"`` (damage classes 1..4).
        tile_size: side of the square tiles cut from each image (0: whole image), in output pixels
            (after ``resample``).
        manifest: split JSON from :func:`make_split`; created (seeded) when missing.
        subset: ``"train"`` or ``"val"`` of the manifest (needs ``manifest``).
        val_fraction: val share when the manifest is created.
        seed: seed of the manifest.
        skip_incomplete: skip ids missing a pre/post image or label (warned, counted) instead of
            raising.
        skip_malformed: skip malformed label files / features (warned, counted) instead of raising.
        mean: per-band means in raw (0..255) units; default 0.
        std: per-band std in raw units; default 255 (images in [0, 1]).
        resample: read every image at this factor of its resolution (0.5: 1024 -> 512 px; sides
            rounded half up, :func:`~noisyseg.data.grid.scaled_size`): images resized by PIL
            ``BOX`` (area mean) when shrinking, ``BILINEAR`` when enlarging
            (:func:`~noisyseg.data.io.resize_image`); masks rasterised from the polygons directly on
            the output grid (:func:`burn`), so polygons stay exact and class ids unmixed.
            ``meta["tile"]`` is in output pixels.

    Raises:
        FileNotFoundError: a split folder is missing, or an id lacks a partner file (names the id
            and the file) without ``skip_incomplete``.
        ValueError: bad options (``resample`` not > 0), or a malformed label (names the file and
            feature index).

    Attributes:
        stats: ``ids``, ``tiles``, ``polygons``, ``polygons_clipped``, ``polygons_outside``,
            ``incomplete_skipped``, ``malformed_files_skipped``, ``malformed_features_skipped``.
        normalization: ``{"mean": [...], "std": [...]}`` in raw units.
    """

    pair = False

    def __init__(
        self,
        root: str,
        splits: list[str] | None = None,
        phase: str = "post",
        tile_size: int = 512,
        manifest: str | None = None,
        subset: str | None = None,
        val_fraction: float = 0.3,
        seed: int = 0,
        skip_incomplete: bool = False,
        skip_malformed: bool = False,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        resample: float = 1.0,
    ) -> None:
        self.resample = check_resample(resample)
        if phase not in ("pre", "post"):
            raise ValueError(f"phase={phase!r}; valid: 'pre', 'post'")
        if subset not in (None, "train", "val") or (subset is None) != (manifest is None):
            raise ValueError(f"subset={subset!r} with manifest={manifest!r}: give both (subset 'train' "
                             f"or 'val') or neither")
        self.root, self.phase, self.tile_size = Path(root), phase, tile_size
        self.normalization = {"mean": list(mean or [0.0] * 3), "std": list(std or [255.0] * 3)}
        self.stats: dict[str, Any] = dict.fromkeys(
            ("ids", "tiles", "polygons", "polygons_clipped", "polygons_outside", "incomplete_skipped",
             "malformed_files_skipped", "malformed_features_skipped"), 0)
        splits = list(splits or ["tier3"])
        if manifest is not None:
            if not Path(manifest).is_file():
                make_split(str(root), manifest, splits, val_fraction, seed)
            ids = json.loads(Path(manifest).read_text())[subset]
        else:
            ids = [i for s in splits for i in list_ids(root, s)]
        self.ids: list[str] = []
        self.labels: dict[str, dict[str, dict[str, Any]]] = {}  # id -> phase -> parsed label
        for i in ids:
            self._index(i, skip_incomplete, skip_malformed)
        self.tiles: list[tuple[str, int, int]] = []  # (id, row, col)
        for i in self.ids:
            h, w = self._out_size(i)
            t = self._side(i)
            self.tiles += [(i, r, c) for r, c, _, _ in patch_grid(h, w, t)]
        self.stats["ids"], self.stats["tiles"] = len(self.ids), len(self.tiles)
        self._cache: dict[tuple[str, str], Any] = {}  # last decoded images / masks (tiles of one image)

    def _index(self, image_id: str, skip_incomplete: bool, skip_malformed: bool) -> None:
        split, name = image_id.split("/", 1)
        paths = self.paths(image_id)
        missing = [str(p) for p in paths.values() if not p.is_file()]
        if missing:
            if not skip_incomplete:
                raise FileNotFoundError(f"xBD id {name} in {split} is incomplete: missing {missing} "
                                        f"(skip_incomplete=True skips such ids)")
            warnings.warn(f"skipping incomplete xBD id {name}: missing {missing}", stacklevel=3)
            self.stats["incomplete_skipped"] += 1
            return
        labels = {}
        for ph in ("pre", "post"):
            try:
                labels[ph] = load_label(paths[f"{ph}_label"], ph == "post", skip_malformed, self.stats)
            except ValueError as err:
                if not skip_malformed:  # feature-level problems were already skipped inside
                    raise
                warnings.warn(f"skipping xBD id {name}: {err}", stacklevel=3)
                self.stats["malformed_files_skipped"] += 1
                return
        self.ids.append(image_id)
        self.labels[image_id] = labels

    def _out_size(self, image_id: str) -> tuple[int, int]:
        """``(H', W')`` of an image after ``resample`` (its label's size at 1)."""
        return scaled_size(*self.labels[image_id]["post"]["size"], self.resample)

    def _side(self, image_id: str) -> int:
        """Tile side in output pixels (``tile_size``, or the whole image's longer side)."""
        return self.tile_size or max(self._out_size(image_id))

    def sources(self) -> list[str]:
        """Per tile, its image file (``meta["source"]``), without reading pixels."""
        return [str(self.paths(i)[f"{self.phase}_image"]) for i, _, _ in self.tiles]

    def paths(self, image_id: str) -> dict[str, Path]:
        """Image and label paths of ``<split>/<id>`` (keys ``pre_image``, ``post_label``...)."""
        split, name = image_id.split("/", 1)
        base = self.root / split
        return {f"{ph}_{kind}": base / f"{kind}s" / f"{name}_{ph}_disaster.{ext}"
                for ph in ("pre", "post") for kind, ext in (("image", "png"), ("label", "json"))}

    def _cached(self, key: tuple[str, str], make) -> Any:
        if key not in self._cache:
            if len(self._cache) >= 6:  # holds the pre/post images and masks of one id
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = make()
        return self._cache[key]

    def full_mask(self, image_id: str, phase: str) -> np.ndarray:
        """Whole-image ``[H', W']`` uint8 mask of one phase at the output size (rasterised once, cached)."""
        return self._cached((image_id, f"{phase}_mask"),
                            lambda: burn(self.labels[image_id][phase], self._out_size(image_id)))

    def image(self, image_id: str, phase: str) -> np.ndarray:
        """Whole ``[3, H', W']`` image of one phase: uint8, float32 when resampled.

        Raises:
            ValueError: the image size differs from the label's ``metadata`` size.
            OSError: the image cannot be read (truncated, not an image), naming it.
        """
        def load() -> np.ndarray:
            path = self.paths(image_id)[f"{phase}_image"]
            try:
                with Image.open(path) as im:
                    arr = np.asarray(im.convert("RGB")).transpose(2, 0, 1)  # [3, H, W]
            except OSError as err:  # PIL's "image file is truncated" does not name the file
                raise type(err)(f"cannot read xBD image {path}: {err}") from err
            if arr.shape[1:] != self.labels[image_id][phase]["size"]:
                raise ValueError(f"{path} is {arr.shape[1:]} but its label says {self.labels[image_id][phase]['size']}")
            return arr if self.resample == 1 else resize_image(arr, self._out_size(image_id))
        return self._cached((image_id, phase), load)

    def label_mask(self, index: int) -> np.ndarray:
        """The tile's mask ``[T, T]`` without reading imagery (for class weights)."""
        i, r, c = self.tiles[index]
        t = self._side(i)
        return self.full_mask(i, self.phase)[r:r + t, c:c + t]

    def _norm(self, x: np.ndarray) -> np.ndarray:
        return normalize(x, self.normalization, "an xBD image")  # [3, T, T] float32

    def _meta(self, index: int, phase: str) -> dict[str, Any]:
        i, r, c = self.tiles[index]
        t = self._side(i)
        (h, w), (oh, ow) = self.labels[i]["post"]["size"], self._out_size(i)
        sy, sx = h / oh, w / ow  # native pixels per output pixel (polygon bounds are native)
        n = sum(1 for *_, (x0, y0, x1, y1) in self.labels[i][phase]["shapes"]
                if x1 > c * sx and x0 < (c + t) * sx and y1 > r * sy and y0 < (r + t) * sy)  # bounds meet the tile
        return {"id": i.split("/", 1)[1], "split": i.split("/", 1)[0], "site": site_of(i.split("/", 1)[1]),
                "source": str(self.paths(i)[f"{phase}_image"]), "tile": [r, c, t], "resample": self.resample,
                "polygons": n}

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, index: int) -> Sample:
        """Tile ``index``: image ``[3, T, T]`` of ``phase``, mask ``[T, T]`` of that phase."""
        i, r, c = self.tiles[index]
        t = self._side(i)
        img = self.image(i, self.phase)[:, r:r + t, c:c + t]
        return make_sample(self._norm(img), self.label_mask(index), meta=self._meta(index, self.phase))


class XBDPairs(XBDSegmentation):
    """xBD pre/post tile pairs: temporal positives that are noisy where buildings were damaged.

    ``image`` = pre tile, ``image2`` = post tile, ``mask`` = pre mask, ``mask2`` = post mask
    (binarised to building 1 when ``binarize_post``), ``noisy_pair`` = the post tile has a pixel of
    class 2..4. Post images are not perfectly co-registered with pre images (Gupta et al. 2019), a
    second source of noise the flag does not capture.

    Args:
        root: xBD root holding the split folders.
        splits: split folders to read.
        tile_size: side of the square tiles (0: whole image).
        manifest: split JSON (created when missing).
        subset: ``"train"`` or ``"val"`` of the manifest.
        val_fraction: val share when the manifest is created.
        seed: seed of the manifest and of the under-sampling.
        skip_incomplete: skip ids missing a partner file instead of raising.
        skip_malformed: skip malformed labels instead of raising.
        binarize_post: ``mask2`` as building (1) vs background (0), IGNORE_INDEX kept.
        noisy_pair_rate: under-sample clean or noisy pairs to this noisy fraction (rasterises every
            post label once in ``__init__``).
        mean: per-band means in raw units.
        std: per-band std in raw units.

    Raises:
        ValueError: ``noisy_pair_rate`` cannot be reached (names the counts), or as
            :class:`XBDSegmentation`.
    """

    pair = True

    def __init__(
        self,
        root: str,
        splits: list[str] | None = None,
        tile_size: int = 512,
        manifest: str | None = None,
        subset: str | None = None,
        val_fraction: float = 0.3,
        seed: int = 0,
        skip_incomplete: bool = False,
        skip_malformed: bool = False,
        binarize_post: bool = False,
        noisy_pair_rate: float | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
    ) -> None:
        super().__init__(root, splits, "pre", tile_size, manifest, subset, val_fraction, seed,
                         skip_incomplete, skip_malformed, mean, std)
        self.binarize_post = binarize_post
        if noisy_pair_rate is not None:
            flags = [self._noisy(k) for k in range(len(self.tiles))]
            self.tiles, self.stats["noisy_pair_rate"] = undersample(self.tiles, flags, noisy_pair_rate, seed)
            self.stats["tiles"] = len(self.tiles)
            self._cache.clear()

    def _post_tile(self, index: int) -> np.ndarray:
        i, r, c = self.tiles[index]
        t = self._side(i)
        return self.full_mask(i, "post")[r:r + t, c:c + t]

    def _noisy(self, index: int) -> bool:
        post = self._post_tile(index)
        return bool(np.any((post >= 2) & (post <= 4)))  # minor, major or destroyed

    def __getitem__(self, index: int) -> Sample:
        """Tile pair ``index``: image/image2 ``[3, T, T]``, mask/mask2 ``[T, T]``, noisy_pair."""
        i, r, c = self.tiles[index]
        t = self._side(i)
        pre = self.image(i, "pre")[:, r:r + t, c:c + t]
        post = self.image(i, "post")[:, r:r + t, c:c + t]
        mask2 = self._post_tile(index).astype(np.int64)
        noisy = bool(np.any((mask2 >= 2) & (mask2 <= 4)))
        if self.binarize_post:
            mask2 = np.where(mask2 == IGNORE_INDEX, IGNORE_INDEX, (mask2 > 0).astype(np.int64))
        meta = self._meta(index, "pre")
        meta["source2"] = str(self.paths(i)["post_image"])
        meta["polygons_post"] = self._meta(index, "post")["polygons"]
        return make_sample(self._norm(pre), self.full_mask(i, "pre")[r:r + t, c:c + t], image2=self._norm(post),
                           mask2=mask2, noisy_pair=noisy, meta=meta)
