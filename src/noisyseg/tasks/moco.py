"""MoCo v2 pretraining with temporal / noisy positive pairs and optional FALSE calibration.

He et al., CVPR 2020 and Chen et al. 2020 ("Improved Baselines"); reference code
facebookresearch/moco ``moco/builder.py``. Positive pairs come from the data: ``image`` and
``image2`` (a temporal partner, or the noisy partner of a VTS scene — Gerard & Sullivan), each
augmented independently; a dataset without ``image2`` gives two augmentations of ``image``.
With ``false_negative`` set, the InfoNCE loss becomes FALSE's (Zhang et al. 2022).

The query and key networks are ``head(encoder(x)[-1])`` with the last map from
:func:`~noisyseg.models.networks.last_features` (same values, a cheaper stem). A queue left ``None``
is sized at ``setup`` to the training set (:func:`default_queue_size`): MoCo's 65,536 suits
ImageNet; a queue longer than a small dataset holds stale copies of the current positives as
negatives (false negatives by construction).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from noisyseg.data.loading import IMAGE, IMAGE2
from noisyseg.losses.infonce import InfoNCELoss
from noisyseg.models.momentum import KeyQueue, batch_shuffle, batch_unshuffle, momentum_update, split_batchnorm
from noisyseg.models.networks import ProjectionMLP, build_encoder, last_features
from noisyseg.tasks.base import DATA_LINKS, BaseTask, RepresentationHealth
from noisyseg.transforms.batch import ContrastiveView


class EncoderWithHead(nn.Module):
    """``head(encoder(x)[-1])``: the query or key network of MoCo. ``[B,C,H,W] -> [B,D]``."""

    def __init__(self, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(last_features(self.encoder, x))


def default_queue_size(dataset_len: int, global_batch: int, cap: int = 65536) -> int:
    """Queue scaled to the dataset: half of it, a multiple of the global batch, within [batch, cap]."""
    return max(global_batch, min(cap, dataset_len // 2) // global_batch * global_batch)


class MoCoTask(RepresentationHealth, BaseTask):
    """MoCo v2: query encoder + MLP head, momentum key encoder, queue of negatives.

    The encoder, the projection head, the loss and the augmentation are arguments (``class_path``
    / ``init_args`` in YAML); each left ``None`` is built from the options below as MoCo v2 has it.

    Args:
        arch: ResNet architecture (of the default encoder; recorded in the encoder file).
        in_channels: input bands of the default encoder.
        queue_size: negatives in the queue; ``None`` scales it to the training set
            (:func:`default_queue_size` of ``train_size`` and the global batch, ``batch_size`` x
            the trainer's world size, at ``setup``).
        temperature: InfoNCE temperature (MoCo v2: 0.2).
        momentum: key-encoder EMA momentum (MoCo: 0.999).
        hidden_dim, out_dim: projection MLP sizes (MoCo v2: 2048, 128); ``out_dim`` is also the
            width of the queue, so a given ``projection_head`` must output ``out_dim`` features.
        key_bn_chunks: the key batch is shuffled and the key encoder's BatchNorm normalises this
            many sub-batches separately (:class:`~noisyseg.models.momentum.SplitBatchNorm2d`), so
            the statistics of a key never come from the same sample mix as its query's (MoCo's
            shuffling BN, emulated on one device; under DDP the shuffle crosses processes).
        false_negative: ``none`` (MoCo), or FALSE's FNSD: ``reference`` (the authors' code),
            ``closest`` (improved) or ``per_anchor`` (see :func:`~noisyseg.losses.detect_false_negatives`).
        alpha: FALSE's FNCC weight in [0, 1].
        fn_threshold: per-anchor FNSD cosine threshold.
        positive_min: reference/closest-mode least positive cosine.
        crop_scale: random-resized-crop area range of the views.
        encoder: the query encoder (stride-ordered feature maps, ``out_channels``); ``None``:
            ``build_encoder(arch, in_channels)``.
        projection_head: ``[B, C, h, w] -> [B, out_dim]`` on the encoder's last map; ``None``:
            :class:`~noisyseg.models.networks.ProjectionMLP` ``(C, hidden_dim, out_dim)``.
        loss: ``loss(q [B, D], k [B, D], queue [K, D]) -> scalar``; ``None``:
            :class:`~noisyseg.losses.infonce.InfoNCELoss` from ``temperature``, ``false_negative``,
            ``alpha``, ``fn_threshold`` and ``positive_min``.
        augmentation: ``view(image [B, C, H, W]) -> (view, None)``, drawn independently for both
            views; ``None``: :class:`~noisyseg.transforms.batch.ContrastiveView` ``(scale=crop_scale)``.
        batch_size: samples per batch and process (linked from the data module by ``noisyseg fit``);
            sizes a null queue and is checked against the queue at ``setup``.
        train_size: training samples (linked from the data module); sizes a null queue.
        **kwargs: :class:`~noisyseg.tasks.base.BaseTask` options.
    """

    def __init__(
        self, arch: str = "resnet18", in_channels: int = 3, queue_size: int | None = None, temperature: float = 0.2,
        momentum: float = 0.999, hidden_dim: int = 2048, out_dim: int = 128, key_bn_chunks: int = 4,
        false_negative: str = "none", alpha: float = 1.0, fn_threshold: float = 0.9, positive_min: float = 0.9,
        crop_scale: tuple[float, float] = (0.2, 1.0),
        lr: float = 0.03, weight_decay: float = 1e-4, optimizer: str = "sgd", warmup_fraction: float = 0.0,
        channels_last: bool = True, encoder_out: str | None = None, method: str | None = None,
        lr_schedule: str = "warmup_cosine",
        encoder: nn.Module | None = None, projection_head: nn.Module | None = None, loss: nn.Module | None = None,
        augmentation: nn.Module | None = None, batch_size: int | None = None, train_size: int | None = None,
        input_normalization: dict[str, list[float]] | None = None,
    ) -> None:  # pragma: no mutate block (save_hyperparameters reads this frame; mutmut would wrap it)
        method = method or ("moco" if false_negative == "none" else f"false-{false_negative}")
        super().__init__(arch, lr, weight_decay, optimizer, warmup_fraction, channels_last, encoder_out, method,
                         lr_schedule, input_normalization)
        self.save_hyperparameters(ignore=["encoder", "projection_head", "loss", "augmentation", *DATA_LINKS])
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum={momentum} is outside [0, 1]")
        if key_bn_chunks < 1:
            raise ValueError(f"key_bn_chunks={key_bn_chunks} must be >= 1")
        self.encoder = encoder if encoder is not None else build_encoder(arch, in_channels)
        if projection_head is None:
            projection_head = ProjectionMLP(self.encoder.out_channels[-1], hidden_dim, out_dim)
        self.query = EncoderWithHead(self.encoder, projection_head)
        # momentum encoder, never trained by SGD; split BN keeps the names, so momentum_update pairs them
        self.key = split_batchnorm(copy.deepcopy(self.query).requires_grad_(False), key_bn_chunks)
        if loss is None:
            loss = InfoNCELoss(temperature, false_negative, alpha, fn_threshold, positive_min)
        self.loss_fn, self.momentum, self.out_dim = loss, momentum, out_dim
        self.view = augmentation if augmentation is not None else ContrastiveView(scale=tuple(crop_scale))
        self.batch_size, self.train_size = batch_size, train_size
        self.queue: KeyQueue | None = KeyQueue(out_dim, queue_size) if queue_size is not None else None

    def setup(self, stage: str) -> None:
        world = int(self.trainer.world_size)  # the global batch: batch_size on each of world processes
        if self.queue is None:
            if self.train_size is None or self.batch_size is None:
                raise ValueError(f"queue_size is null but train_size={self.train_size} and batch_size={self.batch_size}"
                                 " do not size it: set queue_size, or both ('noisyseg fit' links them from the data)")
            self.queue = KeyQueue(self.out_dim, default_queue_size(self.train_size, self.batch_size * world))
        if self.batch_size is not None:
            self.queue.check_batch(self.batch_size, world)
        super().setup(stage)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # a queue sized from the dataset must match the checkpoint's before the state is loaded
        q = checkpoint["state_dict"].get("queue.queue")
        if q is not None and (self.queue is None or self.queue.queue.shape != q.shape):
            self.queue = KeyQueue(q.shape[1], q.shape[0]).to(self.device)

    def views(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Two independently augmented views: of ``image`` and of its partner ``image2``."""
        x1, _ = self.view(batch[IMAGE])
        x2, _ = self.view(batch.get(IMAGE2, batch[IMAGE]))
        if self.channels_last:
            x1, x2 = (x.contiguous(memory_format=torch.channels_last) for x in (x1, x2))
        return x1, x2

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x1, x2 = self.views(batch)  # B x C x H x W each
        q = self.query(x1)  # queries: B x D
        k = self.keys(x2)  # keys: B x D
        loss = self.check_finite(self.loss_fn(q, k, self.queue.snapshot()))
        self.queue.enqueue(k.float())
        self.log("train/loss", loss, prog_bar=True, batch_size=x1.shape[0])
        if getattr(self.loss_fn, "false_negative", "none") != "none":  # does FNSD find anything at all?
            self.log("train/false_negatives", float(self.loss_fn.last_false_negatives), batch_size=x1.shape[0])
        self.log_health(q)
        return loss

    @torch.no_grad()
    def keys(self, x2: torch.Tensor) -> torch.Tensor:
        """Momentum-update the key encoder, then encode ``x2 [B,C,H,W]`` shuffled: keys ``[B, D]``."""
        momentum_update(self.query, self.key, self.momentum)
        x2s, idx = batch_shuffle(x2)  # shuffle for making use of BN
        return batch_unshuffle(self.key(x2s), idx)  # split BN: sub-batches of the shuffled batch

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.query.parameters() if p.requires_grad]
