"""DINO self-distillation loss with a centred, sharpened teacher."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from noisyseg.runtime import all_reduce_sum, fp32_forward, world_size

__all__ = ["DINOLoss"]


def _positive(name: str, value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name}={value} must be a positive finite number")


class DINOLoss(nn.Module):
    """Cross-entropy between the teacher's global views and the student's other views.

    For teacher global view g and student view v != g (Caron et al., ICCV 2021, "Emerging
    Properties in Self-Supervised Vision Transformers", eq. 2-3; facebookresearch/dino
    ``main_dino.py`` ``DINOLoss``)::

        P_t = softmax((t_g - c) / tau_t(epoch)),  P_s = softmax(s_v / tau_s)
        loss = mean over pairs (g, v != g) of mean_b  sum_k -P_t[k] log P_s[k]

    and in training mode the center ``c`` moves towards the mean teacher output of the global
    batch: ``c <- m c + (1 - m) mean(t)`` (gathered across ranks with an all-reduce).

    Views are stacked, not concatenated as in the reference: ``student_output [V, B, K]`` and
    ``teacher_output [G, B, K]`` with the student's first ``G`` views being the same global crops
    as the teacher's, in the same order (the reference's ``ncrops`` chunking assumes the same).

    Args:
        out_dim: K, the head's output dimension (size of the center).
        warmup_teacher_temp: teacher temperature at epoch 0.
        teacher_temp: teacher temperature after the warm-up.
        warmup_teacher_temp_epochs: epochs of linear warm-up (0: none).
        n_epochs: length of the run; the warm-up must fit in it.
        student_temp: student temperature tau_s.
        center_momentum: EMA momentum m of the center, in ``[0, 1]``.

    Raises:
        ValueError: non-positive dimension or temperatures, a warm-up longer than the run, or a
            momentum outside ``[0, 1]``.
    """

    center: Tensor

    def __init__(
        self,
        out_dim: int,
        warmup_teacher_temp: float = 0.04,
        teacher_temp: float = 0.04,
        warmup_teacher_temp_epochs: int = 0,
        n_epochs: int = 100,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
    ) -> None:
        super().__init__()
        if out_dim < 1:
            raise ValueError(f"out_dim={out_dim} must be >= 1")
        _positive("warmup_teacher_temp", warmup_teacher_temp)
        _positive("teacher_temp", teacher_temp)
        _positive("student_temp", student_temp)
        if n_epochs < 1:
            raise ValueError(f"n_epochs={n_epochs} must be >= 1")
        if not 0 <= warmup_teacher_temp_epochs <= n_epochs:
            raise ValueError(
                f"warmup_teacher_temp_epochs={warmup_teacher_temp_epochs} must lie in "
                f"[0, n_epochs={n_epochs}]"
            )
        if not 0.0 <= center_momentum <= 1.0:
            raise ValueError(f"center_momentum={center_momentum} is outside [0, 1]")
        self.out_dim = out_dim
        self.warmup_teacher_temp = float(warmup_teacher_temp)
        self.teacher_temp = float(teacher_temp)
        self.warmup_teacher_temp_epochs = int(warmup_teacher_temp_epochs)
        self.n_epochs = int(n_epochs)
        self.student_temp = float(student_temp)
        self.center_momentum = float(center_momentum)
        self.register_buffer("center", torch.zeros(1, out_dim))  # [1, K]

    def teacher_temperature(self, epoch: int) -> float:
        """Teacher temperature at ``epoch``: ``np.linspace(warmup, final, W)[epoch]``, then final.

        Epochs at or past ``n_epochs`` keep the final temperature (deviation: the reference's
        schedule array would raise ``IndexError`` there).

        Raises:
            ValueError: negative epoch.
        """
        if epoch < 0:
            raise ValueError(f"epoch={epoch} must be >= 0")
        w = self.warmup_teacher_temp_epochs
        if epoch >= w:
            return self.teacher_temp
        if w == 1:
            return self.warmup_teacher_temp
        step = (self.teacher_temp - self.warmup_teacher_temp) / (w - 1)
        return self.warmup_teacher_temp + epoch * step

    @fp32_forward
    def forward(self, student_output: Tensor, teacher_output: Tensor, epoch: int) -> Tensor:
        """Loss of one step; also updates the center in training mode.

        Args:
            student_output: ``[V, B, K]`` student head outputs (logits) for all V views.
            teacher_output: ``[G, B, K]`` teacher head outputs for the G global views (no grad
                is taken through it).
            epoch: current epoch, for the teacher temperature.

        Returns:
            Scalar fp32 loss.

        Raises:
            ValueError: wrong ranks, K other than ``out_dim``, mismatched B, or V < G.
        """
        if student_output.ndim != 3 or teacher_output.ndim != 3:
            raise ValueError(
                "expected student_output [V, B, K] and teacher_output [G, B, K], got "
                f"{tuple(student_output.shape)} and {tuple(teacher_output.shape)}"
            )
        v, b, k = student_output.shape
        g = teacher_output.shape[0]
        if k != self.out_dim or teacher_output.shape[1:] != (b, k) or g > v or v < 2:
            raise ValueError(
                f"student_output {tuple(student_output.shape)} and teacher_output "
                f"{tuple(teacher_output.shape)} must share B and K={self.out_dim}, with "
                "2 <= V and G <= V"
            )
        tau_t = self.teacher_temperature(epoch)
        log_p_s = F.log_softmax(student_output / self.student_temp, dim=-1)  # [V,B,K]
        teacher = teacher_output.detach()  # [G, B, K]
        p_t = F.softmax((teacher - self.center) / tau_t, dim=-1)  # [G, B, K] centred, sharp
        ce = -torch.einsum("gbk,vbk->gv", p_t, log_p_s) / b  # [G, V] mean_b CE of each pair
        other_view = ~torch.eye(g, v, dtype=torch.bool, device=ce.device)  # [G, V]
        loss = ce[other_view].mean()  # skip same-view pairs
        if self.training:  # deviation: the reference updates on every call (train-only use)
            self.update_center(teacher)
        return loss

    @torch.no_grad()
    def update_center(self, teacher_output: Tensor) -> None:
        """EMA of the mean teacher output over the global batch.

        Args:
            teacher_output: ``[G, B, K]`` (or ``[N, K]``) teacher outputs of this rank.
        """
        flat = teacher_output.detach().float().reshape(-1, self.out_dim)  # [G*B, K]
        total = all_reduce_sum(flat.sum(dim=0, keepdim=True))  # [1, K] summed over ranks
        batch_center = total / (flat.shape[0] * world_size())  # [1, K]
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1 - self.center_momentum)
