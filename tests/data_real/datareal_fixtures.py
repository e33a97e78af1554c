"""Seeded generators of small raster / xBD fixtures for the real-data loader tests.

Everything is written to a pytest ``tmp_path``; nothing is committed but this script. The real
samples live in ``<repo>/../shared/data`` (see :func:`shared_data`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from affine import Affine

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def shared_data() -> Path:
    """``<repo>/../shared/data``, or skip the test with the reason."""
    if not SHARED.is_dir():
        pytest.skip("../shared/data not present: real-sample tests need it")
    return SHARED.resolve()


def write_raster(path: Path, array: np.ndarray, driver: str = "GTiff", nodata: float | None = None) -> Path:
    """Write ``[C, H, W]`` to ``path`` (GeoTIFF, ENVI...) with a dummy UTM georeference."""
    path.parent.mkdir(parents=True, exist_ok=True)
    c, h, w = array.shape
    with rasterio.open(
        path, "w", driver=driver, width=w, height=h, count=c, dtype=array.dtype.name, nodata=nodata,
        crs="EPSG:32633", transform=Affine(10, 0, 500000, 0, -10, 4000000),
    ) as dst:
        dst.write(array)
    return path


def multiband_uint16(rng: np.random.Generator, h: int = 96, w: int = 80, bands: int = 4) -> np.ndarray:
    """``[bands, h, w]`` uint16 reflectance-like values in 1..10000 with a no-data (0) corner."""
    x = rng.integers(1, 10000, size=(bands, h, w)).astype(np.uint16)
    x[:, :20, :30] = 0  # no-data block in every band
    return x


def make_xbd(root: Path, ids: dict[str, int], size: int = 64) -> Path:
    """An xBD-layout tree ``root/<split>/{images,labels}`` with one square building per image.

    Args:
        ids: ``"<split>/<site>_<n>" -> damage class`` (1..4) of the post building.
        size: image side.
    """
    names = {1: "no-damage", 2: "minor-damage", 3: "major-damage", 4: "destroyed"}
    rng = np.random.default_rng(0)
    for key, dmg in ids.items():
        split, name = key.split("/")
        for phase in ("pre", "post"):
            (root / split / "images").mkdir(parents=True, exist_ok=True)
            (root / split / "labels").mkdir(parents=True, exist_ok=True)
            img = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            Image.fromarray(img).save(root / split / "images" / f"{name}_{phase}_disaster.png")
            props = {"feature_type": "building", "uid": "u0"}
            if phase == "post":
                props["subtype"] = names[dmg]
            feats = [{"properties": props, "wkt": "POLYGON ((8 8, 24 8, 24 24, 8 24, 8 8))"}]
            write_label(root / split / "labels" / f"{name}_{phase}_disaster.json", feats, size)
    return root


def write_label(path: Path, features: list[dict], size: int = 64) -> None:
    """An xBD label JSON with ``features.xy`` and the metadata size."""
    obj = {"features": {"lng_lat": [], "xy": features},
           "metadata": {"width": size, "height": size, "img_name": path.stem + ".png"}}
    path.write_text(json.dumps(obj))
