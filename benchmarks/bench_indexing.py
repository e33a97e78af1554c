"""Indexing a tree of 100,000 tiles: ``RasterSegmentation`` (lazy and validated) vs :class:`TileIndex`.

Stages:

1. **generate** (timed on its own) ``ROOT/images/dNNN/tNNNNNN.tif`` (3-band 16x16 uint8 GeoTIFF)
   and ``ROOT/masks/dNNN/tNNNNNN.tif`` (1-band), 1,000 per folder. Each file is one of 16
   pre-encoded GeoTIFFs written as raw bytes (no GDAL call per file); no tile is all zero, so
   ``skip_empty`` drops nothing. A tree already there with the same count is reused.
2. **measure**, each configuration in a fresh child process (clean peak RSS) and again in another
   child under ``tracemalloc`` (Python heap peak; its run time is not reported, tracing slows it):

   * ``glob`` — the ``glob.glob`` + ``is_file`` step RasterSegmentation starts with;
   * ``raster_meta`` — ``RasterSegmentation(images, masks, mean, std, skip_empty=False)``: no
     statistics, no empty-tile scan; above ``VALIDATE_MAX_IMAGES`` images this is the lazy
     default (no raster opened, only listing and pairing);
   * ``raster_validate`` — the same with ``validate=True`` (every image and mask opened for its
     size, dtype and no-data: the behaviour before lazy indexing), on the ``--scan-tiles`` tree;
   * ``raster_manifest_walk`` / ``raster_manifest`` — ``RasterSegmentation(..., manifest=PATH)``:
     pairs from a :class:`TileIndex` walk written to a manifest, then read back;
   * ``raster_cache_cold`` / ``raster_cache_warm`` — with ``skip_empty=True`` and a
     ``stats_cache`` JSON: the first build reads every tile to find empty ones, the second reuses
     the cache (run on the first ``--scan-tiles`` tiles: a cold scan of all 100,000 costs minutes);
   * ``tile_index_walk`` / ``tile_index_manifest`` — :class:`~noisyseg.data.index.TileIndex`
     walking the tree and writing its manifest, then reading the manifest back;

   and after each dataset is built, the time to its first sample and the mean time per sample
   over ``--samples`` random indices.
3. **profile** ``raster_meta`` under cProfile on the ``--scan-tiles`` subset (top functions).

Prints a table and writes ``benchmarks/results/indexing.md`` atomically.

Run: ``python benchmarks/bench_indexing.py [--tiles 100000] [--root /tmp/noisyseg_tiles]``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import random
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
HISTORY = (
    "Before lazy indexing (commit 03efde8, same machine, same generated tree), `raster_meta` opened"
    " every image and mask in `__init__`: 100,000 tiles 320.12 s, peak RSS +100.8 MB, tracemalloc"
    " 90.3 MB, 3.93 ms per sample; cProfile then: 21.6 of 22.6 s in `raster_shape` (16.2 s in"
    " `rasterio.open`) on 10,000 tiles. The unchanged `glob` row took 4.63 s in that run, so the shared"
    " CPUs were busier (or the page cache colder) then: compare within one run -- `raster_validate`"
    " (the old behaviour, now opt-in) against `raster_meta` (the lazy default) -- rather than across runs."
)
VARIANTS = 16
TILE = 16
MEAN, STD = [127.0, 127.0, 127.0], [64.0, 64.0, 64.0]


# ------------------------------------------------------------------------------------- generate
def encoded_tiles() -> tuple[list[bytes], list[bytes]]:
    """``VARIANTS`` GeoTIFF images and masks as bytes, encoded once with rasterio."""
    import numpy as np
    from rasterio.io import MemoryFile

    rng = np.random.default_rng(0)
    out: tuple[list[bytes], list[bytes]] = ([], [])
    for _ in range(VARIANTS):
        for bands, high, dest in ((3, 256, out[0]), (1, 2, out[1])):
            arr = rng.integers(1 if bands == 3 else 0, high, (bands, TILE, TILE), dtype=np.uint8)
            with MemoryFile() as mem:
                with mem.open(driver="GTiff", width=TILE, height=TILE, count=bands, dtype="uint8") as dst:
                    dst.write(arr)  # no CRS: rasterio warns once, the loaders silence it
                dest.append(mem.read())
    return out


def generate(root: Path, n: int, per_dir: int) -> float | None:
    """Write the tree; seconds taken, or ``None`` when a complete tree of ``n`` tiles is reused."""
    done = root / ".complete.json"
    if done.is_file() and json.loads(done.read_text()) == {"tiles": n, "per_dir": per_dir}:
        return None
    import shutil
    import warnings

    if root.exists():
        shutil.rmtree(root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        images, masks = encoded_tiles()
    start = time.perf_counter()
    for i in range(n):
        d = f"d{i // per_dir:03d}"
        if i % per_dir == 0:
            (root / "images" / d).mkdir(parents=True)
            (root / "masks" / d).mkdir(parents=True)
        name = f"{d}/t{i:06d}.tif"
        (root / "images" / name).write_bytes(images[i % VARIANTS])
        (root / "masks" / name).write_bytes(masks[(i * 7) % VARIANTS])
    seconds = time.perf_counter() - start
    done.write_text(json.dumps({"tiles": n, "per_dir": per_dir}))
    return seconds


# ------------------------------------------------------------------------------------- measure
def rss_mb(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process in MB, from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def build(config: str, root: Path, cache: Path):
    """Construct the object the configuration measures; returns it and a sample reader."""
    from noisyseg.data.index import TileIndex
    from noisyseg.data.io import find_files, read_window
    from noisyseg.data.raster import RasterSegmentation

    images, masks = "images/*/*.tif", "masks/*/*.tif"
    if config == "glob":
        return (find_files(root, images, "image"), find_files(root, masks, "mask")), None
    if config.startswith("raster"):
        kw = dict(mean=MEAN, std=STD, skip_empty=config.startswith("raster_cache"))
        if config.startswith("raster_cache"):
            kw["stats_cache"] = str(cache)
        if config == "raster_validate":
            kw["validate"] = True
        if config.startswith("raster_manifest"):
            kw["manifest"] = str(cache)
        ds = RasterSegmentation(images, masks, root=str(root), **kw)
        return ds, ds.__getitem__
    if config.startswith("tile_index"):
        index = TileIndex(root, images, masks, manifest=cache)
        if (config == "tile_index_manifest") != index.from_manifest:
            raise RuntimeError(f"{config}: expected from_manifest={config == 'tile_index_manifest'}")

        def read(i: int):
            image, mask = index.pair(i)
            return read_window([image], None), read_window([mask], None)  # [3,16,16], [1,16,16]

        return index, read
    raise ValueError(f"unknown configuration {config!r}")


def measure(config: str, root: Path, cache: Path, samples: int, trace: bool) -> dict:
    """One configuration in this (fresh) process: seconds, memory, first-sample and per-sample time."""
    import warnings

    warnings.simplefilter("ignore")
    import noisyseg.data.index  # noqa: F401  imports are not part of indexing
    import noisyseg.data.raster  # noqa: F401

    rss0 = rss_mb("VmRSS")
    if trace:
        tracemalloc.start()
    start = time.perf_counter()
    obj, read = build(config, root, cache)
    seconds = time.perf_counter() - start
    out = {"config": config, "seconds": seconds, "rss_peak_delta_mb": rss_mb("VmHWM") - rss0}
    if trace:
        out["tracemalloc_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        return out
    out["items"] = len(obj) if read is not None else len(obj[0])
    if read is not None:
        t = time.perf_counter()
        read(0)
        out["first_sample_ms"] = (time.perf_counter() - t) * 1e3
        idx = random.Random(0).sample(range(len(obj)), min(samples, len(obj)))
        t = time.perf_counter()
        for i in idx:
            read(i)
        out["per_sample_ms"] = (time.perf_counter() - t) / len(idx) * 1e3
    return out


def child(config: str, root: Path, cache: Path, samples: int, trace: bool) -> dict:
    cmd = [sys.executable, __file__, "--measure", config, "--root", str(root), "--cache", str(cache),
           "--samples", str(samples)] + (["--trace"] if trace else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{config} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def profile(root: Path, top: int = 12) -> str:
    """cProfile of ``raster_meta`` construction (lazy): the functions with the most cumulative time."""
    import warnings

    warnings.simplefilter("ignore")
    from noisyseg.data.raster import RasterSegmentation

    prof = cProfile.Profile()
    prof.enable()
    RasterSegmentation("images/*/*.tif", "masks/*/*.tif", root=str(root), mean=MEAN, std=STD, skip_empty=False)
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(top)
    return buf.getvalue()


# ------------------------------------------------------------------------------------- report
def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def table(rows: list[dict]) -> str:
    head = "| configuration | tiles | index s | peak RSS +MB | tracemalloc peak MB | first sample ms | per sample ms |"
    lines = [head, "|" + "---|" * 7]
    for r in rows:
        f = lambda k, fmt: (fmt % r[k]) if k in r else "–"  # noqa: E731
        lines.append(
            f"| {r['config']} | {r['tiles']:,} | {r['seconds']:.2f} | {r['rss_peak_delta_mb']:.1f} | "
            f"{f('tracemalloc_peak_mb', '%.1f')} | {f('first_sample_ms', '%.2f')} | {f('per_sample_ms', '%.2f')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiles", type=int, default=100_000)
    ap.add_argument("--per-dir", type=int, default=1000)
    ap.add_argument("--scan-tiles", type=int, default=10_000, help="tree for the cache and profile runs")
    ap.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "noisyseg_tiles")
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=RESULTS / "indexing.md")
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    ap.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure, args.root, args.cache, args.samples, args.trace)))
        return 0
    if args.tiles < 1 or args.scan_tiles < 1 or args.per_dir < 1:
        ap.error("--tiles, --scan-tiles and --per-dir must be >= 1")

    big, small = args.root / f"n{args.tiles}", args.root / f"n{args.scan_tiles}"
    gen = {n: generate(r, n, args.per_dir) for n, r in ((args.tiles, big), (args.scan_tiles, small))}
    for n, s in gen.items():
        print(f"generate {n:,} tiles (x2 files): " + ("reused" if s is None else f"{s:.1f} s"), flush=True)

    runs = [("glob", big), ("raster_meta", big), ("raster_validate", small), ("raster_manifest_walk", big),
            ("raster_manifest", big), ("raster_cache_cold", small), ("raster_cache_warm", small),
            ("tile_index_walk", big), ("tile_index_manifest", big)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:  # caches and manifests live outside the tree
        for config, root in runs:
            n = args.tiles if root == big else args.scan_tiles
            kind = "stats" if config.startswith("raster_cache") else "manifest"
            cache = Path(tmp) / f"{kind}_{config.startswith('raster')}_{n}.json"
            if config.endswith(("cold", "walk")):
                cache.unlink(missing_ok=True)
            timed = child(config, root, cache, args.samples, trace=False)
            if config.endswith(("cold", "walk")):
                traced = {}  # the traced rerun would find the cache already written
            else:
                traced = child(config, root, cache, args.samples, trace=True)
            row = {**timed, "tiles": n, **{k: v for k, v in traced.items() if k == "tracemalloc_peak_mb"}}
            rows.append(row)
            print(json.dumps(row), flush=True)
    prof = profile(small)
    text = "\n".join([
        "# Indexing a tile tree",
        "",
        f"`python benchmarks/bench_indexing.py --tiles {args.tiles} --scan-tiles {args.scan_tiles}`; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs (shared), Python "
        f"{platform.python_version()}. Tiles: 16x16 uint8 GeoTIFF image (3 bands) + mask, "
        f"{args.per_dir} per folder. Generation: "
        + ", ".join(f"{n:,} tiles {'reused' if s is None else f'{s:.1f} s'}" for n, s in gen.items())
        + ". Each row runs in a fresh process; RSS is the peak (VmHWM) above the RSS after imports;"
        " tracemalloc is a separate run (its time is not reported). Validate and cold/warm-cache rows"
        f" use the {args.scan_tiles:,}-tile tree.",
        "",
        table(rows),
        "",
        HISTORY,
        "",
        f"## cProfile of `raster_meta` on {args.scan_tiles:,} tiles",
        "",
        "```",
        prof.strip(),
        "```",
        "",
    ])
    write_atomic(args.out, text)
    print(table(rows))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
