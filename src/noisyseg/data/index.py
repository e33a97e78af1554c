"""A lazy, cached file index for tile folders of any size: paths only, no raster is opened.

:class:`TileIndex` walks a folder tree once with ``os.scandir`` (directory entries only, no
``stat`` per file, no GDAL open), pairs every image with its mask by file key, and writes the
pairs to a manifest next to the data. Later runs read the manifest (one file) after checking that
no scanned directory changed (one ``stat`` per directory, not per file). Paths are kept in two
NumPy byte arrays rather than Python lists of ``str``: 100,000 pairs take a few MB, and DataLoader
workers forked from the main process do not touch (and so copy) a page per path through
reference counts (pytorch/pytorch#13246).

Raster shapes, no-data values and empty-tile checks are left to the first read of a sample:
that is what keeps indexing cheap (measured in ``benchmarks/bench_indexing.py``).
"""

from __future__ import annotations

import fnmatch
import glob
import json
import os
import re
from pathlib import Path

import numpy as np

from noisyseg.runfiles import write_json

__all__ = ["TileIndex", "glob_paths", "pair_by_key", "path_stem", "encode_paths", "wildcard_dirs"]

MANIFEST_VERSION = 2  # 2: ``exclude`` suffixes among the patterns; UTF-8 paths
_MAGIC = re.compile(r"[*?[]")  # what makes a path component a glob pattern (as in ``glob``)


def glob_paths(pattern: str, dirs: bool = False, skipped: list[str] | None = None) -> list[str]:
    """``sorted(glob.glob(pattern))`` restricted to files (or folders), without a ``stat`` per match.

    Same matching as :func:`glob.glob` (non-recursive; names starting with ``.`` only match a
    component starting with ``.``), but the last component is listed with ``os.scandir``, whose
    entries know their type from the directory itself: 100,000 tiles take ~0.2 s instead of
    ~1 s for ``glob`` + ``Path.is_file`` per match.

    Args:
        pattern: glob pattern, e.g. ``/data/images/*/*.tif``.
        dirs: return folders instead of files.
        skipped: when given (and ``dirs`` is False), the matches that are neither regular files
            nor folders are appended to it: FIFOs, sockets, devices (a link to ``/dev/zero``),
            broken links. They are never returned: reading one would block or never end.
    """
    head, tail = os.path.split(pattern)
    if not _MAGIC.search(tail):  # at most one match per parent: check each one directly
        check = os.path.isdir if dirs else os.path.isfile
        matches = sorted(glob.glob(pattern))
        if skipped is not None and not dirs:
            skipped += [p for p in matches if not os.path.isfile(p) and not os.path.isdir(p)]
        return [p for p in matches if check(p)]
    parents = glob.glob(head) if _MAGIC.search(head) else [head]
    hidden_ok = tail.startswith(".")
    out: list[str] = []
    for parent in parents:
        try:
            with os.scandir(parent or os.curdir) as it:
                entries = {e.name: e for e in it if hidden_ok or not e.name.startswith(".")}
        except (NotADirectoryError, FileNotFoundError, PermissionError):
            continue  # glob.glob(head) also returns files; they hold nothing
        prefix = parent if not parent or parent.endswith(os.sep) else parent + os.sep  # os.path.join, inlined
        for name in fnmatch.filter(entries, tail):
            try:  # d_type from the dirent: a stat only for symlinks (followed, as Path.is_file does)
                ok = entries[name].is_dir() if dirs else entries[name].is_file()
                special = not ok and not dirs and not entries[name].is_dir()
            except OSError:
                ok, special = False, True
            if ok:
                out.append(prefix + name)
            elif special and skipped is not None:
                skipped.append(prefix + name)
    out.sort()
    if skipped is not None:
        skipped.sort()
    return out


def path_stem(path: str) -> str:
    """:attr:`pathlib.PurePath.stem` of a ``/``-separated path, without building a ``Path``."""
    name = path.rstrip("/").rsplit("/", 1)[-1]
    i = name.rfind(".")
    return name[:i] if 0 < i < len(name) - 1 else name


def wildcard_dirs(path: str, pattern: str) -> tuple[str, ...]:
    """The folders of ``path`` that the wildcard folders of ``pattern`` matched.

    What tells two files of one stem apart: ``img/region_a/t1.tif`` under ``img/*/*.tif`` gives
    ``("region_a",)``, and so does ``msk/region_a/t1.tif`` under ``msk/*/*.tif``. Where ``path``
    has more folders than ``pattern`` (an ``fnmatch`` ``*`` crossed ``/``), every folder below the
    pattern's leading fixed folders counts.
    """
    p_dirs = pattern.strip("/").split("/")[:-1]
    dirs = path.strip("/").split("/")[:-1]
    if len(p_dirs) == len(dirs):
        return tuple(d for d, q in zip(dirs, p_dirs) if _MAGIC.search(q))
    fixed = next((i for i, q in enumerate(p_dirs) if _MAGIC.search(q)), len(p_dirs))
    return tuple(dirs[fixed:])


def pair_by_key(
    images: list[str], masks: list[str], mask_suffix: str, image_pattern: str, mask_pattern: str,
    image_keys: list[str] | None = None,
) -> list[str | None]:
    """The mask of each image: the one whose key (stem less ``mask_suffix``) is the image's key.

    A key shared by several masks, or by several images, is resolved by relative path: the mask
    whose wildcard folders (:func:`wildcard_dirs`) equal the image's. Pairing by key alone would
    give ``region_a/tile1.tif`` the mask ``region_b/tile1.tif`` (the last listed) without a word.

    Args:
        images, masks: paths, matched by ``image_pattern`` / ``mask_pattern``.
        image_keys: the images' keys (default: their stems).

    Returns:
        ``[N images]`` mask paths, ``None`` for an image without a mask of its key.

    Raises:
        ValueError: naming the files, when a shared key leaves not exactly one mask in the image's
            folders.
    """
    by_key: dict[str, list[str]] = {}
    for m in masks:
        stem = path_stem(m)
        by_key.setdefault(stem[: -len(mask_suffix)] if mask_suffix and stem.endswith(mask_suffix) else stem, []).append(m)
    keys = image_keys if image_keys is not None else [path_stem(p) for p in images]
    images_of: dict[str, list[str]] = {}
    for p, k in zip(images, keys):
        images_of.setdefault(k, []).append(p)
    out: list[str | None] = []
    for p, k in zip(images, keys):
        found = by_key.get(k, [])
        if len(found) <= 1 and len(images_of[k]) == 1:
            out.append(found[0] if found else None)
            continue
        where = wildcard_dirs(p, image_pattern)
        same = [m for m in found if wildcard_dirs(m, mask_pattern) == where]
        if len(same) != 1:
            raise ValueError(
                f"image {p}: file key {k!r} is ambiguous (images {images_of[k]}, masks {found}) and "
                f"{len(same)} of those masks lie in the image's subfolders {list(where)}; give each image "
                f"and its mask the same subfolders under their globs, or list both explicitly"
            )
        out.append(same[0])
    return out


def encode_paths(paths: list[str]) -> np.ndarray:
    """``[N]`` byte array of paths (``os.fsencode``: any file name survives the round trip).

    One fixed-width array instead of N Python strings: a few MB for 100,000 paths, and no per-path
    reference counts for forked DataLoader workers to touch (pytorch/pytorch#13246).
    """
    return np.array([os.fsencode(p) for p in paths], dtype=np.bytes_)


class TileIndex:
    """Image/mask path pairs of a tile tree, built by one directory walk and cached as a manifest.

    Args:
        root: folder the patterns are relative to.
        images: ``fnmatch`` pattern of image paths relative to ``root`` (``"images/*/*.tif"``;
            ``*`` also crosses ``/``, as in ``fnmatch``).
        masks: pattern of mask paths, or ``None`` for image-only tiles.
        mask_suffix: stem suffix of masks (``<tile>_mask.tif``: ``"_mask"``).
        manifest: JSON file caching the pairs (``None``: build in memory every time). Keep it
            outside the tile tree: inside, writing it changes its own folder's mtime, so that one
            folder is not checked for added or removed tiles.
        exclude: file-name suffixes never taken as images or masks, compared in lower case
            (sidecars such as ``.aux.xml`` that a broad pattern like ``images/*`` would match).

    Raises:
        FileNotFoundError: ``root`` is missing, no image matches, or an image has no mask (named).
        ValueError: a file key shared by several images or masks that their folders do not resolve
            (:func:`pair_by_key`).

    Attributes:
        images, masks: ``[N]`` byte arrays of paths relative to ``root`` (``masks`` is ``None``
            without masks); sorted by image path.
        from_manifest: whether the pairs were read from the manifest rather than walked.
        skipped: paths matching the patterns that are not regular files (FIFOs, devices, broken
            links), left out; empty when the pairs come from the manifest.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        images: str,
        masks: str | None = None,
        mask_suffix: str = "",
        manifest: str | os.PathLike | None = None,
        exclude: tuple[str, ...] = (),
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"tile root {self.root} is not a folder")
        self.patterns = {"images": images, "masks": masks, "mask_suffix": mask_suffix,
                         "exclude": [e.lower() for e in exclude]}
        self.from_manifest = False
        self._special: list[str] = []
        self.skipped: list[str] = []  # matches of the patterns that are not regular files (walks only)
        cached = self._read_manifest(manifest) if manifest is not None else None
        if cached is not None:
            self.images, self.masks = cached
            self.from_manifest = True
            return
        files, dirs = self._walk()
        self.images, self.masks = self._pair(files)
        if manifest is not None:
            self._write_manifest(manifest, dirs)

    # ----------------------------------------------------------------------------------- walking
    def _walk(self) -> tuple[list[str], dict[str, int]]:
        """Relative paths of all files under root and ``{relative dir: mtime_ns}`` of every dir."""
        files: list[str] = []
        dirs: dict[str, int] = {}
        stack = [""]
        while stack:
            rel = stack.pop()
            path = self.root / rel if rel else self.root
            dirs[rel] = os.stat(path).st_mtime_ns  # a file added or removed changes its dir's mtime
            with os.scandir(path) as it:
                for entry in it:
                    name = f"{rel}/{entry.name}" if rel else entry.name
                    if entry.is_dir(follow_symlinks=False):  # d_type from the dirent: no stat
                        stack.append(name)
                    elif entry.is_file(follow_symlinks=False) or (entry.is_symlink() and entry.is_file()):
                        files.append(name)  # a stat only for links (followed)
                    else:  # FIFO, socket, device, broken or directory link: never a tile
                        self._special.append(name)
        return files, dirs

    def _pair(self, files: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
        exclude = tuple(self.patterns["exclude"])
        if exclude:
            files = [f for f in files if not f.lower().endswith(exclude)]
        self.skipped = sorted(f for f in self._special if fnmatch.fnmatch(f, self.patterns["images"])
                              or (self.patterns["masks"] is not None and fnmatch.fnmatch(f, self.patterns["masks"])))
        images = sorted(fnmatch.filter(files, self.patterns["images"]))
        if not images:
            raise FileNotFoundError(f"no file under {self.root} matches images={self.patterns['images']!r}")
        if self.patterns["masks"] is None:
            return encode_paths(images), None
        suffix = self.patterns["mask_suffix"]
        masks = sorted(fnmatch.filter(files, self.patterns["masks"]))
        paired = pair_by_key(images, masks, suffix, self.patterns["images"], self.patterns["masks"])
        for img, mask in zip(images, paired):
            if mask is None:
                raise FileNotFoundError(
                    f"image {self.root / img} has no mask: no file matching {self.patterns['masks']!r} "
                    f"with key {path_stem(img)!r} (mask_suffix={suffix!r})"
                )
        return encode_paths(images), encode_paths(paired)

    # ----------------------------------------------------------------------------------- manifest
    def _read_manifest(self, manifest: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None] | None:
        path = Path(manifest)
        if not path.is_file():
            return None
        try:
            obj = json.loads(path.read_text())
        except json.JSONDecodeError:
            return None  # a corrupt manifest is rebuilt, never trusted
        if obj.get("version") != MANIFEST_VERSION or obj.get("patterns") != self.patterns:
            return None
        for rel, mtime in obj.get("dirs", {}).items():
            try:
                if mtime != -1 and os.stat(self.root / rel if rel else self.root).st_mtime_ns != mtime:
                    return None
            except FileNotFoundError:
                return None
        masks = obj.get("masks")
        return encode_paths(obj["images"]), None if masks is None else encode_paths(masks)

    def _write_manifest(self, manifest: str | os.PathLike, dirs: dict[str, int]) -> None:
        """Write atomically (:func:`~noisyseg.runfiles.write_json`): readers never see half a manifest.

        A new subfolder or file changes the mtime of the folder holding it, so checking the
        mtimes of all walked folders detects any change to the tree (not an edit in place of a
        file, which leaves the pairing unchanged).
        """
        path = Path(manifest)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:  # writing the manifest changes its own folder's mtime: that folder is not checked
            own = path.parent.resolve().relative_to(self.root.resolve()).as_posix()
            dirs = {**dirs, ("" if own == "." else own): -1}
        except ValueError:
            pass  # manifest outside the tree (recommended): every folder is checked
        obj = {
            "version": MANIFEST_VERSION,
            "patterns": self.patterns,
            "dirs": dirs,
            "images": [os.fsdecode(p) for p in self.images],
            "masks": None if self.masks is None else [os.fsdecode(p) for p in self.masks],
        }
        write_json(path, obj, indent=None)

    # ----------------------------------------------------------------------------------- access
    def __len__(self) -> int:
        return len(self.images)

    def pair(self, index: int) -> tuple[str, str | None]:
        """Absolute image and mask paths of tile ``index`` (mask ``None`` without masks)."""
        image = str(self.root / os.fsdecode(self.images[index]))
        mask = None if self.masks is None else str(self.root / os.fsdecode(self.masks[index]))
        return image, mask
