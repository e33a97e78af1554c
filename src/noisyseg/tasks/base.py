"""What every noisyseg Lightning task shares: the fast path, the optimiser, data links, health, export.

* channels-last memory format for model and batches (oneDNN's fast bf16 convolutions want it);
* the acceleration switch: a Trainer without an :class:`~noisyseg.runtime.Acceleration` callback gets
  ``Acceleration()`` (matmul small-map convolutions on bf16 CPU runs, malloc settings);
* AdamW or SGD; the learning rate follows one of :data:`LR_SCHEDULES` (default linear warm-up
  and cosine decay), stepped per optimiser step;
* a NaN/Inf loss stops the run (:meth:`BaseTask.check_finite`) with a message naming the step and
  what the newest checkpoint holds: Lightning writes no checkpoint on an exception, so the newest
  one is from before the bad step; it is read (:meth:`BaseTask.last_checkpoint_note`) rather than
  assumed good, since BatchNorm running statistics can overflow steps before the loss does;
* every batch is checked on the CPU before it moves to the device (no device sync): NaN/Inf
  pixels and a band count that differs from the encoder's raise ValueError naming the source
  (later they would be a NaN loss or a shape error from deep inside the first convolution);
* DDP syncs parameters, not BatchNorm running statistics: each rank updated its own, so when
  training ends every rank takes rank 0's floating buffers (those the encoder file records)
  before any evaluation;
* at the end of ``fit`` the encoder is written to ``encoder_out`` as an encoder file; that path is
  checked when ``fit`` starts (a folder, unwritable, or too little free space fails then).

**Data links.** A task does not read its trainer's data module: what it needs to know about the
data (the inputs' normalisation, each split's for a segmentation task, MoCo's per-process batch
and training-set size) are constructor arguments. ``noisyseg fit`` fills them from the ``data:``
section (:func:`link_data_arguments`: LightningCLI's ``link_arguments``, applied on instantiation;
jsonargparse skips a link whose target the chosen task does not take, so one table,
:data:`DATA_LINKS`, serves every task); code that builds a task and a data module itself passes
:func:`data_links` to the task.

**Representation health** (:class:`RepresentationHealth`, a mixin of the self-supervised tasks:
MoCo, SimCLR, DINO, dense). Silent collapse (every image mapped to nearly the same embedding) is
the classic failure of self-supervised pretraining; the loss can look fine while it happens. Two
cheap statistics on a batch of embeddings ``[N, D]``, both from the literature, are logged, and a
warning is raised once they show collapse (:func:`is_collapsed`):

* :func:`embedding_std` — mean per-dimension std of L2-normalised embeddings times ``sqrt(D)``
  (SimSiam, Chen & He 2021, §4.1: ``1/sqrt(D)`` for well-spread embeddings, 0 when collapsed);
  ~1 healthy, -> 0 collapsed.
* :func:`effective_rank` — ``exp`` of the entropy of the normalised singular values (Roy & Vetterli
  2007; RankMe, Garrido et al. 2023): 1 for a rank-one (collapsed) batch, up to ``min(N, D)``.
"""

from __future__ import annotations

import inspect
import math
import os
from typing import Any, Callable

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from noisyseg.data.loading import IMAGE, IMAGE2, META
from noisyseg.runfiles import check_output_file, remove_stale_temp, save_encoder
from noisyseg.runtime import Acceleration, is_dist

# ----------------------------------------------------------------------------- data links


def _normalization(data: Any) -> dict[str, Any] | None:
    return getattr(data, "normalization", None)  # the training set's per-band mean/std


def _batch_size(data: Any) -> int | None:
    return getattr(data, "batch_size", None)  # per process


def _train_size(data: Any) -> int | None:
    try:
        return len(data.train_set)
    except (AttributeError, TypeError):  # no training set, or an iterable dataset without a length
        return None


def _split_normalization(data: Any) -> dict[str, dict[str, Any] | None]:
    sets = {split: getattr(data, f"{split}_set", None) for split in ("train", "val", "test")}
    return {split: getattr(ds, "normalization", None) for split, ds in sets.items() if ds is not None}


DATA_LINKS: dict[str, Callable[[Any], Any]] = {
    "input_normalization": _normalization,
    "split_normalization": _split_normalization,  # {split: normalisation or None} of each split held
    "batch_size": _batch_size,
    "train_size": _train_size,
}
"""Task argument -> function of the data module that gives its value."""


def data_links(task_class: type, data: Any) -> dict[str, Any]:
    """The :data:`DATA_LINKS` arguments that ``task_class`` takes, computed from ``data``.

    Args:
        task_class: a task class (its arguments, with those its ``**kwargs`` pass to its bases,
            decide which links apply).
        data: the data module the task will train on.

    Returns:
        ``{argument: value}``, e.g. ``{"input_normalization": {...}}`` for a segmentation task.
    """
    return {name: link(data) for name, link in DATA_LINKS.items() if name in _arguments(task_class)}


def _arguments(cls: type) -> set[str]:
    """Names ``cls(...)`` takes: its ``__init__``'s, and its bases' while ``**kwargs`` passes them on."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names |= {p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return names


def link_data_arguments(parser: Any, data_key: str = "data", model_key: str = "model") -> None:
    """Add :data:`DATA_LINKS` to a LightningCLI parser: ``data`` -> ``model.init_args.<argument>``."""
    for name, link in DATA_LINKS.items():
        parser.link_arguments(data_key, f"{model_key}.init_args.{name}", compute_fn=link, apply_on="instantiate")


# ----------------------------------------------------------------------------- the task


def batch_sources(batch: dict, indices: list[int] | None = None, limit: int = 3) -> str:
    """Where a collated batch came from, for error messages: its samples' ``meta`` sources."""
    metas = batch.get(META) if isinstance(batch, dict) else None
    if not isinstance(metas, list) or not metas:
        return "a dataset without meta['source']"
    picked = [metas[i] for i in (indices if indices is not None else range(len(metas))) if i < len(metas)]
    names = [str(m.get("source", m.get("id", "?"))) if isinstance(m, dict) else "?" for m in picked]
    names = list(dict.fromkeys(names))
    return ", ".join(names[:limit]) + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor at ``step``: linear warm-up to 1, then cosine to 0 (pure function)."""
    if total <= 0:
        return 1.0
    if step < warmup:
        return (step + 1) / max(1, warmup)
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1 + math.cos(math.pi * t))


def warmup_constant(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor at ``step``: linear warm-up to 1 over ``warmup`` steps, then 1 (pure function)."""
    return (step + 1) / warmup if step < warmup else 1.0


def constant(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor 1 at every step; ``warmup`` is ignored (use ``warmup_constant`` for one)."""
    return 1.0


LR_SCHEDULES = {"constant": constant, "warmup_constant": warmup_constant, "warmup_cosine": warmup_cosine}
"""Schedule name -> factor ``f(step, total, warmup)``; the optimiser's lr at step ``s`` is ``lr * f(s, ...)``."""


def _fusable(params: list) -> bool:
    """Whether torch's fused SGD/AdamW kernels take these parameters (floating, on CPU or CUDA)."""
    tensors = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
    return bool(tensors) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in tensors)


class BaseTask(L.LightningModule):
    """Shared plumbing; subclasses build ``self.encoder`` (and heads) and define the steps.

    Args:
        arch: encoder architecture (recorded in the encoder file).
        lr: peak learning rate.
        weight_decay: decoupled weight decay (AdamW) or L2 (SGD).
        optimizer: ``adamw`` or ``sgd`` (momentum 0.9, as MoCo).
        warmup_fraction: share of the steps spent warming up (``warmup_*`` schedules).
        channels_last: use channels-last tensors (fast on oneDNN / tensor cores).
        encoder_out: where to write the encoder file at the end of ``fit`` (``None``: don't).
        method: name of the pretraining method, recorded in the encoder file.
        lr_schedule: one of :data:`LR_SCHEDULES`: ``"warmup_cosine"`` (linear warm-up over
            ``warmup_fraction`` of the steps, then cosine to 0), ``"warmup_constant"`` (the same
            warm-up, then constant) or ``"constant"`` (``lr`` at every step, no warm-up whatever
            ``warmup_fraction`` says).
        input_normalization: ``{"mean": [C], "std": [C]}`` the training data was normalised with,
            recorded in the encoder file (``None``: none recorded). ``noisyseg fit`` links it from
            the data module's ``normalization`` (:data:`DATA_LINKS`).

    Raises:
        ValueError: unknown ``optimizer`` or ``lr_schedule``, ``lr <= 0``, ``warmup_fraction``
            outside [0, 1].
    """

    encoder: nn.Module  # set by subclasses

    def __init__(
        self, arch: str = "resnet18", lr: float = 1e-3, weight_decay: float = 1e-4, optimizer: str = "adamw",
        warmup_fraction: float = 0.05, channels_last: bool = True, encoder_out: str | None = None,
        method: str = "unknown", lr_schedule: str = "warmup_cosine",
        input_normalization: dict[str, list[float]] | None = None,
    ) -> None:
        super().__init__()
        if optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer={optimizer!r}; valid: 'adamw', 'sgd'")
        if lr <= 0:
            raise ValueError(f"lr={lr} must be > 0")
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule={lr_schedule!r}; valid: {sorted(LR_SCHEDULES)}")
        if not 0.0 <= warmup_fraction <= 1.0:
            raise ValueError(f"warmup_fraction={warmup_fraction} is outside [0, 1]")
        self.arch, self.lr, self.weight_decay, self.optimizer_name = arch, lr, weight_decay, optimizer
        self.warmup_fraction, self.channels_last, self.lr_schedule = warmup_fraction, channels_last, lr_schedule
        self.encoder_out, self.method = encoder_out, method
        self.input_normalization = input_normalization

    # ----------------------------------------------------------------------------- fast path
    def setup(self, stage: str) -> None:
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    def configure_callbacks(self) -> list[L.Callback]:  # a Trainer's own acceleration switch decides
        return [] if any(isinstance(cb, Acceleration) for cb in self.trainer.callbacks) else [Acceleration()]

    def on_fit_start(self) -> None:
        if self.encoder_out:
            # fail now, not after the training (on_fit_end writes it); on every rank, so all stop together
            need = sum(t.numel() * t.element_size() for t in self.encoder.state_dict().values())
            check_output_file(self.encoder_out, "encoder_out", need)
            if self.trainer.is_global_zero:  # its one writer: a kill's leftover temp file goes
                out = os.path.abspath(self.encoder_out)
                remove_stale_temp(os.path.dirname(out), [os.path.basename(out)])

    def on_before_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        conv1 = getattr(getattr(self, "encoder", None), "conv1", None)
        bands = int(conv1.weight.shape[1]) if conv1 is not None else None
        for key in (IMAGE, IMAGE2):
            x = batch.get(key) if isinstance(batch, dict) else None
            if not isinstance(x, torch.Tensor):
                continue
            if x.ndim != 4 or not x.is_floating_point():
                raise ValueError(f"batch {key!r} must be a float [B, C, H, W] tensor, got {x.dtype} "
                                 f"{tuple(x.shape)} from {batch_sources(batch)}")
            if bands is not None and x.shape[1] != bands:
                raise ValueError(f"batch {key!r} has {x.shape[1]} bands but the model's encoder takes {bands} "
                                 f"(set the model's in_channels to {x.shape[1]}, or select bands in the dataset); "
                                 f"data from {batch_sources(batch)}")
            if not torch.isfinite(x).all():  # B x C x H x W, one pass on the CPU
                bad = (~torch.isfinite(x)).flatten(1).any(1).nonzero().flatten().tolist()  # sample indices
                raise ValueError(f"batch {key!r} holds NaN/Inf pixels in sample(s) {bad} from "
                                 f"{batch_sources(batch, bad)}; fix the data, or mark such pixels as no-data")
        return batch

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        if self.channels_last:
            for key in (IMAGE, IMAGE2):
                if key in batch:
                    batch[key] = batch[key].contiguous(memory_format=torch.channels_last)
        return batch

    # ----------------------------------------------------------------------------- optimiser
    def trainable_parameters(self) -> list[dict[str, Any]] | list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizers(self):
        params = self.trainable_parameters()
        # one fused kernel for the whole update where torch has it (a faster optimiser step on the CPU)
        fused = {"fused": True} if _fusable(params) else {}
        if self.optimizer_name == "sgd":
            opt = torch.optim.SGD(params, lr=self.lr, momentum=0.9, weight_decay=self.weight_decay, **fused)
        else:
            opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay, **fused)
        total = int(self.trainer.estimated_stepping_batches) if self._trainer is not None else 0
        warmup = int(self.warmup_fraction * total)
        factor = LR_SCHEDULES[self.lr_schedule]
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: factor(s, total, warmup))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ----------------------------------------------------------------------------- health
    def check_finite(self, loss: torch.Tensor, name: str = "loss") -> torch.Tensor:
        """``loss``; a NaN/Inf one stops the run, naming the step and what the last checkpoint holds."""
        if not torch.isfinite(loss.detach()).all():
            raise FloatingPointError(
                f"{name} became {loss.item()} at global step {self.global_step} (epoch {self.current_epoch}); "
                f"the run stopped and {self.last_checkpoint_note()}. Lower the learning "
                "rate, check the input for NaN pixels, or force fp32 with --trainer.precision 32-true"
            )
        return loss

    def last_checkpoint_note(self) -> str:
        """Whether the newest checkpoint of this run (the last one saved, or the one resumed from) is all finite."""
        trainer = self._trainer
        paths = {trainer.ckpt_path} if trainer is not None and isinstance(trainer.ckpt_path, str) else set()
        for cb in getattr(trainer, "checkpoint_callbacks", []) if trainer is not None else []:
            paths.add(getattr(cb, "last_model_path", "") or "")  # saved by this process
        existing = [p for p in paths if p and os.path.isfile(p)]
        if not existing:
            return "no checkpoint of this run was saved before it"
        path = max(existing, key=os.path.getmtime)
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            state = ckpt["state_dict"]
        except Exception as e:  # noqa: BLE001 - any unreadable file is reported, not raised over the NaN
            return f"the last saved checkpoint {path} cannot be read ({type(e).__name__}), so it is not a good one"
        bad = [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]
        step = ckpt.get("global_step")
        if bad:
            return (f"the last saved checkpoint {path} (global step {step}) is NOT a good one: {len(bad)} tensor(s) "
                    f"hold NaN/Inf, such as {bad[:3]}; start from an earlier checkpoint or from scratch")
        return (f"the last saved checkpoint is the last good one ({path}, global step {step}: weights and "
                "BatchNorm statistics all finite)")

    # ----------------------------------------------------------------------------- export
    def training_summary(self) -> dict[str, Any]:
        """What the encoder file records about how the weights were trained."""
        trainer = self._trainer
        return {
            "method": self.method,
            "task": type(self).__name__,
            "epochs": int(trainer.current_epoch) if trainer else 0,
            "steps": int(trainer.global_step) if trainer else 0,
            "hparams": {k: v for k, v in self.hparams.items() if isinstance(v, (int, float, str, bool, type(None)))},
        }

    def normalization(self) -> dict[str, Any] | None:
        """The inputs' normalisation, recorded in the encoder file: ``input_normalization``."""
        return self.input_normalization

    def export_encoder(self, path: str) -> None:
        """Write ``self.encoder`` as an encoder file (contiguous, standard memory format)."""
        source = getattr(self, "encoder_source", None)
        save_encoder(path, self.encoder, self.arch, self.normalization(), self.training_summary(), source)

    def on_train_end(self) -> None:
        if is_dist():  # every rank takes rank 0's floating buffers (module docstring)
            for buf in self.buffers():
                if buf.is_floating_point():
                    torch.distributed.broadcast(buf, src=0)

    def on_fit_end(self) -> None:
        if self.encoder_out and self.trainer.is_global_zero:
            self.export_encoder(self.encoder_out)


# ----------------------------------------------------------------------------- representation health


def embedding_std(z: torch.Tensor) -> float:
    """``sqrt(D) * mean_d std_n(normalize(z))`` for ``z [N, D]``: ~1 spread out, 0 collapsed."""
    zn = F.normalize(z.detach().float(), dim=1)  # N x D on the unit sphere
    return float(zn.std(dim=0).mean() * zn.shape[1] ** 0.5)


def effective_rank(z: torch.Tensor, eps: float = 1e-7) -> float:
    """``exp(H(p))`` with ``p`` the normalised singular values of the centred ``z [N, D]``."""
    zc = z.detach().float()
    zc = zc - zc.mean(0, keepdim=True)
    s = torch.linalg.svdvals(zc)  # min(N, D)
    p = s / s.sum().clamp_min(eps)
    return float(torch.exp(-(p * torch.log(p + eps)).sum()))


def is_collapsed(std: float, rank: float, std_min: float = 0.1, rank_min: float = 1.5) -> bool:
    """The thresholds the training tasks warn at (both documented in the README)."""
    return std < std_min or rank < rank_min


class RepresentationHealth:
    """Mixin for a LightningModule that trains embeddings: :meth:`log_health`."""

    global_step: int  # the LightningModule's
    log_dict: Callable[..., None]

    def log_health(self, z: torch.Tensor, every: int = 20) -> None:
        """Log collapse statistics of embeddings ``z [N, D]`` every ``every`` steps; warn on collapse."""
        if self.global_step % every or z.shape[0] < 2:
            return
        std, rank = embedding_std(z), effective_rank(z)
        self.log_dict({"health/embedding_std": std, "health/effective_rank": rank}, batch_size=z.shape[0])
        if is_collapsed(std, rank) and self.global_step > 0:
            rank_zero_warn(
                f"representation collapse at step {self.global_step}: normalised embedding std x sqrt(D) = "
                f"{std:.3f} (healthy ~1), effective rank = {rank:.2f} of {min(z.shape)}; lower the learning rate "
                "or check that the two views differ"
            )
