"""Supervised dense contrastive pretraining (Zhao et al., ICCV 2021), within- or cross-image.

As used by Gerard & Sullivan for noisy positive pairs: the encoder's last feature map (before any
global pooling) is resized to S x S (8 for VTS, 16 for xBD), projected by two 1x1 convolutions
(256), and pixels with the same (downsampled, nearest) label attract while others repel, at
temperature 0.07. The two views are ``image`` and its partner ``image2`` with their labels
``mask`` and ``mask2`` (noise-free for VTS pairs, as in the paper); a dataset without a partner
gives two augmentations of ``image``. Geometric augmentation moves each label map with its view.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from noisyseg.data.loading import IGNORE_INDEX, IMAGE, IMAGE2, MASK, MASK2
from noisyseg.losses.dense import CrossImageLoss, WithinImageLoss, downsample_labels
from noisyseg.models.networks import DenseProjection, build_encoder, last_features
from noisyseg.tasks.base import DATA_LINKS, BaseTask, RepresentationHealth
from noisyseg.transforms.batch import ContrastiveView

DENSE_LOSSES = {"within": WithinImageLoss, "cross": CrossImageLoss}


class DenseContrastTask(RepresentationHealth, BaseTask):
    """Pixel-level supervised contrastive pretraining.

    The encoder, the projection head, the loss and the augmentation are arguments (``class_path``
    / ``init_args`` in YAML); each left ``None`` is built from the options below.

    Args:
        arch: ResNet architecture (of the default encoder; recorded in the encoder file).
        in_channels: input bands of the default encoder.
        mode: ``within`` (pairs of pixels inside one image's two views) or ``cross`` (also pixels
            of another image of the batch that is not the positive partner).
        feature_size: S, side of the resized feature map.
        proj_dim: projection channels (paper: 256).
        temperature: 0.07.
        binarize: labels > 0 become 1 (background vs building, as the paper does for xBD).
        ignore_index: label that is never an anchor nor a contrast.
        crop_scale: random-resized-crop area range of the views.
        encoder: the encoder (stride-ordered feature maps, ``out_channels``); ``None``:
            ``build_encoder(arch, in_channels)``.
        projection_head: ``[B, C, S, S] -> [B, D, S, S]`` on the resized last map; ``None``:
            :class:`~noisyseg.models.networks.DenseProjection` ``(C, proj_dim, proj_dim)``.
        loss: ``loss(z1, z2 [B, D, S, S], labels1, labels2 [B, S, S]) -> scalar``; ``None``: the
            ``mode``'s loss of :data:`DENSE_LOSSES` from ``temperature``, ``ignore_index`` and
            ``binarize``.
        augmentation: ``view(image [B, C, H, W], mask [B, H, W]) -> (view, mask)``, drawn
            independently for both views; ``None``:
            :class:`~noisyseg.transforms.batch.ContrastiveView` ``(scale=crop_scale)``.
        **kwargs: :class:`~noisyseg.tasks.base.BaseTask` options.
    """

    def __init__(
        self,
        arch: str = "resnet18",
        in_channels: int = 3,
        mode: str = "within",
        feature_size: int = 8,
        proj_dim: int = 256,
        temperature: float = 0.07,
        binarize: bool = False,
        ignore_index: int = IGNORE_INDEX,
        crop_scale: tuple[float, float] = (0.4, 1.0),
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        optimizer: str = "adamw",
        warmup_fraction: float = 0.05,
        channels_last: bool = True,
        encoder_out: str | None = None,
        method: str | None = None,
        lr_schedule: str = "warmup_cosine",
        encoder: nn.Module | None = None,
        projection_head: nn.Module | None = None,
        loss: nn.Module | None = None,
        augmentation: nn.Module | None = None,
        input_normalization: dict[str, list[float]] | None = None,
    ) -> None:  # pragma: no mutate block (save_hyperparameters reads this frame; mutmut would wrap it)
        super().__init__(
            arch, lr, weight_decay, optimizer, warmup_fraction, channels_last, encoder_out, method or f"dense-{mode}",
            lr_schedule, input_normalization,
        )
        self.save_hyperparameters(ignore=["encoder", "projection_head", "loss", "augmentation", *DATA_LINKS])
        if mode not in DENSE_LOSSES:
            raise ValueError(f"mode={mode!r}; valid: {sorted(DENSE_LOSSES)}")
        if feature_size < 1:
            raise ValueError(f"feature_size={feature_size} must be >= 1")
        self.encoder = encoder if encoder is not None else build_encoder(arch, in_channels)
        if projection_head is None:
            projection_head = DenseProjection(self.encoder.out_channels[-1], proj_dim, proj_dim)
        self.projection = projection_head
        self.loss_fn = loss if loss is not None else DENSE_LOSSES[mode](temperature, ignore_index, binarize)
        self.view = augmentation if augmentation is not None else ContrastiveView(scale=tuple(crop_scale))
        self.feature_size = feature_size

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W] -> [B, D, S, S]`` projected pixel features."""
        f = last_features(self.encoder, x)  # B x 512 x H/32 x W/32, before global pooling
        f = F.interpolate(f, size=(self.feature_size, self.feature_size), mode="bilinear", align_corners=False)
        return self.projection(f)  # B x D x S x S

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if MASK not in batch:
            raise ValueError("dense contrastive pretraining needs labels: the dataset returns no 'mask'")
        x1, m1 = self.view(batch[IMAGE], batch[MASK])
        x2, m2 = self.view(batch.get(IMAGE2, batch[IMAGE]), batch.get(MASK2, batch[MASK]))
        if self.channels_last:
            x1, x2 = (x.contiguous(memory_format=torch.channels_last) for x in (x1, x2))
        z1, z2 = self.embed(x1), self.embed(x2)  # B x D x S x S each
        s = self.feature_size
        loss = self.loss_fn(z1, z2, downsample_labels(m1, s), downsample_labels(m2, s))
        loss = self.check_finite(loss)
        self.log("train/loss", loss, prog_bar=True, batch_size=x1.shape[0])
        self.log_health(z1.float().mean(dim=(2, 3)))
        return loss
