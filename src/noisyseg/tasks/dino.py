"""DINO self-distillation for ResNet encoders (Caron et al., ICCV 2021; facebookresearch/dino).

Student and teacher are the same ResNet + DINO head; the teacher is an EMA of the student with a
cosine momentum schedule (0.996 -> 1). Views: 2 global crops (of ``image`` and of its partner
``image2`` when the data gives positive pairs, else both of ``image``) and N local crops.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from noisyseg.data.loading import IMAGE, IMAGE2
from noisyseg.losses.dino import DINOLoss
from noisyseg.models.networks import DINOHead, build_encoder
from noisyseg.models.momentum import cosine_schedule, momentum_update
from noisyseg.tasks.base import DATA_LINKS, BaseTask, RepresentationHealth
from noisyseg.tasks.moco import EncoderWithHead
from noisyseg.transforms.batch import ContrastiveView


class DINOTask(RepresentationHealth, BaseTask):
    """DINO with multi-crop for a ResNet encoder.

    The encoder, the DINO head, the loss and the global and local augmentations are arguments
    (``class_path`` / ``init_args`` in YAML); each left ``None`` is built from the options below.

    Args:
        arch: ResNet architecture (of the default encoder; recorded in the encoder file).
        in_channels: input bands of the default encoder.
        out_dim: prototypes of the DINO head (reference: 65536; 4096 here for small data).
        hidden_dim, bottleneck_dim: head sizes (reference: 2048, 256).
        n_local_crops: local views (reference: 8; default 4 for a CPU).
        global_scale: area range of global crops (reference: 0.4-1).
        local_scale: area range of local crops (reference: 0.05-0.4).
        local_size_ratio: local crop side as a fraction of the input (reference: 96/224).
        student_temp: 0.1.
        warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs: the teacher temperature
            rises linearly over the warm-up epochs (reference for ResNet: 0.04 -> 0.07).
        center_momentum: 0.9.
        momentum_teacher: base EMA momentum, scheduled to 1 by cosine (reference: 0.996).
        freeze_last_layer_epochs: keep the head's last layer (``head.last_layer``) fixed this long
            (stabilises the start).
        encoder: the encoder (stride-ordered feature maps, ``out_channels``); ``None``:
            ``build_encoder(arch, in_channels)``.
        head: ``[B, C, h, w] -> [B, K]`` on the encoder's last map; ``None``:
            :class:`~noisyseg.models.networks.DINOHead` ``(C, out_dim, hidden_dim, bottleneck_dim)``.
        loss: ``loss(student [V, B, K], teacher [2, B, K], epoch) -> scalar``; ``None``:
            :class:`~noisyseg.losses.dino.DINOLoss` from ``out_dim`` and the temperatures.
        global_augmentation: ``view(image [B, C, H, W]) -> (view, None)`` of both global views;
            ``None``: :class:`~noisyseg.transforms.batch.ContrastiveView` ``(scale=global_scale)``.
        local_augmentation: the same for the local views, their size its own; ``None``: a
            :class:`~noisyseg.transforms.batch.ContrastiveView` of ``local_scale`` and side
            ``local_size_ratio`` x the input's (at least 8).
        **kwargs: :class:`~noisyseg.tasks.base.BaseTask` options.
    """

    def __init__(
        self,
        arch: str = "resnet18",
        in_channels: int = 3,
        out_dim: int = 4096,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        n_local_crops: int = 4,
        global_scale: tuple[float, float] = (0.4, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.4),
        local_size_ratio: float = 0.4375,
        student_temp: float = 0.1,
        warmup_teacher_temp: float = 0.04,
        teacher_temp: float = 0.07,
        warmup_teacher_temp_epochs: int = 0,
        center_momentum: float = 0.9,
        momentum_teacher: float = 0.996,
        freeze_last_layer_epochs: int = 1,
        lr: float = 5e-4,
        weight_decay: float = 1e-4,
        optimizer: str = "adamw",
        warmup_fraction: float = 0.1,
        channels_last: bool = True,
        encoder_out: str | None = None,
        method: str = "dino",
        lr_schedule: str = "warmup_cosine",
        encoder: nn.Module | None = None,
        head: nn.Module | None = None,
        loss: nn.Module | None = None,
        global_augmentation: nn.Module | None = None,
        local_augmentation: nn.Module | None = None,
        input_normalization: dict[str, list[float]] | None = None,
    ) -> None:  # pragma: no mutate block (save_hyperparameters reads this frame; mutmut would wrap it)
        super().__init__(
            arch, lr, weight_decay, optimizer, warmup_fraction, channels_last, encoder_out, method, lr_schedule,
            input_normalization,
        )
        self.save_hyperparameters(
            ignore=["encoder", "head", "loss", "global_augmentation", "local_augmentation", *DATA_LINKS]
        )
        if n_local_crops < 0:
            raise ValueError(f"n_local_crops={n_local_crops} must be >= 0")
        if not 0.0 < local_size_ratio <= 1.0:
            raise ValueError(f"local_size_ratio={local_size_ratio} must lie in (0, 1]")
        if head is not None and freeze_last_layer_epochs > 0 and not hasattr(head, "last_layer"):
            raise ValueError(f"freeze_last_layer_epochs={freeze_last_layer_epochs} freezes head.last_layer, but the "
                             f"head {type(head).__name__} has none: set freeze_last_layer_epochs to 0")
        self.encoder = encoder if encoder is not None else build_encoder(arch, in_channels)
        if head is None:
            head = DINOHead(self.encoder.out_channels[-1], out_dim, hidden_dim, bottleneck_dim)
        self.student = EncoderWithHead(self.encoder, head)
        self.teacher = copy.deepcopy(self.student).requires_grad_(False)
        if loss is None:
            loss = DINOLoss(
                out_dim,
                warmup_teacher_temp,
                teacher_temp,
                warmup_teacher_temp_epochs,
                max(1, warmup_teacher_temp_epochs),
                student_temp,
                center_momentum,
            )
        self.loss_fn = loss
        if global_augmentation is None:
            global_augmentation = ContrastiveView(scale=tuple(global_scale))
        self.global_view = global_augmentation
        self.local_view = local_augmentation  # None: sized from each batch's input
        self.local_scale, self.local_size_ratio, self.n_local = tuple(local_scale), local_size_ratio, n_local_crops
        self.momentum_teacher, self.freeze_last_layer_epochs = momentum_teacher, freeze_last_layer_epochs

    def _cl(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        img = batch[IMAGE]  # B x C x H x W
        g1, _ = self.global_view(img)
        g2, _ = self.global_view(batch.get(IMAGE2, img))
        local_view = self.local_view
        if local_view is None:
            local_size = max(8, int(round(img.shape[-1] * self.local_size_ratio)))
            local_view = ContrastiveView(size=local_size, scale=self.local_scale)
        locals_ = [local_view(img)[0] for _ in range(self.n_local)]  # N x (B x C x s x s)
        globals_ = torch.cat([g1, g2])  # 2B x C x H x W: one pass for both global views
        s_global = self.student(self._cl(globals_)).view(2, img.shape[0], -1)  # 2 x B x K
        outs = [s_global]
        if locals_:
            s_local = self.student(self._cl(torch.cat(locals_)))  # NB x K
            outs.append(s_local.view(self.n_local, img.shape[0], -1))
        student = torch.cat(outs)  # V x B x K
        with torch.no_grad():
            teacher = self.teacher(self._cl(globals_)).view(2, img.shape[0], -1)  # 2 x B x K
        loss = self.check_finite(self.loss_fn(student, teacher, self.current_epoch))
        self.log("train/loss", loss, prog_bar=True, batch_size=img.shape[0])
        self.log_health(F.normalize(s_global[0].float(), dim=1))
        return loss

    def on_after_backward(self) -> None:
        # DINO: the last layer of the head is not updated during the first epoch(s)
        if self.current_epoch < self.freeze_last_layer_epochs:
            for p in self.student.head.last_layer.parameters():
                p.grad = None

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        total = max(1, int(self.trainer.estimated_stepping_batches))
        # the optimiser step just taken, 0-based (global_step already counts it): the reference's
        # momentum_schedule[it], so the first update uses the base momentum and the last one is < 1
        step = max(0, self.global_step - 1)
        m = cosine_schedule(step, total, self.momentum_teacher, 1.0)  # pure function of the step
        with torch.no_grad():
            momentum_update(self.student, self.teacher, m)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.student.parameters() if p.requires_grad]
