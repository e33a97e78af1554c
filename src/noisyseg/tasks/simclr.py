"""SimCLR pretraining with temporal / noisy positive pairs and optional FALSE calibration.

Chen et al., ICML 2020, "A Simple Framework for Contrastive Learning of Visual Representations";
reference code google-research/simclr. FALSE (Zhang et al. 2022) is built on VISSL's SimCLR, so
with ``false_negative`` set this is FALSE's own setting (GeoX-Lab/FALSE
``configs/config/pretrain/FALSE/false_1gpu_resnet.yaml``: ResNet, MLP head 2048-2048-128, T 0.5).
"""

from __future__ import annotations

import torch
from torch import nn

from noisyseg.data.loading import IMAGE, IMAGE2
from noisyseg.losses.ntxent import NTXentLoss
from noisyseg.models.networks import ProjectionMLP, build_encoder
from noisyseg.tasks.base import DATA_LINKS, BaseTask, RepresentationHealth
from noisyseg.tasks.moco import EncoderWithHead
from noisyseg.transforms.batch import ContrastiveView


class SimCLRTask(RepresentationHealth, BaseTask):
    """SimCLR: one encoder + MLP head on both views, NT-Xent over the 2N views of the batch.

    Positive pairs come from the data: ``image`` and ``image2`` (a temporal partner, or the noisy
    partner of a VTS scene), each augmented independently; a dataset without ``image2`` gives two
    augmentations of ``image`` (SimCLR). Both views go through the network in one batch, so
    BatchNorm sees both, as SimCLR's concatenated batch does (deviation: no cross-process SyncBN,
    which SimCLR and FALSE's config use under multi-device training). Negatives are gathered
    across processes (:class:`~noisyseg.losses.ntxent.NTXentLoss`).

    The encoder, the projection head, the loss and the augmentation are arguments (``class_path``
    / ``init_args`` in YAML); each left ``None`` is built from the options below.

    Args:
        arch: ResNet architecture (of the default encoder; recorded in the encoder file).
        in_channels: input bands of the default encoder.
        temperature: NT-Xent temperature (FALSE config 0.5; SimCLR ImageNet 0.1).
        hidden_dim, out_dim: projection MLP sizes. Linear-ReLU-Linear, SimCLR v1's head as VISSL
            and FALSE configure it (2048, 128); deviation: SimCLR v2's 3-layer head with BN is
            not provided.
        false_negative: ``none`` (SimCLR), or FALSE's FNSD: ``reference`` (the authors' code),
            ``closest`` or ``per_anchor`` (see :func:`~noisyseg.losses.detect_false_negatives`).
        alpha: FALSE's FNCC weight in [0, 1].
        fn_threshold: per-anchor FNSD cosine threshold.
        positive_min: reference/closest-mode least positive cosine (FALSE: 0.9).
        crop_scale: random-resized-crop area range of the views (SimCLR: 0.08-1).
        jitter: band-jitter strength (SimCLR colour distortion strength 1: 0.8).
        optimizer: ``sgd`` by default (deviation: SimCLR and FALSE use LARS).
        encoder: the encoder (stride-ordered feature maps, ``out_channels``); ``None``:
            ``build_encoder(arch, in_channels)``.
        projection_head: ``[B, C, h, w] -> [B, D]`` on the encoder's last map; ``None``:
            :class:`~noisyseg.models.networks.ProjectionMLP` ``(C, hidden_dim, out_dim)``.
        loss: ``loss(z1 [B, D], z2 [B, D]) -> scalar``; ``None``:
            :class:`~noisyseg.losses.ntxent.NTXentLoss` from ``temperature``, ``false_negative``,
            ``alpha``, ``fn_threshold`` and ``positive_min``.
        augmentation: ``view(image [B, C, H, W]) -> (view, None)``, drawn independently for both
            views; ``None``: :class:`~noisyseg.transforms.batch.ContrastiveView`
            ``(scale=crop_scale, jitter=jitter)``.
        **kwargs: :class:`~noisyseg.tasks.base.BaseTask` options.
    """

    def __init__(
        self,
        arch: str = "resnet18",
        in_channels: int = 3,
        temperature: float = 0.5,
        hidden_dim: int = 2048,
        out_dim: int = 128,
        false_negative: str = "none",
        alpha: float = 1.0,
        fn_threshold: float = 0.9,
        positive_min: float = 0.9,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        jitter: float = 0.8,
        lr: float = 0.03,
        weight_decay: float = 1e-4,
        optimizer: str = "sgd",
        warmup_fraction: float = 0.0,
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
        method = method or ("simclr" if false_negative == "none" else f"simclr-false-{false_negative}")
        super().__init__(
            arch, lr, weight_decay, optimizer, warmup_fraction, channels_last, encoder_out, method, lr_schedule,
            input_normalization,
        )
        self.save_hyperparameters(ignore=["encoder", "projection_head", "loss", "augmentation", *DATA_LINKS])
        self.encoder = encoder if encoder is not None else build_encoder(arch, in_channels)
        if projection_head is None:
            projection_head = ProjectionMLP(self.encoder.out_channels[-1], hidden_dim, out_dim)
        self.model = EncoderWithHead(self.encoder, projection_head)
        if loss is None:
            loss = NTXentLoss(temperature, false_negative, alpha, fn_threshold, positive_min)
        self.loss_fn = loss
        if augmentation is None:
            augmentation = ContrastiveView(scale=tuple(crop_scale), jitter=jitter)
        self.view = augmentation

    def views(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Two independently augmented views: of ``image`` and of its partner ``image2``."""
        x1, _ = self.view(batch[IMAGE])
        x2, _ = self.view(batch.get(IMAGE2, batch[IMAGE]))
        return x1, x2

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x1, x2 = self.views(batch)  # B x C x H x W each
        x = torch.cat([x1, x2])  # 2B x C x H x W, view-major as the loss expects
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        z1, z2 = self.model(x).chunk(2)  # B x D each: row i of z2 is the partner of row i of z1
        loss = self.check_finite(self.loss_fn(z1, z2))
        self.log("train/loss", loss, prog_bar=True, batch_size=x1.shape[0])
        if getattr(self.loss_fn, "false_negative", "none") != "none":  # does FNSD find anything at all?
            self.log("train/false_negatives", float(self.loss_fn.last_false_negatives), batch_size=x1.shape[0])
        self.log_health(z1)
        return loss

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]
