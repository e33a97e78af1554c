"""The layout of ``noisyseg.data`` and the package's file writes, read from the source with ``ast``.

* A dataset module (one that defines a ``Dataset`` class) imports helpers (``io``, ``grid``,
  ``stats``, ``pairing``, ``loading`` ...), never another dataset module, except where its class
  wraps or extends that module's dataset (:data:`WRAPS`); helper modules import no dataset module,
  except the DataModule's in-memory cache (:data:`HELPER_USES`).
* Only :mod:`noisyseg.runfiles` (``atomic_write``) renames a file into place.
"""

from __future__ import annotations

import ast
from pathlib import Path

import noisyseg

PACKAGE = Path(noisyseg.__file__).parent
DATA = PACKAGE / "data"
DATASET_BASES = {"Dataset", "IterableDataset", "StreamingDataset"}  # torch's and litdata's
DATASET_MODULES = {"cache", "georef", "product_noise", "products", "raster", "shards", "splits", "temporal",
                   "torchgeo_source", "vector", "vts", "xbd"}
HELPER_MODULES = {"grid", "index", "io", "label_noise", "loading", "pairing", "stats"}
TOOL_MODULES = {"preview"}  # built on datasets: the CLI tools
HELPER_USES = {("loading", "cache")}
"""(helper, dataset module) pairs: the DataModule (``loading``) wraps datasets in ``InMemory`` for ``cache: true``."""
WRAPS = {
    ("georef", "raster"),  # GeoLabels wraps a RasterSegmentation
    ("products", "georef"), ("products", "raster"),  # ProductLabels(GeoLabels) over a RasterSegmentation
    ("vector", "georef"), ("vector", "raster"),  # VectorLabels(GeoLabels) over a RasterSegmentation
}
"""(importer, imported) dataset-module pairs where a dataset class wraps or extends another's."""


def _trees() -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text(), str(p)) for p in sorted(DATA.glob("*.py")) if p.stem != "__init__"}


def _base_name(node: ast.expr) -> str:
    return node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")


def dataset_modules(trees: dict[str, ast.Module]) -> set[str]:
    """Modules defining a class derived from a dataset base or from a dataset class of the package."""
    classes = {(m, c) for m, t in trees.items() for c in ast.walk(t) if isinstance(c, ast.ClassDef)}
    dataset_names = set(DATASET_BASES)
    while True:  # a class whose base is a dataset class is one too (XBDPairs, LandsatChange ...)
        more = {c.name for _, c in classes if any(_base_name(b) in dataset_names for b in c.bases)} - dataset_names
        if not more:
            break
        dataset_names |= more
    return {m for m, c in classes if c.name in dataset_names - DATASET_BASES}


def data_imports(tree: ast.Module) -> set[str]:
    """``noisyseg.data`` modules a module imports (anywhere in it, function bodies included)."""
    out = set()
    for node in ast.walk(tree):
        names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
            [a.name for a in node.names] if isinstance(node, ast.Import) else []
        for name in names:
            parts = name.split(".")
            if parts[:2] == ["noisyseg", "data"] and len(parts) > 2:
                out.add(parts[2])
    return out


def test_every_module_is_a_dataset_a_helper_or_a_tool():
    trees = _trees()
    assert dataset_modules(trees) == DATASET_MODULES
    assert set(trees) == DATASET_MODULES | HELPER_MODULES | TOOL_MODULES


def test_datasets_import_helpers_not_each_other():
    trees = _trees()
    datasets = dataset_modules(trees)
    imports = {(m, d) for m, t in trees.items() if m in datasets for d in data_imports(t) & datasets if d != m}
    assert imports - WRAPS == set(), "dataset modules importing other dataset modules"
    helpers = {(m, d) for m, t in trees.items() if m in HELPER_MODULES for d in data_imports(t) - HELPER_MODULES}
    assert helpers - HELPER_USES == set(), "helper modules importing modules that are not helpers"


def _renames(tree: ast.Module) -> list[int]:
    """Lines that call ``os.replace`` / ``os.rename`` or import them from ``os``."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("replace", "rename") \
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "os":
            lines.append(node.lineno)
        if isinstance(node, ast.ImportFrom) and node.module == "os" and {a.name for a in node.names} & {"replace", "rename"}:
            lines.append(node.lineno)
    return lines


def test_only_the_atomic_writer_renames_files_into_place():
    found = {str(p.relative_to(PACKAGE)): _renames(ast.parse(p.read_text(), str(p))) for p in PACKAGE.rglob("*.py")}
    assert {p for p, lines in found.items() if lines} == {"runfiles.py"}, found
