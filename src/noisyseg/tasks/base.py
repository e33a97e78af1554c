"""What every noisyseg Lightning task shares: the fast path, the optimiser, health checks, export.

* channels-last memory format for model and batches (oneDNN's fast bf16 convolutions want it);
* the acceleration switch: a Trainer without an :class:`~noisyseg.runtime.Acceleration` callback gets
  ``Acceleration()`` (matmul small-map convolutions on bf16 CPU runs, malloc settings);
* AdamW or SGD; the learning rate follows one of :data:`LR_SCHEDULES` (default linear warm-up
  and cosine decay), stepped per optimiser step;
* a NaN/Inf loss stops the run with a message naming the step (the last checkpoint stays good);
* every batch is checked on the CPU before it moves to the device (no device sync): NaN/Inf
  pixels and a band count that differs from the encoder's raise ValueError naming the source;
* at the end of ``fit`` the encoder is written to ``encoder_out`` as an encoder file; that path is
  checked when ``fit`` starts (a folder, unwritable, or too little free space fails then).
"""

from __future__ import annotations

import math
import os
from typing import Any

import lightning as L
import torch
from torch import nn

from noisyseg.data.loading import IMAGE, IMAGE2, META
from noisyseg.distributed import is_dist
from noisyseg.runfiles import check_output_file, remove_stale_temp, save_encoder
from noisyseg.runtime import Acceleration


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
            the data module's ``normalization`` (:data:`noisyseg.tasks.links.DATA_LINKS`).

    Raises:
        ValueError: unknown ``optimizer`` or ``lr_schedule``, ``lr <= 0``, ``warmup_fraction``
            outside [0, 1].
    """

    def __init__(
        self,
        arch: str = "resnet18",
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        optimizer: str = "adamw",
        warmup_fraction: float = 0.05,
        channels_last: bool = True,
        encoder_out: str | None = None,
        method: str = "unknown",
        lr_schedule: str = "warmup_cosine",
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
        self.encoder: nn.Module  # set by subclasses

    # ----------------------------------------------------------------------------- fast path
    def setup(self, stage: str) -> None:
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    def configure_callbacks(self) -> list[L.Callback]:
        # the acceleration switch for every way of running a task; a Trainer's own one decides
        if any(isinstance(cb, Acceleration) for cb in self.trainer.callbacks):
            return []
        return [Acceleration()]

    def on_fit_start(self) -> None:
        if self.encoder_out:
            # fail now, not after the training (on_fit_end writes it); on every rank, so all stop together
            need = sum(t.numel() * t.element_size() for t in self.encoder.state_dict().values())
            check_output_file(self.encoder_out, "encoder_out", need)
            if self.trainer.is_global_zero:  # its one writer: a kill's leftover temp file goes
                out = os.path.abspath(self.encoder_out)
                remove_stale_temp(os.path.dirname(out), [os.path.basename(out)])

    def on_before_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        # bad input is caught here, on the CPU copy, with a message naming its source: later it
        # would be a NaN loss or a shape error from deep inside the first convolution
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
        """Stop the run on a NaN/Inf loss, naming the step and what the last checkpoint holds.

        Lightning writes no checkpoint on an exception, so the newest one is from before the bad
        step; it is read (:meth:`last_checkpoint_note`) rather than assumed good, since BatchNorm
        running statistics can overflow steps before the loss does.
        """
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
        enc = self.encoder
        source = getattr(self, "encoder_source", None)
        save_encoder(path, enc, self.arch, self.normalization(), self.training_summary(), source)

    def on_train_end(self) -> None:
        # DDP syncs parameters, not BatchNorm running statistics: each rank updated its own. Make
        # every rank hold rank 0's buffers (those the encoder file records) before any evaluation.
        if is_dist():
            for buf in self.buffers():
                if buf.is_floating_point():
                    torch.distributed.broadcast(buf, src=0)

    def on_fit_end(self) -> None:
        if self.encoder_out and self.trainer.is_global_zero:
            self.export_encoder(self.encoder_out)
