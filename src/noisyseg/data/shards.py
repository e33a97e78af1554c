"""Pack a dataset into LitData shards once; stream them to every process of every node.

    noisyseg data pack CONFIG --out DIR [--split train] [--workers N] [--chunk-bytes 64MB] [--compression none|zstd]
                                        [--overwrite]

**Packing** (:func:`pack`, ``noisyseg data pack``) reads every sample of a dataset config and
writes it with ``litdata.optimize`` (Lightning-AI/litData) into chunk files of about
``chunk_bytes`` each (uncompressed by default, as litdata's own default; ``compression="zstd"``
for about 30 % less disk), plus litdata's ``index.json`` and noisyseg's
``noisyseg_pack.json`` (samples, keys, the source config, the source's ``normalization`` /
``num_classes`` / ``class_names``). Every key of the sample contract that the samples hold is
stored (:mod:`noisyseg.data.loading`): images and masks in the narrowest integer dtype that holds
their values exactly (a 4-band uint16 tile is stored as uint16, not float32; other images as
float32), ``noisy_pair`` as an int, ``meta`` as JSON. Reading back gives the source sample
exactly: values, dtypes (image float32, masks int64) and meta (JSON turns tuples into lists and
numpy scalars into Python numbers). Shard ``k`` of ``W`` workers' output holds a contiguous run of
source indices, and stored sample ``i`` is source sample ``i``.

**Resuming.** A killed or failed pack *continues*: every worker records in ``DIR/.checkpoints``
after each chunk it completes which inputs are done (litdata's ``use_checkpoint``), and running
the same command again (same config, ``--workers``, chunk settings) skips the completed chunks
and re-reads only the samples of the chunk in flight. A different config or settings is refused
with a message; ``--overwrite`` deletes the shards and starts over. A complete pack is refused
too, unless ``--overwrite``.

**Per-epoch datasets are refused.** A dataset whose samples are redrawn every epoch
(``draws_per_epoch = True``, :class:`~noisyseg.data.vts.VTSPairs`: the pairing and the corrupted
partner depend on the epoch) would be frozen at epoch 0's draw. Packing it, or any dataset that
wraps one, raises a ValueError naming it; stream it from its generator instead.

**Reading** (:class:`StreamingShards`) is a ``litdata.StreamingDataset`` that returns the sample
contract and builds its own loaders for :class:`~noisyseg.data.DataModule`: training streams with
litdata's ``StreamingDataLoader`` (shuffled chunk order and items within chunks, from
``(seed, epoch)``; every DDP rank gets the same number of samples, ``drop_last``), evaluation reads
by index with :class:`~noisyseg.data.loading.UnpaddedDistributedSampler` (every sample scored
once). The loader's ``state_dict`` is saved in Lightning checkpoints, so a run resumed from a
mid-epoch checkpoint continues the epoch where it stopped.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from noisyseg.data.loading import (
    CHANGE_MASK,
    CLEAN_MASK,
    IMAGE,
    IMAGE2,
    MASK,
    MASK2,
    META,
    NOISY_PAIR,
    Sample,
    UnpaddedDistributedSampler,
    default_seed,
)
from noisyseg.runfiles import write_json
from noisyseg.runtime import is_dist

os.environ.setdefault("LITDATA_DISABLE_VERSION_CHECK", "1")  # older litdata asks PyPI on every optimize()
from litdata import StreamingDataLoader, StreamingDataset  # noqa: E402
from litdata.utilities.env import _DistributedEnv  # noqa: E402

__all__ = ["MANIFEST", "StreamingShards", "decode_item", "encode_sample", "main", "pack", "per_epoch_source"]

MANIFEST = "noisyseg_pack.json"
"""noisyseg's description of a complete pack, beside litdata's ``index.json``."""
PENDING = "noisyseg_pack.pending.json"
"""Settings of a pack in progress; present until it completes (a second run compares them)."""
FORMAT = 1
IMAGE_KEYS = (IMAGE, IMAGE2)
MASK_KEYS = (MASK, CLEAN_MASK, MASK2, CHANGE_MASK)
CONTRACT_KEYS = frozenset((*IMAGE_KEYS, *MASK_KEYS, NOISY_PAIR, META))
INDEX = "_index"  # the source index stored beside the sample keys
_INT_TYPES = (  # narrowest first: (dtype, lo, hi) holding every value exactly
    (torch.uint8, 0, 255), (torch.int16, -(2**15), 2**15 - 1), (torch.uint16, 0, 2**16 - 1),
    (torch.int32, -(2**31), 2**31 - 1),
)


# ----------------------------------------------------------------------------------- encoding
def per_epoch_source(dataset: Any) -> Any | None:
    """The dataset (``dataset`` or one it wraps) that redraws samples every epoch, else ``None``.

    Follows ``.dataset`` (wrappers: splits, caches, noisy labels) and ``.datasets`` (concatenations).
    """
    todo, seen = [dataset], set()
    while todo:
        d = todo.pop()
        if d is None or id(d) in seen:
            continue
        seen.add(id(d))
        if getattr(d, "draws_per_epoch", False):
            return d
        todo.append(getattr(d, "dataset", None))
        todo.extend(getattr(d, "datasets", None) or [])
    return None


def _narrow(t: torch.Tensor, floating: bool) -> torch.Tensor:
    """``t`` in the narrowest dtype that holds its values exactly (float32 images stay float32 otherwise)."""
    if t.numel() == 0:
        return t
    if floating:
        if not bool(torch.isfinite(t).all()) or not bool((t == t.round()).all()) or t.abs().max() > 2**24:
            return t  # fractional, non-finite, or beyond float32's exact integers
    lo, hi = int(t.min()), int(t.max())
    for dtype, a, b in _INT_TYPES:
        if a <= lo and hi <= b:
            return t.to(dtype)
    return t


def _plain(value: Any) -> Any:
    """JSON fallback for meta values: numpy scalars / arrays, paths."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"meta value {value!r} of type {type(value).__name__} is not JSON")


def encode_sample(sample: Sample, index: int) -> dict[str, Any]:
    """One sample as a litdata item: compact tensors, ``noisy_pair`` int, ``meta`` JSON, the index.

    Raises:
        ValueError: a key outside the sample contract, or meta that is not JSON (both named).
    """
    unknown = sorted(set(sample) - CONTRACT_KEYS)
    if unknown:
        raise ValueError(f"sample {index} has keys {unknown} outside the sample contract "
                         f"({sorted(CONTRACT_KEYS)}); they cannot be packed")
    item: dict[str, Any] = {INDEX: int(index)}
    for key in IMAGE_KEYS:
        if key in sample:
            item[key] = _narrow(torch.as_tensor(sample[key]).contiguous(), floating=True)  # [C, H, W]
    for key in MASK_KEYS:
        if key in sample:
            item[key] = _narrow(torch.as_tensor(sample[key]).contiguous(), floating=False)  # [H, W]
    if NOISY_PAIR in sample:
        item[NOISY_PAIR] = int(bool(sample[NOISY_PAIR]))
    try:
        item[META] = json.dumps(sample.get(META, {}), sort_keys=True, default=_plain)
    except (TypeError, ValueError) as err:
        raise ValueError(f"sample {index}: meta cannot be stored as JSON: {err}") from err
    return item


def decode_item(item: dict[str, Any]) -> Sample:
    """A stored item back in the sample contract (image float32, masks int64, ``meta`` a dict)."""
    out: Sample = {}
    for key in IMAGE_KEYS:
        if key in item:
            out[key] = item[key].to(torch.float32, copy=True)  # never a view of the read buffer
    for key in MASK_KEYS:
        if key in item:
            out[key] = item[key].to(torch.int64, copy=True)
    if NOISY_PAIR in item:
        out[NOISY_PAIR] = torch.tensor(bool(item[NOISY_PAIR]))
    out[META] = json.loads(item[META])
    return out


class _Reader:
    """``optimize``'s function: source index -> item; errors name the sample and the dataset."""

    def __init__(self, dataset: Dataset, keys: list[str]) -> None:
        self.dataset, self.keys = dataset, keys

    def __call__(self, index: int) -> dict[str, Any]:
        name = type(self.dataset).__name__
        try:
            item = encode_sample(self.dataset[index], index)
        except Exception as err:
            raise RuntimeError(f"noisyseg-pack: {name}[{index}]: {type(err).__name__}: {err}") from err
        keys = sorted(k for k in item if k != INDEX)
        if keys != self.keys:  # litdata needs one structure per pack
            raise RuntimeError(f"noisyseg-pack: {name}[{index}] has keys {keys} but sample 0 has {self.keys}; "
                               f"a pack needs the same keys in every sample")
        return item


# -------------------------------------------------------------------------------------- packing
def _fingerprint(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _ours(name: str) -> bool:
    """Files a pack writes into its folder (litdata's and noisyseg's)."""
    return (name.startswith("chunk-") and name.endswith(".bin")) or name.endswith("index.json") or \
        name in (MANIFEST, PENDING, ".checkpoints", ".litdata_cache") or name.startswith(".noisyseg_pack")


def _clear(out: Path) -> None:
    for p in out.iterdir():
        if _ours(p.name):
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def _prepare(out: Path, settings: dict[str, Any], overwrite: bool) -> bool:
    """Make ``out`` ready for ``settings``; whether an interrupted pack of them is continued.

    Raises:
        ValueError: ``out`` holds a complete pack, an interrupted pack of other settings, or files
            that are not a pack's (never deleted).
    """
    if not out.exists():
        return False
    if not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    foreign = sorted(p.name for p in out.iterdir() if not _ours(p.name))
    if foreign:
        raise ValueError(f"--out {out} holds files that are not a pack's ({', '.join(foreign[:3])}...); "
                         f"choose an empty or new folder")
    if overwrite:
        _clear(out)
        return False
    if (out / MANIFEST).exists():
        raise ValueError(f"--out {out} already holds a complete pack; pass --overwrite to replace it")
    pending = out / PENDING
    if pending.exists():
        before = json.loads(pending.read_text())
        if before.get("fingerprint") != _fingerprint(settings):
            diff = sorted(k for k in settings if before.get("settings", {}).get(k) != settings[k])
            raise ValueError(f"--out {out} holds an interrupted pack with other settings ({', '.join(diff)} "
                             f"differ); rerun it with the same ones to continue, or pass --overwrite to restart")
        return (out / ".checkpoints").exists()
    if any(out.iterdir()):  # litdata files without our record: not resumable by us
        raise ValueError(f"--out {out} holds shards of an unknown pack; pass --overwrite to replace them")
    return False


def _pack_child(reader: _Reader, n: int, out: str, chunk_bytes: str, compression: str | None,
                workers: int, conn: Any) -> None:
    """Runs ``litdata.optimize`` in its own process group (see :func:`_run_isolated`)."""
    os.setpgid(0, 0)
    # GNU OpenMP's threads do not survive fork: after the parent ran a threaded torch op, the first
    # threaded op here (or in litdata's forked workers) would wait on them forever. One thread per
    # process, as torch's DataLoader workers do; the workers are the parallelism.
    torch.set_num_threads(1)
    os.environ["DATA_OPTIMIZER_CACHE_FOLDER"] = os.path.join(out, ".litdata_cache", "chunks")  # not ~/.lightning:
    os.environ["DATA_OPTIMIZER_DATA_CACHE_FOLDER"] = os.path.join(out, ".litdata_cache", "data")  # optimize wipes it
    try:
        import litdata

        litdata.optimize(reader, list(range(n)), output_dir=out, chunk_bytes=chunk_bytes, compression=compression,
                         num_workers=workers, use_checkpoint=True, keep_data_ordered=True, reorder_files=False,
                         start_method="fork", verbose=False)
    except BaseException as err:  # noqa: BLE001 - reported to the parent, which raises
        conn.send(str(err))
        conn.close()
        os._exit(1)
    conn.send(None)
    conn.close()
    os._exit(0)


def _group_running(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (zombies waiting for their reaper do not count)."""
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: ask the kernel, zombies included
        try:
            os.killpg(pgid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False
    for d in proc.iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()  # state, ppid, pgrp, ...
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


def _kill_group(pgid: int, wait_s: float = 5.0) -> None:
    """SIGKILL every process of group ``pgid`` and wait (up to ``wait_s``) until none runs."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + wait_s
    while _group_running(pgid) and time.monotonic() < deadline:
        time.sleep(0.02)


def _done_inputs(out: Path) -> int:
    total = 0
    for f in (out / ".checkpoints").glob("checkpoint-*.json"):
        try:
            total += int(json.loads(f.read_text()).get("inputs_done", 0))
        except (OSError, ValueError):
            pass  # being replaced right now
    return total


def _run_isolated(reader: _Reader, n: int, out: Path, chunk_bytes: str, compression: str | None, workers: int,
                  progress: bool) -> None:
    """``litdata.optimize`` in a forked child that leads its own process group, with a progress bar.

    When a sample fails, litdata terminates its workers but not the helper processes they
    started; killing the whole group afterwards leaves nothing behind. The bar counts the inputs
    the workers' checkpoints report done (updated per completed chunk).

    Raises:
        RuntimeError: naming the sample that failed (from the worker's message).
    """
    from tqdm import tqdm

    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_pack_child, args=(reader, n, str(out), chunk_bytes, compression, workers, send))
    child.start()
    send.close()
    bar = tqdm(total=n, desc="pack", unit="sample", disable=not progress, initial=min(_done_inputs(out), n))
    try:
        while child.is_alive():
            child.join(0.5)
            bar.update(min(_done_inputs(out), n) - bar.n)
        message = recv.recv() if recv.poll() else "the packing process ended without a report"
        if child.exitcode == 0 and message is None:
            bar.update(n - bar.n)  # litdata removes the checkpoints at the end
    finally:
        _kill_group(child.pid)  # leftover helpers of a failed run, or all of them on Ctrl-C
        bar.close()
    if child.exitcode != 0 or message is not None:
        lines = [ln for ln in str(message).splitlines() if "noisyseg-pack:" in ln]
        why = lines[-1].split("noisyseg-pack:", 1)[1].strip() if lines else str(message)[-2000:]
        raise RuntimeError(f"packing into {out} failed: {why}; the shards completed so far are kept, rerun the "
                           f"same command to continue")


def pack(
    dataset: Dataset,
    out: str | os.PathLike,
    *,
    chunk_bytes: str = "64MB",
    compression: str | None = None,
    num_workers: int | None = None,
    overwrite: bool = False,
    source: Any = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Write every sample of ``dataset`` into LitData shards in ``out``.

    Args:
        dataset: a map-style dataset returning the sample contract.
        out: local output folder (new, empty, an interrupted pack's, or one to ``overwrite``).
        chunk_bytes: target size of one shard before compression (litdata's ``chunk_bytes``).
        compression: ``None`` (default), ``"zstd"`` or ``"zstd:N"`` (level N). Inflating zstd is
            about half of a sample's read time, so uncompressed shards read faster, from disk as
            from the page cache, and take ~1.4x the space (``benchmarks/bench_streaming.py``).
        num_workers: packing processes (``None``: the CPUs this process may use). A continued pack
            needs the same number.
        overwrite: delete a previous pack in ``out`` first.
        source: what was packed, recorded in the manifest and compared when continuing (the CLI
            passes the dataset's config node); default the dataset's class name.
        progress: show a progress bar.

    Returns:
        The manifest written to ``out/noisyseg_pack.json``: ``samples``, ``shards``, ``bytes``,
        ``seconds`` (this run), ``keys``, ``continued``, ``source`` and the source's
        ``normalization`` / ``num_classes`` / ``class_names``.

    Raises:
        ValueError: a dataset that redraws samples per epoch (named), an empty dataset, bad
            settings or output folder (see :func:`_prepare`).
        RuntimeError: a sample failed to read or encode (named); completed shards are kept.
    """
    t0 = time.perf_counter()
    redraws = per_epoch_source(dataset)
    if redraws is not None:
        raise ValueError(f"{type(redraws).__name__} draws new samples every epoch (draws_per_epoch = True): packing "
                         f"would freeze epoch 0's draw for every epoch; train from the dataset itself instead")
    n = len(dataset)  # type: ignore[arg-type]
    if n < 1:
        raise ValueError(f"{type(dataset).__name__} is empty: nothing to pack")
    workers = int(num_workers) if num_workers is not None else len(os.sched_getaffinity(0))
    if workers < 1:
        raise ValueError(f"num_workers={num_workers} must be >= 1")
    if compression is not None and not str(compression).startswith("zstd"):
        raise ValueError(f"compression={compression!r}; valid: 'zstd', 'zstd:N' (level N) or None")
    workers = min(workers, n)
    if "://" in str(out):
        raise ValueError(f"out={out}: pack writes a local folder; copy it to the object store afterwards "
                         f"(e.g. aws s3 sync DIR s3://bucket/prefix)")
    out = Path(out)
    first = encode_sample(dataset[0], 0)
    keys = sorted(k for k in first if k != INDEX)
    settings = {"source": source if source is not None else type(dataset).__name__, "samples": n,
                "num_workers": workers, "chunk_bytes": str(chunk_bytes), "compression": compression,
                "keys": keys, "format": FORMAT}
    continued = _prepare(out, settings, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / PENDING, {"fingerprint": _fingerprint(settings), "settings": settings}, default=str)
    _run_isolated(_Reader(dataset, keys), n, out, str(chunk_bytes), compression, workers, progress)
    shutil.rmtree(out / ".litdata_cache", ignore_errors=True)
    stored = json.loads((out / "index.json").read_text())
    count = sum(int(c["chunk_size"]) for c in stored["chunks"])
    if count != n:
        raise RuntimeError(f"packing into {out} wrote {count} samples for {n} inputs")
    manifest = {
        **settings,
        "shards": len(stored["chunks"]),
        "bytes": sum(p.stat().st_size for p in out.glob("chunk-*.bin")) + (out / "index.json").stat().st_size,
        "seconds": round(time.perf_counter() - t0, 3),
        "continued": continued,
        "normalization": getattr(dataset, "normalization", None),
        "num_classes": getattr(dataset, "num_classes", None),
        "class_names": getattr(dataset, "class_names", None),
    }
    write_json(out / MANIFEST, manifest, default=_plain)
    (out / PENDING).unlink()
    return manifest


# -------------------------------------------------------------------------------------- reading
class _ByIndex(Dataset):
    """Map-style view of a :class:`StreamingShards` (evaluation loaders take a sampler)."""

    def __init__(self, shards: StreamingShards) -> None:
        self.shards = shards

    def __len__(self) -> int:
        return len(self.shards)

    def __getitem__(self, index: int) -> Sample:
        return self.shards[int(index)]


class StreamingShards(StreamingDataset):
    """Samples streamed from a folder written by :func:`pack`, in the sample contract.

    A YAML source like any dataset; :class:`~noisyseg.data.DataModule` asks it for its loaders
    (:meth:`dataloader`)::

        data:
          class_path: noisyseg.data.DataModule
          init_args:
            train: {class_path: noisyseg.data.StreamingShards, init_args: {input_dir: shards/train}}
            val: {class_path: noisyseg.data.StreamingShards, init_args: {input_dir: shards/val, shuffle: false}}

    Training order is litdata's: the chunk order and the items within each chunk are shuffled
    from ``(seed, epoch)`` (the loader counts epochs from 1), and chunks are dealt to the
    ``world_size x num_workers`` readers; under DDP ``drop_last`` trims every rank to the same
    number of samples, so ranks run the same number of steps. Indexing (``shards[i]``) returns
    source sample ``i``.

    Args:
        input_dir: the pack folder, or a ``s3://`` / ``gs://`` URL of one (litdata downloads chunks
            to ``cache_dir``; remote use is untested here).
        shuffle: shuffle the training order every epoch.
        seed: shuffle seed (``None``: the run's ``seed_everything`` seed).
        drop_last: drop the tail so every DDP rank gets the same number of samples (``None``:
            litdata's default, on under DDP).
        mean, std: per-band statistics to normalise images with on read (for packs of raw values;
            they become :attr:`normalization`). Default: no normalisation, and
            :attr:`normalization` is the one the source recorded at packing time.
        cache_dir: where remote chunks are kept (litdata's ``cache_dir``).
        max_cache_size: litdata's cap on that cache.

    Raises:
        ValueError: the folder is not a complete pack, or ``mean`` / ``std`` without the other or
            of the wrong length.
    """

    def __init__(
        self,
        input_dir: str,
        shuffle: bool = True,
        seed: int | None = None,
        drop_last: bool | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        cache_dir: str | None = None,
        max_cache_size: str = "100GB",
    ) -> None:
        self.manifest = _read_manifest(input_dir)
        super().__init__(input_dir, cache_dir=cache_dir, shuffle=shuffle, drop_last=drop_last,
                         seed=default_seed() if seed is None else int(seed), max_cache_size=max_cache_size)
        self._drop_last_arg = drop_last
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        self._norm: tuple[torch.Tensor, torch.Tensor] | None = None
        if mean is not None:
            if len(mean) != len(std) or min(std) <= 0:  # type: ignore[arg-type]
                raise ValueError(f"mean {mean} and std {std} must have one value per band and std > 0")
            self._norm = (torch.tensor(mean, dtype=torch.float32)[:, None, None],  # [C, 1, 1]
                          torch.tensor(std, dtype=torch.float32)[:, None, None])
            self.normalization = {"mean": [float(m) for m in mean], "std": [float(s) for s in std]}
        else:
            self.normalization = self.manifest.get("normalization")
        self.num_classes = self.manifest.get("num_classes")
        self.class_names = self.manifest.get("class_names")

    def __getitem__(self, index: Any) -> Sample:  # type: ignore[override]
        sample = decode_item(super().__getitem__(index))
        if self._norm is not None:
            mean, std = self._norm
            for key in IMAGE_KEYS:
                if key in sample:
                    if sample[key].shape[0] != mean.shape[0]:
                        raise ValueError(f"mean/std have {mean.shape[0]} bands but {key} has "
                                         f"{sample[key].shape[0]} (pack {self.input_dir.path or self.input_dir.url})")
                    sample[key] = (sample[key] - mean) / std  # [C, H, W]
        return sample

    def dataloader(
        self,
        batch_size: int,
        num_workers: int = 0,
        drop_last: bool = False,
        train: bool = True,
        collate_fn: Any = None,
        replacement: bool = False,
        num_samples: int | None = None,
    ) -> DataLoader:
        """The loader :class:`~noisyseg.data.DataModule` uses (built after DDP has started).

        Training: a ``StreamingDataLoader`` (shuffled, split across ranks and workers by litdata,
        ``drop_last`` also drops each worker's incomplete last batch). Evaluation: a plain
        ``DataLoader`` over indices in order, under DDP with
        :class:`~noisyseg.data.loading.UnpaddedDistributedSampler`.

        Raises:
            ValueError: ``replacement`` or ``num_samples`` (streamed epochs are one pass over the pack).
        """
        if replacement or num_samples is not None:
            raise ValueError("StreamingShards streams one pass over the pack per epoch: replacement and "
                             "samples_per_epoch are not supported (pack more samples instead)")
        if not train:
            view = _ByIndex(self)
            return DataLoader(view, batch_size=batch_size, sampler=UnpaddedDistributedSampler(view) if is_dist() else None,
                              num_workers=num_workers, persistent_workers=num_workers > 0, collate_fn=collate_fn)
        # the process group exists now (not when the config was instantiated): split across its ranks
        self.distributed_env = _DistributedEnv.detect()
        self.set_drop_last(bool(self._drop_last_arg) or self._drop_last_arg is None and self.distributed_env.world_size > 1)
        return StreamingDataLoader(self, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_fn,
                                   drop_last=drop_last or None, persistent_workers=num_workers > 0)


def _read_manifest(input_dir: str) -> dict[str, Any]:
    """``noisyseg_pack.json`` of a local pack (``{}`` for a remote URL: litdata reads its index itself).

    Raises:
        ValueError: a local folder without a complete pack.
    """
    if "://" in str(input_dir):
        return {}
    path = Path(input_dir)
    if not (path / MANIFEST).is_file() or not (path / "index.json").is_file():
        state = "an interrupted pack: rerun `noisyseg data pack` to finish it" if (path / PENDING).exists() \
            else "no pack"
        raise ValueError(f"StreamingShards input_dir {path} holds {state} (no {MANIFEST} / index.json)")
    return json.loads((path / MANIFEST).read_text())


# ------------------------------------------------------------------------------------------ CLI
def load_source(config: str | os.PathLike, split: str = "train") -> tuple[Dataset, Any]:
    """The dataset a config names and its config node: a ``data:`` DataModule's ``split`` set, or a dataset node.

    Only that dataset is built (not the other splits), with the class-kind check of
    :func:`noisyseg.config.instantiate`.

    Raises:
        ValueError: no data section, no such split, or a refused / failing class path.
        FileNotFoundError: the config is missing.
    """
    import lightning.pytorch as pl

    from noisyseg import config as cfgs

    cfg = cfgs.load_config(config)
    node = cfg.get("data", cfg)
    if not isinstance(node, dict) or "class_path" not in node:
        raise ValueError(f"{config} has no data section: expected a dataset or DataModule 'class_path' "
                         f"(or a top-level 'data:' key holding one)")
    cls = cfgs.check_class(node["class_path"], (pl.LightningDataModule, Dataset))
    if not issubclass(cls, pl.LightningDataModule):
        return cfgs.instantiate(node, (Dataset,)), node
    inner = (node.get("init_args") or {}).get(split)
    if isinstance(inner, dict) and "class_path" in inner:
        return cfgs.instantiate(inner, (Dataset,)), inner
    module = cfgs.instantiate(node, (pl.LightningDataModule,))
    ds = getattr(module, f"{split}_set", None)
    if ds is None:
        have = [s for s in ("train", "val", "test") if getattr(module, f"{s}_set", None) is not None]
        raise ValueError(f"{config} configures no {split!r} dataset (it has: {', '.join(have) or 'none'})")
    return ds, {"config": os.fspath(config), "split": split}


def main(argv: list[str] | None = None) -> int:
    """``noisyseg data pack``; returns 0, or 2 with a one-line message on bad input."""
    p = argparse.ArgumentParser(prog="noisyseg data pack", description=__doc__.split("\n")[0])
    p.add_argument("config", help="data config YAML (a DataModule, a dataset node, or a whole LightningCLI config)")
    p.add_argument("--out", required=True, help="output folder of the shards")
    p.add_argument("--split", default="train", choices=["train", "val", "test"], help="which DataModule set (train)")
    p.add_argument("--workers", type=int, default=None, help="packing processes (default: the usable CPUs)")
    p.add_argument("--chunk-bytes", default="64MB", help="shard size before compression (64MB)")
    p.add_argument("--compression", default="none",
                   help="none, zstd or zstd:N (none: faster reads, ~1.4x the disk of zstd)")
    p.add_argument("--overwrite", action="store_true", help="replace a previous pack in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    try:
        dataset, node = load_source(args.config, args.split)
        m = pack(dataset, args.out, chunk_bytes=args.chunk_bytes,
                 compression=None if args.compression.lower() == "none" else args.compression,
                 num_workers=args.workers, overwrite=args.overwrite, source=node, progress=not args.no_progress)
    except (ValueError, OSError, RuntimeError, KeyError, TypeError, ImportError) as err:
        print(f"noisyseg data pack: error: {err}".replace("\n", " "), file=sys.stderr)
        return 2
    how = "continued, " if m["continued"] else ""
    print(f"packed {m['samples']:,} samples into {m['shards']:,} shards, {m['bytes'] / 2**20:,.1f} MiB, "
          f"{how}{m['seconds']:.1f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
