"""What a run writes and reads: atomic writes, output checks, the run's records, Lightning
checkpoints and the encoder file.

**Writes.** :func:`atomic_write` is the one way noisyseg writes a file: into a temp file
``.<target name>.<8 random characters>.tmp`` in the target's own folder
(``tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")``; :data:`TEMP_NAME` matches
exactly those names), then ``os.replace`` onto the target, so a reader never sees half a file
(:func:`write_json` for JSON). A failed write — any ``OSError`` (``ENOSPC``, ``EDQUOT``, ``EIO``),
torch's zip writer (``RuntimeError: [enforce fail at inline_container.cc:...] . unexpected pos``),
a ``SafetensorError`` reporting an I/O error — is one ``OSError`` naming the file and the free
space (:func:`write_failed`); the temp file is removed and an earlier file of that name is
unchanged. Any other error of the writer (a bug) passes unchanged. :func:`remove_stale_temp`
deletes the temp files a killed write left (up to a whole checkpoint) at the next start, where no
other process writes the same folder.

**Checks before training.** :func:`check_output_file` / :func:`check_output_folder` run at the
start of ``fit``: an output path that is a folder, lies under a file, cannot be written (a temp
file is created and deleted in the folder, or in its nearest existing ancestor when it does not
exist yet, so read-only mounts fail too), or has less free space than the file needs fails in
seconds, naming the path, instead of after the whole training.

**The run's records**, in its ``trainer.default_root_dir``:

* ``config.yaml`` (:class:`RunConfigFile`): the parsed config of ``noisyseg fit``, defaults filled
  in and ``ckpt_path`` left out (a repeat trains from the start), so ``noisyseg fit --config
  <run>/config.yaml`` repeats the run. Lightning's own callback writes it into the logger's
  folder, a new ``version_N`` each run.
* ``results.json`` (:func:`write_results`, :func:`read_results`): ``{"val": {metric: value},
  "test": {metric: value}, "seconds": {subcommand: s}, "encoder": path of the encoder file
  written, or null}``, strict JSON: an undefined score (NaN) is ``null``.

**Lightning checkpoints.** :class:`RunCheckpoint` keeps them in ``<default_root_dir>/checkpoints``
with ``last.ckpt``: Lightning's default puts them under a fresh ``lightning_logs/version_N`` each
run, where the same command could never find its own last checkpoint again; a fixed folder is what
makes ``noisyseg fit --config X --resume`` continue a killed run. ``last.ckpt`` is also written
every ``save_every_minutes`` of training (default 10), so a run killed inside its first, long epoch
still resumes. At the start of ``fit`` the folder is checked (writable; free space for one more
checkpoint: the size of ``last.ckpt``, else weights x (1 + optimiser moments) + buffers,
:func:`checkpoint_estimate`) and cleaned of temp files. :class:`SafeCheckpointIO` writes
checkpoints with :func:`atomic_write` (Lightning's own ``_atomic_save`` goes through an fsspec
transaction whose temp file lives in the system temp folder and is ``shutil.move``\\ d into place:
a copy, not a rename, when that folder is on another filesystem) and reads them with
``torch.load(weights_only=True)`` only (:func:`load_checkpoint_safely`), passed explicitly so that
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` cannot turn it off: a crafted ``last.ckpt`` whose pickle would
import ``os.system`` or ``exec`` is refused before anything runs, with :class:`CheckpointFileError`
naming the file. noisyseg's own checkpoints hold only tensors and plain values.

**The encoder file**: the one artifact that passes from pretraining to fine-tuning. A single
``.safetensors`` file: the encoder's state dict (smp/torchvision ResNet key names, no prefix) and,
in the safetensors header, a JSON document under the key ``noisyseg``::

    {"format": "noisyseg-encoder", "version": 1, "arch": "resnet18", "in_channels": 3,
     "normalization": {"mean": [...], "std": [...]},
     "trained": {"method": "supervised", "epochs": 5, "steps": 400, "seed": 0, ...},
     "source": {"kind": "random" | "noisyseg" | "timm" | "torchvision" | "torchgeo", ...},
     "decoder": {"type": "unet", "num_classes": 2, "class_names": null | [...],
                 "modules": ["decoder", "segmentation_head"]}}

``decoder`` is optional: a file written by a supervised segmentation run also holds the rest of
its network (decoder and segmentation head) under the model's own key names, whose first
dotted parts are listed in ``modules`` (smp: ``decoder.``/``segmentation_head.``; FCN:
``head.``). :func:`read_encoder` and everything built on it (:func:`load_encoder`, export) see
the encoder tensors only; :func:`read_decoder` returns the rest, for a full-network transfer.
Safetensors holds no code, so an encoder file from a stranger cannot run anything when loaded
(unlike a pickled checkpoint).
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import SaveConfigCallback
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

log = logging.getLogger(__name__)

TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp$")
"""Name of an atomic writer's temp file; ``target`` is the name of the file it was to become
(``tempfile.mkstemp`` draws 8 characters from ``[a-z0-9_]``)."""

CONFIG_FILE = "config.yaml"  # the config of a run, in its default_root_dir
RESULTS_FILE = "results.json"  # the run's scores, seconds and encoder file

CHECKPOINT_MOMENTS = {"adamw": 2, "sgd": 1}
"""Optimiser state tensors per parameter that a checkpoint holds (AdamW: two moments; SGD: the
momentum buffer), for the free-space estimate of a first checkpoint."""

FORMAT = "noisyseg-encoder"
VERSION = 1

# torch.save reports a failed write of its zip container only as an enforce failure
_TORCH_WRITE_FAILURE = ("inline_container", "PytorchStreamWriter", "unexpected pos")


# --- writes and checks -------------------------------------------------------------------------


def atomic_write(path: str | Path, write: Callable[[str], Any]) -> Path:
    """Call ``write(tmp_path)``, then rename the temp file onto ``path`` (missing folders are created).

    Raises:
        OSError: the write failed (disk full, I/O error), naming ``path`` and the free space.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)  # first, so that the free space reported is true
        failure = write_failed(path, e)
        if failure is None:
            raise
        raise failure from e
    return path


def write_json(path: str | Path, obj: Any, indent: int | None = 1, default: Callable[[Any], Any] | None = None) -> Path:
    """:func:`atomic_write` of ``json.dumps(obj, indent=indent, default=default)`` (UTF-8)."""
    text = json.dumps(obj, indent=indent, default=default)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_failed(path: str | Path, err: BaseException) -> OSError | None:
    """One ``OSError`` naming ``path`` and the free space for a failed write, or ``None`` when
    ``err`` is not a write failure (a bug to let through unchanged)."""
    text = str(err)
    if isinstance(err, OSError):
        code = err.errno
        reason = err.strerror or text
    elif isinstance(err, RuntimeError) and any(k in text for k in _TORCH_WRITE_FAILURE):
        code, reason = None, f"torch's checkpoint writer stopped ({text.strip()})"
    elif type(err).__name__ == "SafetensorError" and ("Io" in text or "space" in text.lower()):
        code, reason = None, f"safetensors stopped ({text.strip()})"
    else:
        return None
    free = free_space(Path(path).parent)
    full = code in (errno.ENOSPC, errno.EDQUOT) or "StorageFull" in text or "No space left" in text
    hint = "the disk is full: free some space or write elsewhere" if full else "check the disk and the folder"
    room = f"{format_bytes(free)} free in {Path(path).parent}" if free is not None else "free space unknown"
    return OSError(code or errno.EIO, f"cannot write {path}: {reason}; {room}; the partial file was "
                                      f"removed and any earlier {Path(path).name} is unchanged ({hint})")


def remove_stale_temp(folder: str | Path, targets: list[str] | None = None) -> list[Path]:
    """Delete, and return, the temp files of killed atomic writes in ``folder`` (not its
    subfolders): those of the file names ``targets``, or all (``None``)."""
    removed = []
    for entry in os.scandir(folder) if Path(folder).is_dir() else ():
        m = TEMP_NAME.match(entry.name)
        if m and (targets is None or m.group("target") in targets) and entry.is_file(follow_symlinks=False):
            try:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
            except FileNotFoundError:
                pass
    return removed


def format_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def free_space(folder: str | Path) -> int | None:
    """Free bytes on the filesystem holding ``folder`` (its nearest existing ancestor), or ``None``."""
    try:
        return shutil.disk_usage(_existing_ancestor(Path(folder))).free
    except OSError:
        return None


def _existing_ancestor(path: Path) -> Path:
    return next(p for p in (path.absolute(), *path.absolute().parents) if p.exists())


def check_output_folder(folder: str | Path, what: str, need_bytes: int = 0, need_note: str = "") -> None:
    """Check that files can be created in ``folder`` (or it can be made) with ``need_bytes`` free
    (0: not checked; ``need_note``: how they were reckoned).

    Raises:
        ValueError: naming ``what`` and the folder: a file, not writable, or short of space.
    """
    base = _existing_ancestor(Path(folder))
    if not base.is_dir():
        raise ValueError(f"{what} cannot be written: {base} is a file, not a folder")
    try:
        fd, tmp = tempfile.mkstemp(dir=base, prefix=".noisyseg-write-test-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise ValueError(f"{what} cannot be written: creating a file in {base} failed ({e.strerror or e})") from None
    free = free_space(base)
    if need_bytes and free is not None and free < need_bytes:
        note = f" ({need_note})" if need_note else ""
        raise ValueError(f"{what} cannot be written: {base} has {format_bytes(free)} free but it needs about "
                         f"{format_bytes(need_bytes)}{note}; free some space or write elsewhere")


def check_output_file(path: str | Path, what: str, need_bytes: int = 0) -> None:
    """:func:`check_output_folder` for the file ``path`` named by the setting ``what``; also
    refuses (ValueError) a ``path`` that is a folder."""
    if Path(path).is_dir():
        raise ValueError(f"{what} {path} is a folder; give a file path such as {Path(path) / 'encoder.safetensors'}")
    check_output_folder(Path(path).parent, f"{what} {path}", need_bytes)


# --- the run's records -------------------------------------------------------------------------


class RunConfigFile(SaveConfigCallback):
    """Saves the parsed config of ``noisyseg fit`` as ``<default_root_dir>/config.yaml``."""

    def save_config(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":  # validate / test / predict read a run; they do not make one
            cfg = self.config.clone()
            cfg["ckpt_path"] = None  # a repeat trains from the start, not from this run's checkpoint
            text = self.parser.dump(cfg, skip_none=False)
            atomic_write(Path(trainer.default_root_dir) / CONFIG_FILE, lambda tmp: Path(tmp).write_text(text))


def write_results(path: Path, record: dict[str, Any]) -> None:
    """Write the results record ``record`` to ``path`` as strict JSON (NaN scores as ``null``)."""
    clean = {**record, **{split: {k: None if isinstance(v, float) and not math.isfinite(v) else v
                                  for k, v in record[split].items()} for split in ("val", "test")}}
    text = json.dumps(clean, indent=2, allow_nan=False)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def read_results(root: str | Path) -> dict[str, Any] | None:
    """The results record of the run in ``root`` (``null`` scores read as NaN), or None when absent
    or torn (a run killed while writing it is run again)."""
    path = Path(root) / RESULTS_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    for split in ("val", "test"):
        record[split] = {k: math.nan if v is None else v for k, v in (record.get(split) or {}).items()}
    return record


# --- Lightning checkpoints ---------------------------------------------------------------------


class RunCheckpoint(ModelCheckpoint):
    """Checkpoints in ``<default_root_dir>/checkpoints`` with ``last.ckpt`` always kept, also on the clock.

    Args:
        every_n_train_steps: also checkpoint every N optimiser steps (long epochs on real data).
        save_last: keep ``last.ckpt`` (what ``--resume`` reads).
        save_top_k: best checkpoints to keep by ``monitor`` (default: 1 with a monitor, else 0).
        monitor: metric to rank checkpoints by (``None``: keep only ``last.ckpt``).
        save_every_minutes: also checkpoint after this many minutes of training since the last
            time-triggered save (``None``: not on the clock; ignored when Lightning's own
            ``train_time_interval`` is given).
        **kwargs: other :class:`~lightning.pytorch.callbacks.ModelCheckpoint` options.
    """

    # the defaults are in the signature, not set with kwargs.setdefault: jsonargparse passes every
    # ModelCheckpoint default explicitly when the callback is given in YAML (`trainer.callbacks`)
    def __init__(self, every_n_train_steps: int | None = None, save_last: bool | None = True,
                 save_top_k: int | None = None, monitor: str | None = None,
                 save_every_minutes: float | None = 10.0, **kwargs) -> None:
        if save_every_minutes is not None and not save_every_minutes >= 0:
            raise ValueError(f"save_every_minutes={save_every_minutes} must be >= 0 (or null: not on the clock)")
        super().__init__(every_n_train_steps=every_n_train_steps, save_last=save_last, monitor=monitor,
                         save_top_k=(0 if monitor is None else 1) if save_top_k is None else save_top_k, **kwargs)
        # Lightning takes train_time_interval only instead of the step and epoch triggers; set after
        # its check, its on_train_batch_end saves on whichever comes first
        self._clock_only = self._train_time_interval is None and save_every_minutes is not None
        if self._clock_only:
            self._train_time_interval = timedelta(minutes=save_every_minutes)

    @property
    def state_key(self) -> str:
        # the clock trigger leaves the key as it is without it: checkpoints restore across both
        interval = None if self._clock_only else self._train_time_interval
        return self._generate_state_key(monitor=self.monitor, mode=self.mode, every_n_train_steps=self._every_n_train_steps,
                                        every_n_epochs=self._every_n_epochs, train_time_interval=interval)

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.dirpath is None:
            self.dirpath = str(Path(trainer.default_root_dir) / "checkpoints")
        super().setup(trainer, pl_module, stage)
        if stage != "fit":
            return
        if trainer.is_global_zero and (removed := remove_stale_temp(self.dirpath)):  # the folder's one writer
            log.warning("removed %d temp file(s) of interrupted checkpoint writes: %s", len(removed), [p.name for p in removed])
        # on every rank, so that all stop together (one rank raising alone leaves the others waiting)
        last = Path(self.dirpath) / "last.ckpt"
        need, note = (last.stat().st_size, f"the size of {last.name}") if last.is_file() else checkpoint_estimate(pl_module)
        check_output_folder(self.dirpath, f"checkpoint folder {self.dirpath}", need, note)


def checkpoint_estimate(pl_module) -> tuple[int, str]:
    """Bytes a first checkpoint of ``pl_module`` takes, roughly, and how that was reckoned."""
    moments = CHECKPOINT_MOMENTS.get(getattr(pl_module, "optimizer_name", "adamw"), 2)
    params = sum(p.numel() * p.element_size() for p in pl_module.parameters())
    buffers = sum(b.numel() * b.element_size() for b in pl_module.buffers())
    return params * (1 + moments) + buffers, f"weights and {moments} optimiser moment(s) per parameter"


class CheckpointFileError(ValueError):
    """A Lightning checkpoint is unreadable, or holds objects that a weights-only load refuses."""


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O with atomic writes and weights-only reads."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))

    def load_checkpoint(self, path, map_location: Any = lambda storage, loc: storage, weights_only: bool | None = None) -> dict[str, Any]:
        return load_checkpoint_safely(path, map_location)


def load_checkpoint_safely(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """``torch.load(path, weights_only=True)``, with errors that name the file.

    Raises:
        FileNotFoundError: the file does not exist.
        CheckpointFileError: the file is truncated/corrupt, or its pickle holds anything but
            tensors and plain containers (a crafted file that would run code is refused unrun).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {path} does not exist")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointFileError(
            f"checkpoint {path} was refused: it holds objects that torch.load(weights_only=True) does not "
            f"unpickle because they could run code ({refused_global(e)}); only load checkpoints you made yourself, "
            "and never from an untrusted source"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointFileError(f"checkpoint {path} is truncated or not a torch checkpoint ({e})") from None
    if not isinstance(obj, dict) or "state_dict" not in obj:
        raise CheckpointFileError(f"checkpoint {path} is not a Lightning checkpoint (no 'state_dict')")
    return obj


def refused_global(err: Exception) -> str:
    """The one line of torch's many-line ``weights_only`` refusal that names the refused global."""
    lines = [ln.strip() for ln in str(err).splitlines() if "Unsupported" in ln or "GLOBAL" in ln]
    return lines[0].split(" was not an allowed")[0] if lines else type(err).__name__


def mismatch_error(path: str | Path, model: torch.nn.Module) -> CheckpointFileError:
    """What differs between the model in checkpoint ``path`` and ``model``: the first missing,
    unexpected and other-shape keys (torch lists every key of a mismatch, hundreds of lines)."""
    theirs = load_checkpoint_safely(path)["state_dict"]
    ours = model.state_dict()
    missing = [k for k in ours if k not in theirs]
    unexpected = [k for k in theirs if k not in ours]
    shapes = [f"{k}: {tuple(theirs[k].shape)} in the file, {tuple(v.shape)} in the model" for k, v in ours.items()
              if k in theirs and isinstance(theirs[k], torch.Tensor) and theirs[k].shape != v.shape]
    parts = [f"{len(keys)} {what} such as {keys[:3]}" for keys, what in
             ((missing, "key(s) of the model missing from the file"), (unexpected, "unexpected key(s)"),
              (shapes, "tensor(s) of another shape")) if keys]
    return CheckpointFileError(
        f"checkpoint {path} holds another model than the config's {type(model).__name__}: {'; '.join(parts)}; "
        "load it with the config that wrote it, or start a new run (another trainer.default_root_dir)"
    )


# --- the encoder file --------------------------------------------------------------------------


class EncoderFileError(ValueError):
    """An encoder file is missing, corrupt, or does not fit the model."""


def save_encoder(path: str | Path, encoder: nn.Module, arch: str, normalization: dict[str, Any] | None = None,
                 trained: dict[str, Any] | None = None, source: dict[str, Any] | None = None,
                 decoder_state: dict[str, torch.Tensor] | None = None, decoder_meta: dict[str, Any] | None = None) -> Path:
    """Write ``encoder``'s weights (its ``state_dict`` keys as they are) and metadata to ``path``.

    Args:
        arch, normalization, trained, source: the metadata fields above (``source`` default: random init).
        decoder_state: decoder + head tensors under the model's own key names, with ``decoder_meta``
            ``{"type": decoder name, "num_classes": K, "class_names": [...] or None}``.

    Raises:
        ValueError: ``decoder_state`` without ``decoder_meta`` (or the reverse), or decoder keys
            whose first part is also an encoder key's.
    """
    if (decoder_state is None) != (decoder_meta is None):
        raise ValueError("save_encoder takes decoder_state and decoder_meta together, or neither")
    state = {k: v.detach().to("cpu").contiguous() for k, v in encoder.state_dict().items()}
    meta = {"format": FORMAT, "version": VERSION, "arch": arch, "in_channels": int(encoder.conv1.weight.shape[1]),
            "normalization": normalization, "trained": trained or {}, "source": source or {"kind": "random"}}
    if decoder_state is not None:
        modules = sorted({k.split(".", 1)[0] for k in decoder_state})
        clash = sorted(set(modules) & {k.split(".", 1)[0] for k in state})
        if clash:
            raise ValueError(f"decoder keys under {clash} would mix with the encoder's; rename the modules")
        state.update({k: v.detach().to("cpu").contiguous() for k, v in decoder_state.items()})
        meta["decoder"] = {**decoder_meta, "modules": modules}
    return atomic_write(path, lambda tmp: save_file(state, tmp, metadata={"noisyseg": json.dumps(meta)}))


def split_state(
    state: dict[str, torch.Tensor], meta: dict[str, Any]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split an encoder file's tensors into ``(encoder, decoder)`` by ``meta["decoder"]["modules"]``.

    Raises:
        EncoderFileError: when ``meta["decoder"]`` is present but not a dict with a list of modules.
    """
    dec = meta.get("decoder")
    if dec is None:
        return state, {}
    if not isinstance(dec, dict) or not isinstance(dec.get("modules"), list):
        raise EncoderFileError(f"encoder file metadata 'decoder' must be a dict with a 'modules' list, got {dec!r}")
    modules = set(dec["modules"])
    decoder = {k: v for k, v in state.items() if k.split(".", 1)[0] in modules}
    return {k: v for k, v in state.items() if k not in decoder}, decoder


def read_encoder(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read an encoder file.

    Returns:
        ``(state_dict, metadata)``: the encoder's tensors only (a stored decoder is left out, see
        :func:`read_decoder`).

    Raises:
        EncoderFileError: when the file is missing, not safetensors, has no noisyseg metadata, or
            metadata that :func:`metadata_problem` finds wrong (all naming the file).
    """
    state, meta = _read_file(path)
    return split_state(state, meta)[0], meta


def read_decoder(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The decoder + head tensors and their metadata stored in an encoder file, if any.

    Returns:
        ``(decoder_state, meta["decoder"])`` with the model's own key names, or ``None`` for an
        encoder-only file.

    Raises:
        EncoderFileError: as :func:`read_encoder`.
    """
    state, meta = _read_file(path)
    if meta.get("decoder") is None:
        return None
    return split_state(state, meta)[1], meta["decoder"]


def _read_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every tensor of an encoder file and its metadata (checked format)."""
    path = Path(path)
    if not path.is_file():
        raise EncoderFileError(f"encoder file {path} does not exist")
    try:
        state = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise EncoderFileError(f"encoder file {path} is not a readable safetensors file ({e})") from e
    if "noisyseg" not in header:
        raise EncoderFileError(
            f"{path} is a safetensors file without noisyseg metadata; import foreign weights with "
            "`noisyseg.interop.import_state_dict` instead"
        )
    try:
        meta = json.loads(header["noisyseg"])
    except json.JSONDecodeError as e:
        raise EncoderFileError(f"encoder file {path} has corrupt metadata JSON ({e})") from e
    if not isinstance(meta, dict):
        raise EncoderFileError(f"encoder file {path} has invalid metadata: a JSON {type(meta).__name__}, "
                               "expected an object")
    if meta.get("format") != FORMAT:
        raise EncoderFileError(f"{path} has format {meta.get('format')!r}, expected {FORMAT!r}")
    problem = metadata_problem(meta)
    if problem:
        raise EncoderFileError(f"encoder file {path} has invalid metadata: {problem}")
    return state, meta


def metadata_problem(meta: dict[str, Any]) -> str | None:
    """What is wrong with an encoder file's metadata object, or None.

    Checked: ``arch`` a non-empty string; ``in_channels`` a positive integer; ``normalization``
    null or ``{"mean": [...], "std": [...]}`` with ``in_channels`` finite numbers each and every
    std > 0 (a std of 0 would divide the inputs by zero); ``trained`` / ``source`` objects.
    """
    arch, bands = meta.get("arch"), meta.get("in_channels")
    if not isinstance(arch, str) or not arch:
        return f"'arch' is {arch!r}; expected an architecture name such as 'resnet18'"
    if isinstance(bands, bool) or not isinstance(bands, int) or bands < 1:
        return f"'in_channels' is {bands!r}; expected a positive integer"
    norm = meta.get("normalization")
    if norm is not None:
        if not isinstance(norm, dict) or not {"mean", "std"} <= set(norm):
            return f"'normalization' is {norm!r}; expected null or {{'mean': [...], 'std': [...]}}"
        for key in ("mean", "std"):
            v = norm[key]
            if not isinstance(v, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                  and x == x and abs(x) != float("inf") for x in v):
                return f"normalization {key} is {v!r}; expected a list of finite numbers"
            if len(v) != bands:
                return f"normalization {key} has {len(v)} values but in_channels is {bands}"
        if any(x <= 0 for x in norm["std"]):
            return f"normalization std {norm['std']} holds values <= 0; every band's std must be > 0"
    for key in ("trained", "source"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            return f"{key!r} is {meta[key]!r}; expected an object"
    return None


def load_encoder(encoder: nn.Module, path: str | Path, arch: str) -> dict[str, Any]:
    """Load an encoder file into ``encoder`` with strict key matching.

    Args:
        encoder: the model's encoder (any decoder's; all share the key names).
        path: encoder file.
        arch: the model's architecture, checked against the file's.

    Returns:
        The file's metadata.

    Raises:
        EncoderFileError: when architecture, band count or keys do not match (saying both sides).
    """
    state, meta = read_encoder(path)
    bands = int(encoder.conv1.weight.shape[1])
    if meta["arch"] != arch:
        raise EncoderFileError(f"encoder file {path} holds a {meta['arch']} encoder but the model is {arch}")
    if int(meta["in_channels"]) != bands:
        raise EncoderFileError(
            f"encoder file {path} was trained on {meta['in_channels']} input bands but the model takes {bands}; "
            "set the model's in_channels to match, or adapt the weights with `noisyseg.interop.adapt_first_conv`"
        )
    missing, unexpected = set(encoder.state_dict()) - set(state), set(state) - set(encoder.state_dict())
    if missing or unexpected:
        raise EncoderFileError(
            f"encoder file {path} does not match the {arch} encoder: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    for k, v in encoder.state_dict().items():
        if v.shape != state[k].shape:
            raise EncoderFileError(f"encoder file {path}: {k} has shape {tuple(state[k].shape)}, model has {tuple(v.shape)}")
    encoder.load_state_dict(state, strict=True)
    return meta
