"""Archive-scale reading: packed LitData shards vs one GeoTIFF per tile, noisyseg's and torchgeo's way.

N generated tiles (default 100,000; 4-band uint16, 128 px, deflate-compressed, with a uint8 mask)
are stored three ways and read through a ``DataLoader`` with the same batch size and number of
loader workers, in one run:

* **GeoTIFF (noisyseg)** -- one file per tile read by :class:`noisyseg.data.RasterSegmentation`
  (``normalize=False``, lazy indexing), shuffled;
* **GeoTIFF (torchgeo)** -- the same files as torchgeo's ``RasterDataset`` (images) intersected
  with a mask ``RasterDataset``, sampled by ``GridGeoSampler(size=128, stride=128)`` and collated
  by ``stack_samples``, as torchgeo's docs run it (the tiles lie side by side on a grid, one
  window per tile);
* **shards** -- the RasterSegmentation packed once by ``noisyseg.data.shards.pack`` (timed,
  reported with its size on disk) and streamed by :class:`noisyseg.data.StreamingShards`.

Reported: samples/s per loader worker (``--workers`` workers; samples after the first batch over
the time after it), time to first batch (dataset construction, indexing, sampler and the first
batch: what a user waits for at start-up), pack time and size on disk, and the ratios shards /
GeoTIFF and shards / torchgeo (for time to first batch and size, lower is better). The loaders
alternate A B C per repeat and the median is reported. The files are read from the page cache
when they fit in memory (12.8 GB of raw pixels at 100,000 tiles, per way of storing them); cold
reads are not measured here.

Disk: about 0.1 MB per tile each way, i.e. ~10 GB for the GeoTIFFs and ~10 GB for the shards at
100,000 tiles (the generated pixels are smooth fields with sensor-like noise, which compress
little). Tiles are generated once
into ``--data`` and reused while ``--tiles``/``--seed`` are unchanged; generation is not timed.

Run: ``python benchmarks/bench_streaming.py [--tiles 100000] [--workers 2] [--samples 20000]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

SIZE, BANDS, RES, X0, Y0 = 128, 4, 10.0, 500000.0, 5000000.0


# ------------------------------------------------------------------------------------------ data
def tile_arrays(i: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Tile ``i``: a smooth 12-bit field per band plus sensor noise, ``[4, 128, 128]`` uint16; its mask ``[128, 128]`` uint8."""
    g = np.random.default_rng([seed, i])
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE  # [S, S]
    f = g.uniform(0.5, 3.0, (BANDS, 2)).astype(np.float32)
    p = g.uniform(0, 2 * np.pi, (BANDS, 2)).astype(np.float32)
    field = np.cos(2 * np.pi * f[:, :1, None] * x + p[:, :1, None]) * np.cos(2 * np.pi * f[:, 1:, None] * y + p[:, 1:, None])
    image = 2000 + 1500 * field + g.normal(0, 40, (BANDS, SIZE, SIZE))  # [4, S, S]
    mask = np.digitize(field[0], [-0.3, 0.3]).astype(np.uint8)  # 3 classes from the first band's field
    return np.clip(image, 0, 65535).astype(np.uint16), mask


def _write_range(root: str, start: int, stop: int, columns: int, seed: int) -> int:
    import rasterio
    from affine import Affine

    for i in range(start, stop):
        image, mask = tile_arrays(i, seed)
        row, col = divmod(i, columns)
        transform = Affine(RES, 0, X0 + col * SIZE * RES, 0, -RES, Y0 - row * SIZE * RES)
        for sub, arr in (("img", image), ("msk", mask[None])):
            with rasterio.open(Path(root) / sub / f"t{i:07d}.tif", "w", driver="GTiff", width=SIZE, height=SIZE,
                               count=arr.shape[0], dtype=arr.dtype.name, crs="EPSG:32633", transform=transform,
                               compress="deflate", predictor=2) as dst:
                dst.write(arr)
    return stop - start


def make_tiles(root: Path, tiles: int, seed: int, jobs: int) -> float:
    """Write (or reuse) ``tiles`` GeoTIFF pairs under ``root/img`` and ``root/msk``; seconds spent."""
    stamp = root / "tiles.json"
    want = {"tiles": tiles, "seed": seed, "size": SIZE, "bands": BANDS}
    if stamp.exists() and json.loads(stamp.read_text()) == want:
        return 0.0
    shutil.rmtree(root, ignore_errors=True)
    (root / "img").mkdir(parents=True)
    (root / "msk").mkdir(parents=True)
    t0 = time.perf_counter()
    columns = math.ceil(math.sqrt(tiles))  # tiles side by side on a square grid
    starts = list(range(0, tiles, max(1, math.ceil(tiles / (jobs * 8)))))
    stops = starts[1:] + [tiles]
    with ProcessPoolExecutor(jobs) as pool:
        done = 0
        for n in pool.map(partial(_write_range, str(root), columns=columns, seed=seed), starts, stops):
            done += n
            print(f"\r  writing GeoTIFFs {done:,}/{tiles:,}", end="", flush=True)
    print()
    stamp.write_text(json.dumps(want))
    return time.perf_counter() - t0


def folder_bytes(*folders: Path) -> int:
    return sum(e.stat().st_size for f in folders for e in os.scandir(f) if e.is_file())


# --------------------------------------------------------------------------------------- loaders
def geotiff_loader(root: Path, batch: int, workers: int):
    from torch.utils.data import DataLoader

    from noisyseg.data import RasterSegmentation
    from noisyseg.data.sample import collate

    ds = RasterSegmentation("img/*.tif", "msk/*.tif", root=str(root), normalize=False)
    return DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, collate_fn=collate,
                      persistent_workers=False)


def torchgeo_loader(root: Path, batch: int, workers: int):
    from torch.utils.data import DataLoader
    from torchgeo.datasets import RasterDataset, stack_samples
    from torchgeo.samplers import GridGeoSampler

    class MaskRasters(RasterDataset):
        is_image = False

    ds = RasterDataset(paths=str(root / "img")) & MaskRasters(paths=str(root / "msk"))
    sampler = GridGeoSampler(ds, size=SIZE, stride=SIZE)
    return DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=workers, collate_fn=stack_samples)


def shards_loader(shards: Path, batch: int, workers: int):
    from noisyseg.data import StreamingShards
    from noisyseg.data.sample import collate

    return StreamingShards(str(shards), seed=0).dataloader(batch_size=batch, num_workers=workers, collate_fn=collate)


def measure(make, samples: int, batch: int) -> tuple[float, float]:
    """``(samples/s after the first batch, seconds to the first batch)``; ``make()`` builds the loader."""
    t0 = time.perf_counter()
    it = iter(make())
    first = next(it)
    t1 = time.perf_counter()
    seen = 0
    for b in it:
        seen += len(b["image"])
        if seen + len(first["image"]) >= samples:
            break
    t2 = time.perf_counter()
    del it  # stops the loader's workers
    if seen == 0:
        raise RuntimeError(f"only one batch of {batch} was read; raise --samples or --tiles")
    return seen / (t2 - t1), t1 - t0


# ------------------------------------------------------------------------------------------- run
def run(tiles: int = 100_000, workers: int = 2, samples: int = 20_000, batch: int = 32, repeats: int = 1,
        data: Path | None = None, pack_workers: int | None = None, seed: int = 0) -> list[dict]:
    """Generate (or reuse) the tiles, pack them, time the three loaders; the result rows."""
    import torch

    from noisyseg.data import RasterSegmentation
    from noisyseg.data.shards import pack

    common.quiet()
    torch.set_num_threads(1)
    data = data or Path("runs/bench_streaming")
    root, shards = data / "tiles", data / "shards"
    jobs = pack_workers or len(os.sched_getaffinity(0))
    print(f"streaming: {tiles:,} tiles of {BANDS}x{SIZE}x{SIZE} uint16 in {root}", flush=True)
    made = make_tiles(root, tiles, seed, jobs)
    if made:
        print(f"  generated in {made:.1f} s (not timed below)")
    src = RasterSegmentation("img/*.tif", "msk/*.tif", root=str(root), normalize=False)
    m = pack(src, shards, chunk_bytes="64MB", num_workers=jobs, overwrite=True, progress=True)
    tif_bytes = folder_bytes(root / "img", root / "msk")
    print(f"  packed in {m['seconds']:.1f} s: {m['shards']} shards, {m['bytes'] / 2**20:,.1f} MiB "
          f"(GeoTIFFs {tif_bytes / 2**20:,.1f} MiB)", flush=True)
    samples = min(samples, tiles)
    sides = {
        "GeoTIFF (noisyseg)": lambda: geotiff_loader(root, batch, workers),
        "GeoTIFF (torchgeo)": lambda: torchgeo_loader(root, batch, workers),
        "shards": lambda: shards_loader(shards, batch, workers),
    }
    rate: dict[str, list[float]] = {k: [] for k in sides}
    first: dict[str, list[float]] = {k: [] for k in sides}
    for r in range(repeats):
        for name, make in sides.items():
            s, f = measure(make, samples, batch)
            rate[name].append(s / max(workers, 1))
            first[name].append(f)
            print(f"  repeat {r + 1}/{repeats} {name:<20} {s / max(workers, 1):9.1f} samples/s per worker, "
                  f"first batch {f:7.2f} s", flush=True)
    med = {k: common.median(v) for k, v in rate.items()}
    ttfb = {k: common.median(v) for k, v in first.items()}
    per = f"{max(workers, 1)} worker{'s' if workers > 1 else ''}" if workers else "main process"
    rows = []
    for peer in ("GeoTIFF (noisyseg)", "GeoTIFF (torchgeo)"):
        rows.append(common.row("streaming", f"shards samples/s per loader worker ({per})", med["shards"], med[peer],
                               peer, "samples/s", "report", {k: rate[k] for k in ("shards", peer)}))
    for peer in ("GeoTIFF (noisyseg)", "GeoTIFF (torchgeo)"):
        rows.append(common.row("streaming", "shards time to first batch", ttfb["shards"], ttfb[peer], peer, "s",
                               "report", {k: first[k] for k in ("shards", peer)}, "lower is better"))
    rows.append(common.row("streaming", f"pack {tiles:,} tiles ({jobs} process{'es' if jobs > 1 else ''})", m["seconds"], None, "", "s", "report"))
    rows.append(common.row("streaming", "size on disk", m["bytes"] / 2**20, tif_bytes / 2**20, "GeoTIFF deflate",
                           "MiB", "report", note="lower is better"))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiles", type=int, default=100_000, help="tiles generated (100,000)")
    ap.add_argument("--workers", type=int, default=2, help="loader workers of every loader (2; 0: main process)")
    ap.add_argument("--samples", type=int, default=20_000, help="samples read per loader and repeat (20,000)")
    ap.add_argument("--batch", type=int, default=32, help="batch size (32)")
    ap.add_argument("--repeats", type=int, default=1, help="A B C repeats, median reported (1)")
    ap.add_argument("--data", type=Path, default=Path("runs/bench_streaming"), help="tiles and shards folder")
    ap.add_argument("--pack-workers", type=int, default=None, help="processes generating and packing (all CPUs)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.tiles < 2 * args.batch:
        ap.error(f"--tiles {args.tiles} must be at least two batches (2 x --batch {args.batch})")
    print(common.table(run(args.tiles, args.workers, args.samples, args.batch, args.repeats, args.data,
                           args.pack_workers, args.seed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
