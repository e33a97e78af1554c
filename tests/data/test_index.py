"""TileIndex: pairing by key, manifest reuse, rebuild when the tree changes, named errors."""

from __future__ import annotations

import glob
import os
import time
from pathlib import Path

import pytest

from noisyseg.data.index import TileIndex, glob_paths, path_stem


def make_tree(root: Path, names: list[str], mask_suffix: str = "") -> None:
    for name in names:
        d = name.split("/")[0]
        (root / "images" / d).mkdir(parents=True, exist_ok=True)
        (root / "masks" / d).mkdir(parents=True, exist_ok=True)
        (root / "images" / f"{name}.tif").write_bytes(b"i")
        (root / "masks" / f"{name}{mask_suffix}.tif").write_bytes(b"m")


def test_pairs_sorted_by_image_path_with_mask_suffix(tmp_path: Path) -> None:
    make_tree(tmp_path, ["b/t2", "a/t1", "a/t0"], mask_suffix="_mask")
    (tmp_path / "images" / "a" / "t0.tif.aux.xml").write_bytes(b"sidecar")  # not matched by *.tif
    index = TileIndex(tmp_path, "images/*/*.tif", "masks/*/*.tif", mask_suffix="_mask")
    assert len(index) == 3 and not index.from_manifest
    assert [index.pair(i) for i in range(3)] == [
        (str(tmp_path / f"images/{n}.tif"), str(tmp_path / f"masks/{n}_mask.tif")) for n in ("a/t0", "a/t1", "b/t2")
    ]


def test_manifest_is_reused_then_rebuilt_after_a_tile_is_added(tmp_path: Path) -> None:
    data, manifest = tmp_path / "data", tmp_path / "cache" / "manifest.json"
    make_tree(data, ["a/t0", "a/t1"])
    assert not TileIndex(data, "images/*/*.tif", "masks/*/*.tif", manifest=manifest).from_manifest
    again = TileIndex(data, "images/*/*.tif", "masks/*/*.tif", manifest=manifest)
    assert again.from_manifest and len(again) == 2
    assert not TileIndex(data, "images/*/*.tif", manifest=manifest).from_manifest  # other patterns
    time.sleep(0.01)  # a distinct mtime even on coarse clocks
    make_tree(data, ["a/t2"])
    os.utime(data / "images" / "a")  # (the write already changed it; make it certain)
    rebuilt = TileIndex(data, "images/*/*.tif", "masks/*/*.tif", manifest=manifest)
    assert not rebuilt.from_manifest and len(rebuilt) == 3


def test_missing_mask_and_empty_match_are_named(tmp_path: Path) -> None:
    make_tree(tmp_path, ["a/t0"])
    (tmp_path / "images" / "a" / "t9.tif").write_bytes(b"i")
    with pytest.raises(FileNotFoundError, match="t9.tif has no mask.*key 't9'"):
        TileIndex(tmp_path, "images/*/*.tif", "masks/*/*.tif")
    with pytest.raises(FileNotFoundError, match=r"matches images='\*.png'"):
        TileIndex(tmp_path, "*.png")
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        TileIndex(tmp_path / "nope", "*.tif")


def test_glob_paths_matches_glob_without_a_stat_per_file(tmp_path: Path) -> None:
    make_tree(tmp_path, ["a/t0", "a/t1", "b/t2"])
    (tmp_path / "images" / "a" / ".hidden.tif").write_bytes(b"h")  # glob's * skips dot files
    (tmp_path / "images" / "a" / "sub.tif").mkdir()  # a folder named like a tile
    (tmp_path / "images" / "c.tif").write_bytes(b"f")  # a file where folders are expected
    for pattern in ["images/*/*.tif", "images/*/.*", "images/a/t0.tif", "images/[ab]/t?.tif", "images/*", "*/a"]:
        full = str(tmp_path / pattern)
        for dirs in (False, True):
            want = sorted(p for p in glob.glob(full) if (os.path.isdir(p) if dirs else os.path.isfile(p)))
            assert glob_paths(full, dirs) == want, (pattern, dirs)
    assert glob_paths(str(tmp_path / "nope/*.tif")) == []


def test_path_stem_is_pathlib_stem() -> None:
    for name in ["a/b/t01_mask.tif", "x.tar.gz", ".hidden", "noext", "dir/", "trail."]:
        assert path_stem(name) == Path(name).stem, name


def test_exclude_suffixes_and_non_ascii_names(tmp_path: Path) -> None:
    make_tree(tmp_path, ["a/tuile_é"])
    (tmp_path / "images" / "a" / "tuile_é.tif.AUX.XML").write_bytes(b"sidecar")
    manifest = tmp_path / "m.json"
    index = TileIndex(tmp_path, "images/*", "masks/*", exclude=(".aux.xml",), manifest=manifest)
    assert index.pair(0) == (str(tmp_path / "images/a/tuile_é.tif"), str(tmp_path / "masks/a/tuile_é.tif"))
    again = TileIndex(tmp_path, "images/*", "masks/*", exclude=(".aux.xml",), manifest=manifest)
    assert again.from_manifest and again.pair(0) == index.pair(0)
    with pytest.raises(FileNotFoundError, match=r"tuile_é.tif.AUX.XML has no mask"):
        TileIndex(tmp_path, "images/*", "masks/*")
