"""Supervised segmentation: noisy-label pretraining (Liu et al.) and downstream transfer.

One task serves both ends of the pipeline:

* **pretraining on noisy labels** (Liu et al., arXiv 2402.16164): UNet + ResNet encoder trained
  with CE + Dice on the (noisy) ``mask``; ``encoder_out`` writes the encoder file at the end;
* **transfer**: ``encoder_path`` loads an encoder file into any decoder (UNet, DeepLabV3+, PSPNet,
  FCN); ``freeze_encoder`` keeps the encoder's parameters *and* BatchNorm running statistics
  untouched (the encoder stays in eval mode), otherwise everything is fine-tuned.

Validation and test score against ``clean_mask`` when the batch has one (``eval_on_clean``), from a
confusion matrix accumulated over the whole split.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from noisyseg.checkpoints import atomic_write, load_encoder
from noisyseg.data.sample import CLEAN_MASK, IGNORE_INDEX, IMAGE, MASK
from noisyseg.losses.segmentation import CEDiceLoss, inverse_frequency_weights
from noisyseg.metrics.segmentation import ConfusionMatrix, scores_from_confusion
from noisyseg.models.segmentation import build_segmentation_model
from noisyseg.tasks.base import BaseTask, batch_sources
from noisyseg.transforms.batch import SegmentationAugment


class SegmentationTask(BaseTask):
    """Train a segmentation model; optionally start from, freeze, or export its encoder.

    Args:
        decoder: ``unet``, ``deeplabv3plus``, ``pspnet`` or ``fcn``.
        arch: encoder architecture (``resnet18`` ... ``resnet101``).
        in_channels: input bands.
        num_classes: output classes (may differ from the pretraining classes).
        encoder_path: encoder file to start from (``None``: random initialisation).
        freeze_encoder: train the decoder only; encoder parameters and BN statistics untouched.
        ce_weight: weight of cross-entropy.
        dice_weight: weight of Dice (Liu et al.: equal to CE).
        class_weights: per-class CE weights, ``"inverse_frequency"`` (counted on the training
            masks at the start of fit) or ``None``.
        class_names: names used in the per-class metric keys.
        ignore_index: label that no loss or metric counts.
        augment: D4 + band jitter on training batches.
        eval_on_clean: score validation/test against ``clean_mask`` when present.
        method: recorded in the encoder file (``supervised`` for noisy-label pretraining).
        **kwargs: :class:`~noisyseg.tasks.base.BaseTask` options (lr, optimizer, encoder_out, ...).

    Raises:
        ValueError: for unknown names or bad counts; EncoderFileError for a mismatching file.
    """

    def __init__(
        self,
        decoder: str = "unet",
        arch: str = "resnet18",
        in_channels: int = 3,
        num_classes: int = 2,
        encoder_path: str | None = None,
        freeze_encoder: bool = False,
        ce_weight: float = 1.0,
        dice_weight: float = 1.0,
        class_weights: list[float] | str | None = None,
        class_names: list[str] | None = None,
        ignore_index: int = IGNORE_INDEX,
        augment: bool = True,
        eval_on_clean: bool = True,
        method: str = "supervised",
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        optimizer: str = "adamw",
        warmup_fraction: float = 0.05,
        channels_last: bool = True,
        encoder_out: str | None = None,
    ) -> None:
        super().__init__(arch, lr, weight_decay, optimizer, warmup_fraction, channels_last, encoder_out, method)
        self.save_hyperparameters()
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class_names for num_classes={num_classes}")
        if isinstance(class_weights, str) and class_weights != "inverse_frequency":
            raise ValueError(f"class_weights={class_weights!r}; use a list, 'inverse_frequency' or null")
        self.model = build_segmentation_model(decoder, arch, in_channels, num_classes)
        self.encoder = self.model.encoder
        self.encoder_source: dict[str, Any] = {"kind": "random"}
        if encoder_path:
            meta = load_encoder(self.encoder, encoder_path, arch)
            self.encoder_source = {"kind": "noisyseg", "path": str(encoder_path), "trained": meta.get("trained")}
        self.freeze_encoder = freeze_encoder
        if freeze_encoder:
            self.encoder.requires_grad_(False)
        weights = class_weights if isinstance(class_weights, list) else None
        self.loss_fn = CEDiceLoss(ce_weight, dice_weight, weights, ignore_index)
        self.class_names = class_names or [str(k) for k in range(num_classes)]
        self.ignore_index, self.eval_on_clean = ignore_index, eval_on_clean
        self.augment = SegmentationAugment() if augment else None
        self.val_cm = ConfusionMatrix(num_classes, ignore_index)
        self.test_cm = ConfusionMatrix(num_classes, ignore_index)
        self.test_scores: dict[str, float] = {}
        self.val_scores: dict[str, float] = {}

    def train(self, mode: bool = True) -> SegmentationTask:
        """Keep a frozen encoder in eval mode so BatchNorm running statistics never update."""
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)  # B x K x H x W logits

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.hparams.class_weights == "inverse_frequency":
            self.loss_fn.class_weights = inverse_frequency_weights(self._count_classes()).to(self.device)

    def _count_classes(self) -> torch.Tensor:
        ds = self.trainer.datamodule.train_set
        counts = torch.zeros(self.hparams.num_classes, dtype=torch.long)
        for i in range(len(ds)):
            m = ds[i][MASK]
            m = m[m != self.ignore_index]
            counts += torch.bincount(m, minlength=self.hparams.num_classes)[: self.hparams.num_classes]
        return counts

    def on_before_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        batch = super().on_before_batch_transfer(batch, dataloader_idx)  # pixels and band count
        # a label >= num_classes would end in an index assert deep inside cross_entropy (on CUDA a
        # device-side assert that kills the process): check on the CPU copy, before the transfer
        k = self.hparams.num_classes
        for key in (MASK, CLEAN_MASK):
            y = batch.get(key) if isinstance(batch, dict) else None
            if not isinstance(y, torch.Tensor):
                continue
            if y.is_floating_point() or y.is_complex():
                raise ValueError(f"batch {key!r} has dtype {y.dtype}; masks must hold integer class ids "
                                 f"(data from {batch_sources(batch)})")
            bad = ((y < 0) | (y >= k)) & (y != self.ignore_index)  # B x H x W
            if bad.any():
                rows = bad.flatten(1).any(1).nonzero().flatten().tolist()
                values = sorted(set(y[bad].unique()[:5].tolist()))
                raise ValueError(f"batch {key!r} holds class id(s) {values} but num_classes={k}: valid labels are "
                                 f"0..{k - 1} and ignore_index={self.ignore_index}; data from "
                                 f"{batch_sources(batch, rows)} (remap the mask values in the dataset, or raise "
                                 f"num_classes)")
        return batch

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        # Lightning restores module modes itself (not through train()), so re-assert it per batch
        if self.freeze_encoder:
            self.encoder.eval()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x, y = batch[IMAGE], batch[MASK]  # B x C x H x W, B x H x W
        if self.augment is not None:
            x, y = self.augment(x, y)
        loss = self.check_finite(self.loss_fn(self(x), y))
        self.log("train/loss", loss, prog_bar=True, batch_size=x.shape[0])
        return loss

    def _target(self, batch: dict) -> torch.Tensor:
        return batch[CLEAN_MASK] if self.eval_on_clean and CLEAN_MASK in batch else batch[MASK]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self(batch[IMAGE])
        target = self._target(batch)
        self.log("val/loss", self.loss_fn(logits, target), batch_size=target.shape[0], sync_dist=True)
        self.val_cm.update(logits.argmax(1), target)

    def on_validation_epoch_end(self) -> None:
        self.val_scores = scores_from_confusion(self.val_cm.compute(), self.class_names)
        self.val_cm.reset()
        # the scores come from the confusion matrix already summed over ranks: identical everywhere
        self.log("val/miou", self.val_scores["miou"], prog_bar=True, sync_dist=True)
        self.log_dict({f"val/{k}": v for k, v in self.val_scores.items() if k != "miou"}, sync_dist=True)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.test_cm.update(self(batch[IMAGE]).argmax(1), self._target(batch))

    def on_test_epoch_end(self) -> None:
        self.test_scores = scores_from_confusion(self.test_cm.compute(), self.class_names)
        self.test_cm.reset()
        self.log_dict({f"test/{k}": v for k, v in self.test_scores.items()}, sync_dist=True)
        if self.trainer.is_global_zero:
            # the CLI's `test` returns nothing to a caller: keep the split's scores on disk
            text = json.dumps(self.test_scores, indent=2)
            atomic_write(Path(self.trainer.default_root_dir) / "test_metrics.json", lambda t: Path(t).write_text(text))

    def predict_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self(batch[IMAGE]).argmax(1)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]
