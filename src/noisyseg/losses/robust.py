"""Noise-robust pixel losses for segmentation on noisy labels, each combinable with Dice.

Logits ``[B, K, H, W]`` and int64 labels ``[B, H, W]``; pixels labelled ``ignore_index`` (255,
:data:`~noisyseg.data.loading.IGNORE_INDEX`) contribute nothing, and a batch with no labelled pixel
gives 0 with a gradient, not NaN (as :class:`~noisyseg.losses.segmentation.CEDiceLoss`). Computed
in fp32 even under bf16 autocast (:func:`~noisyseg.runtime.fp32_forward`). Optional ``class_weights``
weight each pixel by the weight of its label: the loss is ``sum_i w[y_i] l_i / sum_i w[y_i]`` over
labelled pixels ``i``.

Written here because no maintained library offers these for dense prediction with an ignore index:
segmentation_models_pytorch has label smoothing only (``SoftCrossEntropyLoss``), torchgeo and
timm none of symmetric / generalized CE, bootstrapping or small-loss pixel selection.

* :class:`LabelSmoothingCE` — Szegedy et al. 2016;
* :class:`SymmetricCE` — Wang et al. 2019 (ICCV);
* :class:`GeneralizedCE` — Zhang & Sabuncu 2018 (NeurIPS);
* :class:`BootstrappingCE` — Reed et al. 2015, soft and hard;
* :class:`SmallLossSelection` — keep the small-loss (or confident) share of labelled pixels,
  co-teaching's selection (Han et al. 2018) per pixel, with a linear ramp over training;
* :class:`WithDice` — any of them plus segmentation_models_pytorch's multiclass Dice.

Given to :class:`~noisyseg.tasks.SegmentationTask` as ``loss`` (it replaces the CE + Dice built from
``ce_weight`` / ``dice_weight``)::

    model:
      class_path: noisyseg.tasks.SegmentationTask
      init_args:
        loss:
          class_path: noisyseg.losses.WithDice
          init_args:
            dice_weight: 1.0
            loss:
              class_path: noisyseg.losses.SmallLossSelection
              init_args:
                keep: 0.8              # final share of labelled pixels kept
                ramp_fraction: 0.1     # reached after 10 % of the training steps
                criterion:
                  class_path: noisyseg.losses.SymmetricCE
                  init_args: {alpha: 0.1, beta: 1.0}
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.losses import DiceLoss
from torch import nn

from noisyseg.data.loading import IGNORE_INDEX
from noisyseg.runtime import fp32_forward

BOOTSTRAP_MODES = ("soft", "hard")
SELECTION_MODES = ("small_loss", "confident")


def _weighted_mean(loss: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``sum(w * l) / sum(w)``; 0 with a gradient when ``sum(w) == 0`` (no device sync to decide)."""
    return (loss * weight).sum() / weight.sum().clamp_min(torch.finfo(loss.dtype).tiny)


class PixelLoss(nn.Module):
    """Base of the per-pixel losses: a loss map ``[B, H, W]``, reduced to a weighted mean.

    Subclasses define :meth:`pixel_loss`; :meth:`forward` masks ignored pixels and averages.

    Args:
        class_weights: optional per-class weights ``[K]``; a pixel counts with its label's weight.
        ignore_index: label that contributes nothing.

    Raises:
        ValueError: a negative class weight.
    """

    def __init__(self, class_weights: Sequence[float] | None = None, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        w = None if class_weights is None else torch.as_tensor(list(class_weights), dtype=torch.float32)
        if w is not None and bool((w < 0).any()):
            raise ValueError(f"class_weights={list(class_weights)} must all be >= 0")  # type: ignore[arg-type]
        self.register_buffer("class_weights", w)
        self.ignore_index = ignore_index

    def pixel_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-pixel loss ``[B, H, W]`` of fp32 ``logits`` ``[B, K, H, W]`` for labels ``[B, H, W]`` in 0..K-1."""
        raise NotImplementedError

    def prepare(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(logits, target with ignored pixels set to 0, per-pixel weight [B, H, W])``; fp32 from ``forward``.

        Raises:
            ValueError: when the number of class weights is not the number of classes.
        """
        if self.class_weights is not None and self.class_weights.numel() != logits.shape[1]:
            raise ValueError(f"{self.class_weights.numel()} class weights for {logits.shape[1]} classes")
        valid = target != self.ignore_index  # B x H x W
        safe = target.where(valid, 0)  # any class id: its loss is multiplied by weight 0
        weight = valid.to(logits.dtype)  # B x H x W
        if self.class_weights is not None:
            weight = weight * self.class_weights.to(logits.dtype)[safe]
        return logits, safe, weight

    @fp32_forward
    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, safe, weight = self.prepare(logits, target)
        return _weighted_mean(self.pixel_loss(logits, safe), weight)


def _label_prob(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log p, log p_y)``: log-softmax ``[B, K, H, W]`` and its value at the label ``[B, H, W]``."""
    logp = logits.log_softmax(1)  # B x K x H x W
    return logp, logp.gather(1, target.unsqueeze(1)).squeeze(1)  # B x H x W


class LabelSmoothingCE(PixelLoss):
    """Cross-entropy against a smoothed label (Szegedy et al. 2016, "Rethinking the Inception
    Architecture for Computer Vision", section 7).

    ``l = -sum_k q_k log p_k`` with ``q_k = (1 - eps) [k = y] + eps / K``; ``eps = 0`` is plain CE.
    Unweighted it equals ``F.cross_entropy(..., label_smoothing=eps)``; with ``class_weights`` the
    pixel weight is its label's (torch instead weights each class term of the smoothing part).

    Args:
        smoothing: ``eps`` in [0, 1).
        class_weights: see :class:`PixelLoss`.
        ignore_index: see :class:`PixelLoss`.

    Raises:
        ValueError: ``smoothing`` outside [0, 1).
    """

    def __init__(self, smoothing: float = 0.1, class_weights: Sequence[float] | None = None,
                 ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__(class_weights, ignore_index)
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing={smoothing} must be in [0, 1)")
        self.smoothing = smoothing

    def pixel_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp, logp_y = _label_prob(logits, target)
        uniform = -logp.mean(1)  # B x H x W: -sum_k log p_k / K
        return (1.0 - self.smoothing) * -logp_y + self.smoothing * uniform


class SymmetricCE(PixelLoss):
    """Symmetric cross-entropy (Wang et al. 2019, "Symmetric Cross Entropy for Robust Learning with
    Noisy Labels", ICCV; reference code github.com/YisenWang/symmetric_cross_entropy_for_noisy_labels).

    ``l = alpha * CE + beta * RCE`` with ``CE = -log p_y`` and the reverse cross-entropy
    ``RCE = -sum_k p_k log q_k`` against the one-hot label ``q``, ``log 0`` defined as ``A``:
    ``RCE = -A (1 - p_y)``. The paper sets ``A = -4`` (deviation from the reference code, which
    clips the one-hot label to 1e-4, i.e. ``A = log 1e-4 = -9.21``, and clips ``p`` to >= 1e-7).
    Paper settings: ``alpha = 0.1, beta = 1`` (CIFAR-10), ``alpha = 6, beta = 0.1`` (CIFAR-100).

    Args:
        alpha: weight of CE (>= 0).
        beta: weight of RCE (>= 0).
        log_zero: ``A`` (< 0).
        class_weights: see :class:`PixelLoss`.
        ignore_index: see :class:`PixelLoss`.

    Raises:
        ValueError: negative weights, both zero, or ``log_zero >= 0``.
    """

    def __init__(self, alpha: float = 0.1, beta: float = 1.0, log_zero: float = -4.0,
                 class_weights: Sequence[float] | None = None, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__(class_weights, ignore_index)
        if alpha < 0 or beta < 0 or alpha + beta == 0:
            raise ValueError(f"alpha={alpha} and beta={beta} must be >= 0 and not both 0")
        if log_zero >= 0:
            raise ValueError(f"log_zero={log_zero} must be < 0 (it stands for log 0)")
        self.alpha, self.beta, self.log_zero = alpha, beta, log_zero

    def pixel_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _, logp_y = _label_prob(logits, target)  # B x H x W
        rce = -self.log_zero * (1.0 - logp_y.exp())  # -sum_k p_k log q_k: only k != y terms, each A
        return self.alpha * -logp_y + self.beta * rce


class GeneralizedCE(PixelLoss):
    """Generalized cross-entropy (Zhang & Sabuncu 2018, "Generalized Cross Entropy Loss for Training
    Deep Neural Networks with Noisy Labels", NeurIPS; the L_q loss, without its truncation).

    ``l = (1 - p_y^q) / q``: CE as ``q -> 0``, MAE (up to a factor) at ``q = 1``. The paper uses
    ``q = 0.7``. ``p_y^q`` is computed as ``exp(q log p_y)``.

    Args:
        q: in (0, 1].
        class_weights: see :class:`PixelLoss`.
        ignore_index: see :class:`PixelLoss`.

    Raises:
        ValueError: ``q`` outside (0, 1].
    """

    def __init__(self, q: float = 0.7, class_weights: Sequence[float] | None = None,
                 ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__(class_weights, ignore_index)
        if not 0.0 < q <= 1.0:
            raise ValueError(f"q={q} must be in (0, 1]")
        self.q = q

    def pixel_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _, logp_y = _label_prob(logits, target)  # B x H x W
        return (1.0 - (self.q * logp_y).exp()) / self.q


class BootstrappingCE(PixelLoss):
    """Bootstrapping (Reed et al. 2015, "Training Deep Neural Networks on Noisy Labels with
    Bootstrapping", ICLR workshop): CE against a mix of the label and the model's own prediction.

    ``l = -sum_k (beta t_k + (1 - beta) z_k) log p_k`` with ``t`` the one-hot label and

    * ``soft``: ``z = p``, **detached** (a fixed target, as in common implementations, e.g.
      pytorch-ignite's bootstrapping example with ``as_pseudo_label``; without the detach the term
      is an entropy penalty that also pushes ``p`` itself). The paper uses ``beta = 0.95``;
    * ``hard``: ``z`` one-hot at ``argmax_k p_k`` (no gradient through the argmax). The paper uses
      ``beta = 0.8``.

    Args:
        beta: weight of the label, in [0, 1].
        mode: ``"soft"`` or ``"hard"``.
        class_weights: see :class:`PixelLoss`.
        ignore_index: see :class:`PixelLoss`.

    Raises:
        ValueError: ``beta`` outside [0, 1] or an unknown ``mode``.
    """

    def __init__(self, beta: float = 0.95, mode: str = "soft", class_weights: Sequence[float] | None = None,
                 ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__(class_weights, ignore_index)
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta={beta} must be in [0, 1]")
        if mode not in BOOTSTRAP_MODES:
            raise ValueError(f"mode={mode!r}; valid: {list(BOOTSTRAP_MODES)}")
        self.beta, self.mode = beta, mode

    def pixel_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp, logp_y = _label_prob(logits, target)  # B x K x H x W, B x H x W
        if self.mode == "soft":
            own = -(logp.detach().exp() * logp).sum(1)  # B x H x W: -sum_k p_k (fixed) log p_k
        else:
            own = -logp.gather(1, logp.detach().argmax(1, keepdim=True)).squeeze(1)  # -log p_argmax
        return self.beta * -logp_y + (1.0 - self.beta) * own


def ramp(progress: float, ramp_fraction: float) -> float:
    """``min(progress / ramp_fraction, 1)``: 0 at the start, 1 from ``ramp_fraction`` on (1 if that is 0)."""
    return 1.0 if ramp_fraction == 0 else min(1.0, progress / ramp_fraction)


def keep_share(progress: float, keep: float, ramp_fraction: float) -> float:
    """Share of labelled pixels kept: 1 at progress 0, linear down to ``keep`` at ``ramp_fraction``.

    Co-teaching's ``R(T) = 1 - min(T / T_k, 1) * tau`` (Han et al. 2018) with ``tau = 1 - keep`` and
    ``T / T_k = progress / ramp_fraction``; ``ramp_fraction = 0`` keeps ``keep`` from the start.
    """
    return 1.0 - (1.0 - keep) * ramp(progress, ramp_fraction)


class SmallLossSelection(nn.Module):
    """Average a pixel loss over the small-loss (or confident) labelled pixels only.

    Co-teaching's small-loss selection (Han et al. 2018, "Co-teaching: Robust Training of Deep
    Neural Networks with Extremely Noisy Labels", NeurIPS; reference code github.com/bhanML/
    Co-teaching), applied to the pixels of one network's batch rather than to samples across two
    networks: pixels whose label is wrong tend to have the largest loss early in training.

    * ``small_loss``: keep the ``floor(s * N)`` labelled pixels of the batch (at least 1) with the
      lowest ``criterion`` pixel loss, ``N`` the labelled pixels, ``s`` = :func:`keep_share`
      (1 at progress 0, ramping linearly to ``keep`` at ``ramp_fraction`` of training);
    * ``confident``: keep the labelled pixels with ``p_y >= t``, ``t`` ramping linearly from 0
      (keep all) to ``threshold`` over the same ``ramp_fraction``.

    The selection is made without gradient; the kept pixels are averaged with the criterion's
    class weights. Progress comes from :meth:`set_progress` (``SegmentationTask`` calls it with
    ``global_step / estimated_stepping_batches`` before each training step; it starts at 0).

    Args:
        criterion: the per-pixel loss ranked and averaged (default: plain CE,
            ``LabelSmoothingCE(smoothing=0)``); its ``ignore_index`` and ``class_weights`` apply.
        mode: ``"small_loss"`` or ``"confident"``.
        keep: final share of labelled pixels kept (``small_loss``), in (0, 1].
        threshold: final ``p_y`` threshold (``confident``), in [0, 1).
        ramp_fraction: fraction of training over which the selection ramps in, in [0, 1].

    Raises:
        ValueError: an unknown ``mode`` or a value outside its range.
    """

    def __init__(self, criterion: PixelLoss | None = None, mode: str = "small_loss", keep: float = 0.8,
                 threshold: float = 0.5, ramp_fraction: float = 0.1) -> None:
        super().__init__()
        if mode not in SELECTION_MODES:
            raise ValueError(f"mode={mode!r}; valid: {list(SELECTION_MODES)}")
        if not 0.0 < keep <= 1.0:
            raise ValueError(f"keep={keep} must be in (0, 1]")
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"threshold={threshold} must be in [0, 1)")
        if not 0.0 <= ramp_fraction <= 1.0:
            raise ValueError(f"ramp_fraction={ramp_fraction} must be in [0, 1]")
        self.criterion = criterion if criterion is not None else LabelSmoothingCE(smoothing=0.0)
        self.mode, self.keep, self.threshold, self.ramp_fraction = mode, keep, threshold, ramp_fraction
        self.progress = 0.0

    @property
    def ignore_index(self) -> int:
        return self.criterion.ignore_index

    def set_progress(self, fraction: float) -> None:
        """Training progress in [0, 1] (step / total steps).

        Raises:
            ValueError: ``fraction`` outside [0, 1].
        """
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"progress fraction={fraction} must be in [0, 1]")
        self.progress = float(fraction)

    def share(self) -> float:
        """Share of labelled pixels ``small_loss`` keeps now."""
        return keep_share(self.progress, self.keep, self.ramp_fraction)

    def current_threshold(self) -> float:
        """``p_y`` threshold ``confident`` applies now."""
        return self.threshold * ramp(self.progress, self.ramp_fraction)

    @fp32_forward
    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, safe, weight = self.criterion.prepare(logits, target)
        loss = self.criterion.pixel_loss(logits, safe)  # B x H x W
        valid = target != self.ignore_index  # B x H x W
        with torch.no_grad():
            if self.mode == "confident":
                p_y = logits.softmax(1).gather(1, safe.unsqueeze(1)).squeeze(1)  # B x H x W
                kept = valid & (p_y >= self.current_threshold())
            else:
                n_keep = (valid.sum() * self.share() + 1e-6).floor().clamp_min(1)  # tensor: no device sync
                score = loss.detach().where(valid, torch.inf).flatten()  # ignored pixels rank last
                order = score.argsort(stable=True)  # N, lowest loss first
                rank = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=order.device))
                kept = valid & (rank < n_keep).view_as(valid)
        return _weighted_mean(loss, weight * kept)


class WithDice(nn.Module):
    """``loss_weight * loss + dice_weight * Dice``: any loss above plus smp's multiclass soft Dice.

    Dice is ``segmentation_models_pytorch.losses.DiceLoss(mode="multiclass", from_logits=True,
    ignore_index=...)``, as in :class:`~noisyseg.losses.segmentation.CEDiceLoss` (which is this
    with plain CE). :meth:`set_progress` is passed on to ``loss`` when it has one.

    Args:
        loss: the pixel loss (e.g. :class:`SymmetricCE`, :class:`SmallLossSelection`).
        loss_weight: its weight (>= 0).
        dice_weight: weight of Dice (>= 0).
        ignore_index: label Dice skips; must equal ``loss.ignore_index`` when the loss has one.

    Raises:
        ValueError: negative weights, both zero, or ignore indices that differ.
    """

    def __init__(self, loss: nn.Module, loss_weight: float = 1.0, dice_weight: float = 1.0,
                 ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        if loss_weight < 0 or dice_weight < 0 or loss_weight + dice_weight == 0:
            raise ValueError(f"loss_weight={loss_weight} and dice_weight={dice_weight} must be >= 0 and not both 0")
        inner = getattr(loss, "ignore_index", ignore_index)
        if inner != ignore_index:
            raise ValueError(f"the loss skips label {inner} but Dice's ignore_index={ignore_index}: give both the same")
        self.loss, self.loss_weight, self.dice_weight = loss, loss_weight, dice_weight
        self.ignore_index = ignore_index
        self.dice = DiceLoss(mode="multiclass", from_logits=True, ignore_index=ignore_index)

    def set_progress(self, fraction: float) -> None:
        """Training progress in [0, 1], passed on to ``loss``."""
        inner = getattr(self.loss, "set_progress", None)
        if inner is not None:
            inner(fraction)

    @fp32_forward
    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = logits.new_zeros(())
        if self.loss_weight:
            total = total + self.loss_weight * self.loss(logits, target)
        if self.dice_weight:
            total = total + self.dice_weight * self.dice(logits, target)
        return total
