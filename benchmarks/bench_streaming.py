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
run in the order shards, GeoTIFF (noisyseg), torchgeo, each repeat in its own process and a
loader's repeats back to back; every repeat of a loader reads the same samples, so repeat 1 is a
first read (from disk with ``--drop-caches``, dropped before each loader's first repeat) and the
median of later repeats a re-read from the page cache, both reported. The pack is uncompressed
by default, as ``noisyseg data pack`` writes it (``--compression zstd`` for the compressed one;
each kind is kept in its own folder). torchgeo opens every file to build its index before the first batch (about
3 ms per tile pair here) and then reads some 20 samples/s, so its rate is taken over
``--torchgeo-samples`` samples, and a loader without a first batch after ``--torchgeo-limit``
seconds is stopped and reported as taking more than the limit. A complete pack of the same tiles
is reused and its recorded pack time reported. Without ``--drop-caches`` a first read comes from
whatever the page cache holds.

Disk at 100,000 tiles: ~9 GB of GeoTIFFs, ~14 GB of uncompressed shards (~10 GB with zstd; the
generated pixels are smooth fields with sensor-like noise, which compress little). Tiles are generated once into
``--data`` and reused while ``--tiles``/``--seed`` are unchanged; generation is not timed.

Run: ``python benchmarks/bench_streaming.py [--tiles 100000] [--workers 2] [--samples 50000] [--drop-caches]``.
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
    import torch
    from torch.utils.data import DataLoader

    from noisyseg.data import RasterSegmentation
    from noisyseg.data.loading import collate

    ds = RasterSegmentation("img/*.tif", "msk/*.tif", root=str(root), normalize=False)
    order = torch.Generator().manual_seed(0)  # every repeat reads the same samples (see ``run``)
    return DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, collate_fn=collate,
                      persistent_workers=False, generator=order)


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
    from noisyseg.data.loading import collate

    return StreamingShards(str(shards), seed=0).dataloader(batch_size=batch, num_workers=workers, collate_fn=collate)


def _measure_child(make, samples: int, conn) -> None:
    """In a forked child: build the loader, post the time to its first batch, then the rate after it."""
    t0 = time.perf_counter()
    it = iter(make())
    first = next(it)
    t1 = time.perf_counter()
    conn.send(("first", t1 - t0))
    seen = 0
    for b in it:
        seen += len(b["image"])
        if seen + len(first["image"]) >= samples:
            break
    conn.send(("rate", seen / (time.perf_counter() - t1) if seen else None))


def measure(make, samples: int, limit: float | None = None) -> tuple[float | None, float | None]:
    """``(samples/s after the first batch, seconds to the first batch)``; ``make()`` builds the loader.

    The loader runs in a forked child so that one which does not reach its first batch within
    ``limit`` seconds can be stopped: it then gives ``(None, None)`` and is reported as "> limit".
    """
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_measure_child, args=(make, samples, send))
    child.start()
    send.close()
    try:
        if not recv.poll(limit):
            return None, None
        _, first = recv.recv()
        _, rate = recv.recv()
        if rate is None:
            raise RuntimeError("only one batch was read; raise --samples or --tiles")
        return rate, first
    except EOFError:
        raise RuntimeError(f"the loader's process died (exit code {child.exitcode}); see its traceback above") from None
    finally:
        if child.is_alive():
            child.kill()  # its DataLoader workers exit when they see their parent gone
        child.join()


# ------------------------------------------------------------------------------------------- run
def pack_once(root: Path, shards: Path, tiles: int, jobs: int, compression: str | None = None) -> tuple[dict, bool]:
    """Pack the tiles into ``shards`` unless a complete pack of these tiles is there; ``(manifest, packed now)``.

    A pack is reused when its manifest counts ``tiles`` samples and is newer than the tiles'
    stamp; its recorded pack time is then reported.
    """
    from noisyseg.data import RasterSegmentation
    from noisyseg.data.shards import MANIFEST, pack

    done = shards / MANIFEST
    if done.exists() and done.stat().st_mtime > (root / "tiles.json").stat().st_mtime:
        manifest = json.loads(done.read_text())
        if manifest.get("samples") == tiles and manifest.get("compression") == compression:
            return manifest, False
    src = RasterSegmentation("img/*.tif", "msk/*.tif", root=str(root), normalize=False)
    return pack(src, shards, chunk_bytes="64MB", compression=compression, num_workers=jobs, overwrite=True,
                progress=True), True


def drop_page_cache() -> None:
    """Write back and drop Linux's page cache (root only), so that the next reads come from disk."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as e:
        raise SystemExit(f"--drop-caches needs root on Linux (writing /proc/sys/vm/drop_caches failed: {e})") from None


def run(tiles: int = 100_000, workers: int = 2, samples: int = 50_000, batch: int = 32, repeats: int = 2,
        data: Path | None = None, pack_workers: int | None = None, seed: int = 0,
        torchgeo_samples: int = 2_000, torchgeo_limit: float = 1_200.0, drop_caches: bool = False,
        compression: str | None = None) -> list[dict]:
    """Generate (or reuse) the tiles, pack them (or reuse the pack), time the three loaders; the result rows.

    Every repeat of a loader reads the same samples in the same order, so repeat 1 is a first read
    (from disk after ``drop_caches``, else from whatever the page cache holds) and later repeats
    re-read from the page cache; both are reported.
    """
    import torch

    common.quiet()
    torch.set_num_threads(1)
    data = data or Path("runs/bench_streaming")
    root, shards = data / "tiles", data / f"shards-{compression or 'raw'}"
    jobs = pack_workers or len(os.sched_getaffinity(0))
    print(f"streaming: {tiles:,} tiles of {BANDS}x{SIZE}x{SIZE} uint16 in {root}", flush=True)
    made = make_tiles(root, tiles, seed, jobs)
    if made:
        print(f"  generated in {made:.1f} s (not timed below)")
    m, packed = pack_once(root, shards, tiles, jobs, compression)
    tif_bytes = folder_bytes(root / "img", root / "msk")
    print(f"  {'packed' if packed else 'pack reused; it took'} {m['seconds']:.1f} s: {m['shards']} shards, "
          f"{m['bytes'] / 2**20:,.1f} MiB (GeoTIFFs {tif_bytes / 2**20:,.1f} MiB)", flush=True)
    samples = min(samples, tiles)
    # shards first: a loader that never starts (torchgeo indexing every file) must not cost the others
    sides = {
        "shards": (lambda: shards_loader(shards, batch, workers), samples, None),
        "GeoTIFF (noisyseg)": (lambda: geotiff_loader(root, batch, workers), samples, None),
        "GeoTIFF (torchgeo)": (lambda: torchgeo_loader(root, batch, workers), min(torchgeo_samples, tiles),
                               torchgeo_limit),
    }
    rate: dict[str, list[float | None]] = {k: [] for k in sides}
    first: dict[str, list[float | None]] = {k: [] for k in sides}
    per_worker = max(workers, 1)
    # a loader's repeats run back to back: dropping the cache before the next loader's first read
    # must not turn this loader's re-read into a read from disk
    for name, (make, n, limit) in sides.items():
        for r in range(repeats):
            if drop_caches and r == 0:
                drop_page_cache()
            s, f = measure(make, n, limit)
            rate[name].append(None if s is None else s / per_worker)  # None: stopped at the limit
            first[name].append(f)
            if f is None:
                print(f"  repeat {r + 1}/{repeats} {name:<20} no first batch within {limit:g} s: stopped", flush=True)
            else:
                print(f"  repeat {r + 1}/{repeats} {name:<20} {s / per_worker:9.1f} samples/s per worker "
                      f"({n:,} samples), first batch {f:7.2f} s", flush=True)

    def mid(xs: list[float | None]) -> float | None:
        xs = [x for x in xs if x is not None]
        return common.median(xs) if xs else None

    ttfb = {k: v[0] for k, v in first.items()}  # what a user waits for at start-up: the first read
    per = f"{per_worker} worker{'s' if workers > 1 else ''}" if workers else "main process"
    reads = [("first read" + (", page cache dropped" if drop_caches else ""), slice(0, 1))]
    if repeats > 1:
        reads.append(("re-read from the page cache", slice(1, None)))
    rows = []
    for label, which in reads:
        med = {k: mid(v[which]) for k, v in rate.items()}
        for peer in ("GeoTIFF (noisyseg)", "GeoTIFF (torchgeo)"):
            note = "" if med[peer] is not None else f"{peer}: no first batch within {torchgeo_limit:g} s"
            rows.append(common.row("streaming", f"shards samples/s per loader worker ({per}; {label})", med["shards"],
                                   med[peer], peer, "samples/s", "≥ 5× GeoTIFF (noisyseg), > torchgeo",
                                   {k: rate[k][which] for k in ("shards", peer)}, note))
    for peer in ("GeoTIFF (noisyseg)", "GeoTIFF (torchgeo)"):
        if ttfb[peer] is None:  # a lower bound for the peer: the ratio is an upper bound
            rows.append(common.row("streaming", "shards time to first batch (first read)", ttfb["shards"], torchgeo_limit, peer,
                                   "s", "report", {"shards": first["shards"][:1]},
                                   f"lower is better; {peer} > {torchgeo_limit:g} s (stopped), ratio is an upper bound"))
            continue
        rows.append(common.row("streaming", "shards time to first batch (first read)", ttfb["shards"], ttfb[peer], peer, "s",
                               "report", {k: first[k][:1] for k in ("shards", peer)}, "lower is better"))
    rows.append(common.row("streaming", f"pack {tiles:,} tiles ({m['num_workers']} process"
                           f"{'es' if m['num_workers'] > 1 else ''})", m["seconds"], None, "", "s", "report",
                           note="" if packed else "recorded when the pack was written"))
    rows.append(common.row("streaming", "size on disk", m["bytes"] / 2**20, tif_bytes / 2**20, "GeoTIFF deflate",
                           "MiB", "report", note="lower is better"))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiles", type=int, default=100_000, help="tiles generated (100,000)")
    ap.add_argument("--workers", type=int, default=2, help="loader workers of every loader (2; 0: main process)")
    ap.add_argument("--samples", type=int, default=50_000,
                    help="samples read per loader and repeat (50,000: litdata's shuffled start costs a few "
                         "seconds, which 20,000 samples do not amortise)")
    ap.add_argument("--batch", type=int, default=32, help="batch size (32)")
    ap.add_argument("--repeats", type=int, default=2,
                    help="repeats of each loader over the same samples: the first read and the median re-read (2)")
    ap.add_argument("--drop-caches", action="store_true",
                    help="drop the page cache before each loader's first read, so it comes from disk (root only)")
    ap.add_argument("--data", type=Path, default=Path("runs/bench_streaming"), help="tiles and shards folder")
    ap.add_argument("--pack-workers", type=int, default=None, help="processes generating and packing (all CPUs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--torchgeo-samples", type=int, default=2_000,
                    help="samples read by torchgeo's loader for its rate (2,000: it reads ~10-20 samples/s)")
    ap.add_argument("--torchgeo-limit", type=float, default=1_200.0,
                    help="seconds torchgeo may take to its first batch before it is stopped (1,200)")
    ap.add_argument("--compression", default="none",
                    help="the pack's compression: none (default, as noisyseg data pack), zstd or zstd:N")
    args = ap.parse_args(argv)
    if args.tiles < 2 * args.batch:
        ap.error(f"--tiles {args.tiles} must be at least two batches (2 x --batch {args.batch})")
    print(common.table(run(args.tiles, args.workers, args.samples, args.batch, args.repeats, args.data,
                           args.pack_workers, args.seed, args.torchgeo_samples, args.torchgeo_limit,
                           args.drop_caches, None if args.compression.lower() == "none" else args.compression)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
