"""Lightning callbacks and plugins with noisyseg's defaults.

* :class:`RunCheckpoint` — checkpoints in a fixed folder per run directory, ``last.ckpt`` kept,
  also every few minutes of training; the folder is checked and cleaned at the start of ``fit``.
* :class:`SafeCheckpointIO` — Lightning checkpoints written atomically (temp file in the same
  folder + ``os.replace``) and read with ``torch.load(weights_only=True)`` only.
"""

from __future__ import annotations

import logging
import pickle
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from noisyseg.checkpoints import refused_global
from noisyseg.runfiles import atomic_write, check_output_folder, remove_stale_temp

log = logging.getLogger(__name__)

CHECKPOINT_MOMENTS = {"adamw": 2, "sgd": 1}
"""Optimiser state tensors per parameter that a checkpoint holds (AdamW: two moments; SGD: the
momentum buffer), for the free-space estimate of a first checkpoint."""


class RunCheckpoint(ModelCheckpoint):
    """Checkpoints in ``<default_root_dir>/checkpoints`` with ``last.ckpt`` always kept.

    Lightning's default puts them under a fresh ``lightning_logs/version_N`` each run, so the same
    command could never find its own last checkpoint again; a fixed folder per run directory is
    what makes ``noisyseg fit --config X --resume`` continue a killed run. Checkpoints are written
    through :class:`SafeCheckpointIO` (temp file + rename), so a kill mid-write leaves the
    previous one intact.

    ``last.ckpt`` is also written every ``save_every_minutes`` of training (default 10), so a
    run killed inside its first, long epoch still resumes. At the start of ``fit`` the folder is
    checked (writable, free space for one more checkpoint: the size of the existing
    ``last.ckpt``, else the weights plus the optimiser's moments) and the temp files of
    checkpoint writes a kill interrupted are deleted.

    Args:
        every_n_train_steps: also checkpoint every N optimiser steps (long epochs on real data).
        save_every_minutes: also checkpoint after this many minutes of training since the last
            time-triggered save (``None``: not on the clock; ignored when Lightning's own
            ``train_time_interval`` is given).
        save_last: keep ``last.ckpt`` (what ``--resume`` reads).
        save_top_k: best checkpoints to keep by ``monitor`` (default: 1 with a monitor, else 0).
        monitor: metric to rank checkpoints by (``None``: keep only ``last.ckpt``).
        **kwargs: other :class:`~lightning.pytorch.callbacks.ModelCheckpoint` options.
    """

    # the defaults are spelled out in the signature (not set with kwargs.setdefault) because
    # jsonargparse passes every ModelCheckpoint default explicitly when the callback is given in
    # YAML (`trainer.callbacks`), which silently turned save_last off and save_top_k to 1
    def __init__(
        self,
        every_n_train_steps: int | None = None,
        save_last: bool | None = True,
        save_top_k: int | None = None,
        monitor: str | None = None,
        save_every_minutes: float | None = 10.0,
        **kwargs,
    ) -> None:
        if save_top_k is None:
            save_top_k = 0 if monitor is None else 1
        if save_every_minutes is not None and not save_every_minutes >= 0:
            raise ValueError(f"save_every_minutes={save_every_minutes} must be >= 0 (or null: not on the clock)")
        super().__init__(
            every_n_train_steps=every_n_train_steps, save_last=save_last, save_top_k=save_top_k,
            monitor=monitor, **kwargs,
        )
        # Lightning takes train_time_interval only instead of the step and epoch triggers; set after
        # its check, its on_train_batch_end saves on whichever comes first
        if self._train_time_interval is None and save_every_minutes is not None:
            self._train_time_interval = timedelta(minutes=save_every_minutes)
            self._clock_only = True
        else:
            self._clock_only = False

    @property
    def state_key(self) -> str:
        # the clock trigger leaves the key as it was without it, so checkpoints written before it
        # existed restore this callback's state
        interval = None if self._clock_only else self._train_time_interval
        return self._generate_state_key(monitor=self.monitor, mode=self.mode, every_n_train_steps=self._every_n_train_steps,
                                        every_n_epochs=self._every_n_epochs, train_time_interval=interval)

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.dirpath is None:
            self.dirpath = str(Path(trainer.default_root_dir) / "checkpoints")
        super().setup(trainer, pl_module, stage)
        if stage != "fit":
            return
        if trainer.is_global_zero:  # the one writer of this folder
            removed = remove_stale_temp(self.dirpath)
            if removed:
                log.warning("removed %d temp file(s) of interrupted checkpoint writes: %s",
                            len(removed), [p.name for p in removed])
        # on every rank, so that all stop together (one rank raising alone leaves the others waiting)
        last = Path(self.dirpath) / "last.ckpt"
        need, note = (last.stat().st_size, f"the size of {last.name}") if last.is_file() \
            else checkpoint_estimate(pl_module)
        check_output_folder(self.dirpath, f"checkpoint folder {self.dirpath}", need, note)


def checkpoint_estimate(pl_module) -> tuple[int, str]:
    """Bytes a first checkpoint of ``pl_module`` takes, roughly, and how that was reckoned:
    parameters x (1 + optimiser moments) + buffers."""
    moments = CHECKPOINT_MOMENTS.get(getattr(pl_module, "optimizer_name", "adamw"), 2)
    params = sum(p.numel() * p.element_size() for p in pl_module.parameters())
    buffers = sum(b.numel() * b.element_size() for b in pl_module.buffers())
    return params * (1 + moments) + buffers, f"weights and {moments} optimiser moment(s) per parameter"


class CheckpointFileError(ValueError):
    """A Lightning checkpoint is unreadable, or holds objects that a weights-only load refuses."""


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O, hardened: atomic writes and weights-only reads.

    * **Reads** always use ``torch.load(weights_only=True)`` (passed explicitly, so the
      ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` environment variable cannot turn it off): a crafted
      ``last.ckpt`` whose pickle would import ``os.system`` or ``exec`` is refused before anything
      runs, with :class:`CheckpointFileError` naming the file. noisyseg's own checkpoints hold only
      tensors and plain values, so they load. (Lightning 2.6 passes ``weights_only=None``, which
      torch >= 2.6 also treats as ``True``, but an environment variable can flip that default.)
    * **Writes** go to a temp file in the checkpoint's own folder, then ``os.replace``. Lightning's
      own ``_atomic_save`` goes through an fsspec transaction whose temp file lives in the system
      temp folder and is ``shutil.move``d into place: a copy, not a rename, when that folder is on
      another filesystem, so a kill mid-copy could leave a truncated ``last.ckpt``.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))

    def load_checkpoint(self, path, map_location: Any = lambda storage, loc: storage, weights_only: bool | None = None) -> dict[str, Any]:
        return load_checkpoint_safely(path, map_location)


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
        first = refused_global(e)  # torch's message is many lines; keep the one naming the global
        raise CheckpointFileError(
            f"checkpoint {path} was refused: it holds objects that torch.load(weights_only=True) does not "
            f"unpickle because they could run code ({first}); only load checkpoints you made yourself, "
            "and never from an untrusted source"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointFileError(f"checkpoint {path} is truncated or not a torch checkpoint ({e})") from None
    if not isinstance(obj, dict) or "state_dict" not in obj:
        raise CheckpointFileError(f"checkpoint {path} is not a Lightning checkpoint (no 'state_dict')")
    return obj
