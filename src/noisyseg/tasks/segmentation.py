"""Supervised segmentation: noisy-label pretraining (Liu et al.) and downstream transfer.

One task serves both ends of the pipeline:

* **pretraining on noisy labels** (Liu et al., arXiv 2402.16164): UNet + ResNet encoder trained
  with CE + Dice on the (noisy) ``mask``; ``encoder_out`` writes the encoder file at the end;
* **transfer**: ``encoder_path`` loads an encoder file into any decoder (UNet, DeepLabV3+, PSPNet,
  FCN); ``freeze_encoder`` keeps the encoder's parameters *and* BatchNorm running statistics
  untouched (the encoder stays in eval mode), otherwise everything is fine-tuned. The file written
  by this task also holds its decoder and segmentation head, so ``transfer`` can start the whole
  network (``full``) or the encoder plus the first UNet decoder blocks from it; ``normalization``
  brings the inputs to the normalisation the encoder was pretrained with.

Validation and test score against ``clean_mask`` when the batch has one (``eval_on_clean``), from
one confusion matrix accumulated over the whole split (torchmetrics' ``MulticlassConfusionMatrix``,
whose ``[K, K]`` state is summed across DDP processes) and scored once by
:func:`scores_from_confusion`. Averaging IoU per batch would be biased (a small batch with few pixels
of a class weighs as much as a large one). A class with no pixel in truth nor prediction has an
undefined IoU and F1 (NaN) and is left out of the macro means, so a split that lacks a class is not
penalised for it.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn
from torchmetrics.classification import MulticlassConfusionMatrix

from noisyseg.data.loading import CLEAN_MASK, IGNORE_INDEX, IMAGE, MASK
from noisyseg.data.stats import class_counts
from noisyseg.losses.segmentation import CEDiceLoss, inverse_frequency_weights
from noisyseg.models.networks import build_segmentation_model
from noisyseg.runfiles import EncoderFileError, load_encoder, read_decoder, save_encoder
from noisyseg.tasks.base import DATA_LINKS, BaseTask, batch_sources
from noisyseg.transforms.batch import SEGMENTATION_PRESETS, SegmentationAugment

TRANSFER_MODES = ("auto", "encoder", "full", "decoder_blocks:K")
"""What ``transfer`` starts from an encoder file (``K``: a number of UNet decoder blocks)."""

NORMALIZATION_MODES = ("auto", "encoder", "dataset")
"""Which normalisation the network's inputs are in (see :class:`SegmentationTask`)."""

STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}
"""The splits whose batches each Trainer stage sees, for ``normalization`` (``predict`` takes ``train``'s)."""


def scores_from_confusion(cm: torch.Tensor, class_names: list[str] | None = None) -> dict[str, float]:
    """``cm`` ``[K, K]`` (rows truth, columns prediction) -> ``{"miou", "f1", "accuracy", "iou/<name>",
    "f1/<name>"}``; macro means over the classes that occur (NaN for one that never does); names default to 0..K-1."""
    cm = cm.double()
    tp = cm.diag()  # K
    fp, fn = cm.sum(0) - tp, cm.sum(1) - tp  # K: predicted k with another truth; truth k predicted otherwise
    iou, f1 = tp / (tp + fp + fn), 2 * tp / (2 * tp + fp + fn)  # K, NaN where the class never occurs
    out = {"miou": float(torch.nanmean(iou)), "f1": float(torch.nanmean(f1)),
           "accuracy": float(tp.sum() / cm.sum().clamp_min(1))}
    for k, name in enumerate(class_names or [str(k) for k in range(cm.shape[0])]):
        out[f"iou/{name}"], out[f"f1/{name}"] = float(iou[k]), float(f1[k])
    return out


def input_correction(
    dataset: dict[str, Any], encoder: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per-band affine map from a dataset's normalisation to an encoder file's.

    A dataset hands out ``x_ds = (raw - mean_ds) / std_ds``; the encoder was pretrained on
    ``x_enc = (raw - mean_enc) / std_enc``, so ``x_enc = x_ds * std_ds / std_enc + (mean_ds -
    mean_enc) / std_enc`` (means and stds in raw units, one per band; computed in float64).

    Args:
        dataset: ``{"mean": [C], "std": [C]}`` the dataset normalised with.
        encoder: ``{"mean": [C], "std": [C]}`` recorded in the encoder file.

    Returns:
        ``(scale, shift)``, each float32 ``[C]``, or ``None`` when the two are the same (identity).

    Raises:
        ValueError: when the band counts differ, a std is not > 0, or ``mean``/``std`` is missing.
    """
    for name, norm in (("dataset", dataset), ("encoder file", encoder)):
        if not isinstance(norm, dict) or "mean" not in norm or "std" not in norm:
            raise ValueError(f"the {name}'s normalisation must be {{'mean': [...], 'std': [...]}}, got {norm!r}")
    mean_ds, std_ds = (torch.tensor(dataset[k], dtype=torch.float64).flatten() for k in ("mean", "std"))
    mean_enc, std_enc = (torch.tensor(encoder[k], dtype=torch.float64).flatten() for k in ("mean", "std"))
    if not mean_ds.numel() == std_ds.numel() == mean_enc.numel() == std_enc.numel():
        raise ValueError(
            f"the dataset's normalisation has {mean_ds.numel()} bands (std {std_ds.numel()}) but the encoder "
            f"file's has {mean_enc.numel()} (std {std_enc.numel()}); set normalization='dataset', or give the "
            "dataset the encoder's bands"
        )
    if not (bool((std_ds > 0).all()) and bool((std_enc > 0).all())):
        raise ValueError(f"normalisation stds must be > 0: dataset {std_ds.tolist()}, encoder {std_enc.tolist()}")
    if torch.equal(mean_ds, mean_enc) and torch.equal(std_ds, std_enc):
        return None
    scale = std_ds / std_enc  # C
    shift = (mean_ds - mean_enc) / std_enc  # C
    return scale.float(), shift.float()


def _check_parts(model: nn.Module | None, loss: nn.Module | None, augmentation: nn.Module | None, augment: bool | str,
                 ce_weight: float, dice_weight: float, class_weights: Any, ignore_index: int) -> None:
    """Refuse parts handed to :class:`SegmentationTask` that the options beside them contradict.

    Raises:
        ValueError: a model without ``.encoder``; ``augment`` or a CE + Dice option set beside the
            part that replaces it; a loss that skips another label than ``ignore_index``.
    """
    if model is not None and not isinstance(getattr(model, "encoder", None), nn.Module):
        raise ValueError(f"model={type(model).__name__} has no .encoder module: the task trains, loads and "
                         "writes the encoder through it")
    if augmentation is not None and augment is not True:
        raise ValueError(f"augment={augment!r} picks a preset but augmentation={type(augmentation).__name__} "
                         "replaces it: leave augment at its default")
    if loss is not None and (class_weights is not None or ce_weight != 1.0 or dice_weight != 1.0):
        raise ValueError(f"ce_weight={ce_weight}, dice_weight={dice_weight} and class_weights={class_weights!r} "
                         f"configure the built-in CE + Dice, but loss={type(loss).__name__} replaces it: set "
                         "weights in the loss's init_args (WithDice for Dice) and leave these at their defaults")
    if loss is not None and getattr(loss, "ignore_index", ignore_index) != ignore_index:
        raise ValueError(f"loss={type(loss).__name__} skips label {loss.ignore_index} but the task's "
                         f"ignore_index={ignore_index}: give both the same")


def _mask_error(batch: dict, key: str, k: int, ignore_index: int) -> ValueError:
    """The error for ``batch[key]``: a mask that is not integer, or holds labels outside 0..k-1 and ignore_index."""
    y = batch[key]  # B x H x W
    if y.is_floating_point() or y.is_complex():
        return ValueError(f"batch {key!r} has dtype {y.dtype}; masks must hold integer class ids "
                          f"(data from {batch_sources(batch)})")
    bad = ((y < 0) | (y >= k)) & (y != ignore_index)  # B x H x W
    rows = bad.flatten(1).any(1).nonzero().flatten().tolist()
    values = sorted(set(y[bad].unique()[:5].tolist()))
    return ValueError(f"batch {key!r} holds class id(s) {values} but num_classes={k}: valid labels are 0..{k - 1} "
                      f"and ignore_index={ignore_index}; data from {batch_sources(batch, rows)} (remap the mask "
                      "values in the dataset, or raise num_classes)")


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
        augment: training augmentation: a preset of
            :data:`~noisyseg.transforms.batch.SEGMENTATION_PRESETS` (``none``, ``hflip``,
            ``flips``, ``d4``, ``d4_jitter``), ``True`` (``d4_jitter``) or ``False`` (``none``).
        eval_on_clean: score validation/test against ``clean_mask`` when present.
        method: recorded in the encoder file (``supervised`` for noisy-label pretraining).
        transfer: what starts from ``encoder_path``:

            * ``"encoder"`` — the encoder only; decoder and head keep their random init;
            * ``"full"`` — encoder, decoder and segmentation head: the file must hold a decoder
              of the same type (written by this task) for the same number of classes;
            * ``"decoder_blocks:K"`` — the encoder and the first ``K`` of UNet's decoder blocks
              (``decoder.blocks.0`` .. ``K-1``, the deepest first); the head stays random, so the
              class sets may differ. UNet only: DeepLabV3+'s ASPP + one fusion block, PSPNet's
              pyramid pooling and FCN's head are not a sequence of blocks (use ``encoder`` or
              ``full``);
            * ``"auto"`` — ``full`` when the file holds a decoder of the same type for the same
              number of classes (and the same class names, when both name them) and the encoder
              is not frozen (a frozen-encoder probe measures the encoder, so its decoder starts
              fresh); else ``encoder``. One log line says which.
        normalization: which normalisation the network sees:

            * ``"encoder"`` — the inputs are mapped (per band, on the device) from the dataset's
              normalisation to the one recorded in the encoder file (:func:`input_correction`),
              and the encoder file this task writes records the encoder's;
            * ``"dataset"`` — the inputs stay as the dataset normalised them;
            * ``"auto"`` — ``encoder`` when ``encoder_path`` records a normalisation and
              ``split_normalization`` states one for every split the stage uses, else
              ``dataset``. One log line says which.
        loss: the training loss, e.g. a :mod:`noisyseg.losses.robust` loss (``class_path`` /
            ``init_args`` in YAML); ``None``: CE + Dice from ``ce_weight``, ``dice_weight`` and
            ``class_weights``, which must stay at their defaults when ``loss`` is given. A loss with
            ``set_progress`` gets ``global_step / estimated_stepping_batches`` before each step.
        encoder_lr_factor: the encoder's learning rate as a share of ``lr`` (decoder and head at
            ``lr``); e.g. ``0.1`` fine-tunes a pretrained encoder gently (see
            ``benchmarks/ab_finetune.py``). The schedule scales both groups alike.
        model: the network, ``[B, C, H, W] -> [B, num_classes, H, W]`` logits, exposing its
            encoder as ``.encoder`` (the part encoder files hold); ``decoder`` names its decoder in
            the files this task writes and for ``transfer``. ``None``:
            ``build_segmentation_model(decoder, arch, in_channels, num_classes)``.
        augmentation: ``augmentation(image [B, C, H, W], mask [B, H, W]) -> (image, mask)`` of
            every training batch; ``None``: the ``augment`` preset's
            :class:`~noisyseg.transforms.batch.SegmentationAugment`. ``augment`` must stay at its
            default when ``augmentation`` is given.
        split_normalization: ``{"train" | "val" | "test": {"mean": [C], "std": [C]} or None}``, the
            normalisation each split's dataset states, for ``normalization`` (``noisyseg fit``
            links it from the data module; ``predict`` uses ``train``'s). ``None``: none stated.
        lr, weight_decay, optimizer, warmup_fraction, channels_last, encoder_out, lr_schedule,
            input_normalization: :class:`~noisyseg.tasks.base.BaseTask` options.

    Raises:
        ValueError: for unknown names or bad counts, a ``transfer`` the file cannot serve (no
            decoder, another decoder type, another class count: naming both), or
            ``normalization="encoder"`` without a recorded normalisation; EncoderFileError for a
            mismatching file.
    """

    def __init__(
        self, decoder: str = "unet", arch: str = "resnet18", in_channels: int = 3, num_classes: int = 2,
        encoder_path: str | None = None, freeze_encoder: bool = False,
        ce_weight: float = 1.0, dice_weight: float = 1.0, class_weights: list[float] | str | None = None,
        class_names: list[str] | None = None, ignore_index: int = IGNORE_INDEX, augment: bool | str = True,
        eval_on_clean: bool = True, method: str = "supervised",
        lr: float = 1e-3, weight_decay: float = 1e-4, optimizer: str = "adamw", warmup_fraction: float = 0.05,
        channels_last: bool = True, encoder_out: str | None = None, lr_schedule: str = "warmup_cosine",
        transfer: str = "auto", normalization: str = "auto", loss: nn.Module | None = None,
        encoder_lr_factor: float = 1.0, model: nn.Module | None = None, augmentation: nn.Module | None = None,
        input_normalization: dict[str, list[float]] | None = None,
        split_normalization: dict[str, dict[str, list[float]] | None] | None = None,
    ) -> None:  # pragma: no mutate block (save_hyperparameters reads this frame; mutmut would wrap it)
        super().__init__(arch, lr, weight_decay, optimizer, warmup_fraction, channels_last, encoder_out, method,
                         lr_schedule, input_normalization)
        # modules in hparams would break weights-only checkpoint reads; linked values come from the data again
        self.save_hyperparameters(ignore=["loss", "model", "augmentation", *DATA_LINKS])
        preset = ("d4_jitter" if augment else "none") if isinstance(augment, bool) else augment
        if preset not in SEGMENTATION_PRESETS:
            raise ValueError(f"augment={augment!r}; valid: true, false or one of {list(SEGMENTATION_PRESETS)}")
        if not re.fullmatch(r"auto|encoder|full|decoder_blocks:0*[1-9][0-9]*", str(transfer)):
            raise ValueError(f"transfer={transfer!r}; valid: {list(TRANSFER_MODES)} with K an integer >= 1")
        if normalization not in NORMALIZATION_MODES:
            raise ValueError(f"normalization={normalization!r}; valid: {list(NORMALIZATION_MODES)}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class_names for num_classes={num_classes}")
        if isinstance(class_weights, str) and class_weights != "inverse_frequency":
            raise ValueError(f"class_weights={class_weights!r}; use a list, 'inverse_frequency' or null")
        if not encoder_lr_factor > 0:
            raise ValueError(f"encoder_lr_factor={encoder_lr_factor} must be > 0 (freeze_encoder: true stops its training)")
        if model is not None or loss is not None or augmentation is not None:
            _check_parts(model, loss, augmentation, augment, ce_weight, dice_weight, class_weights, ignore_index)
        self.model = model if model is not None else build_segmentation_model(decoder, arch, in_channels, num_classes)
        self.encoder = self.model.encoder
        self.encoder_source: dict[str, Any] = {"kind": "random"}
        self.transfer_used: str | None = None  # what was started from encoder_path (None: no file)
        self.encoder_normalization: dict[str, Any] | None = None  # recorded in encoder_path
        self.normalization_mode, self.normalization_used = normalization, None  # used: "encoder"/"dataset", at setup
        self._input_affine: dict[str, tuple[torch.Tensor, torch.Tensor] | None] = {}  # split -> (scale, shift)
        self.freeze_encoder, self.encoder_lr_factor = freeze_encoder, float(encoder_lr_factor)
        if encoder_path:
            self._start_from(str(encoder_path), transfer)
        elif transfer not in ("auto", "encoder") or normalization == "encoder":
            what = "normalization='encoder'" if transfer in ("auto", "encoder") else f"transfer={transfer!r}"
            raise ValueError(f"{what} needs an encoder_path to start from; none was given")
        if freeze_encoder:
            self.encoder.requires_grad_(False)
        weights = class_weights if isinstance(class_weights, list) else None
        self.loss_fn = loss if loss is not None else CEDiceLoss(ce_weight, dice_weight, weights, ignore_index)
        self.augment = augmentation if augmentation is not None or preset == "none" else SegmentationAugment(preset)
        self.class_names = class_names or [str(k) for k in range(num_classes)]
        self.ignore_index, self.eval_on_clean = ignore_index, eval_on_clean
        self.split_normalization = dict(split_normalization or {})
        self.val_cm = MulticlassConfusionMatrix(num_classes, ignore_index=ignore_index, validate_args=False)
        self.test_cm = MulticlassConfusionMatrix(num_classes, ignore_index=ignore_index, validate_args=False)
        self.val_scores: dict[str, float] = {}
        self.test_scores: dict[str, float] = {}

    # ----------------------------------------------------------------------------- transfer
    def _start_from(self, path: str, transfer: str) -> None:
        """Load the encoder file at ``path`` and the decoder part ``transfer`` asks for."""
        meta = load_encoder(self.encoder, path, self.hparams.arch)
        self.encoder_normalization = meta.get("normalization")
        if self.normalization_mode == "encoder" and self.encoder_normalization is None:
            raise ValueError(f"normalization='encoder' needs the encoder file's recorded normalisation, but encoder "
                             f"file {path} records none; use normalization='dataset' (or 'auto')")
        mode, _, blocks = transfer.partition(":")
        self.transfer_used = self._transfer(path, meta, mode, int(blocks or 0))
        self.encoder_source = {"kind": "noisyseg", "path": path, "trained": meta.get("trained"),
                               "transfer": self.transfer_used}

    def _transfer(self, path: str, meta: dict[str, Any], mode: str, blocks: int) -> str:
        """Load the decoder part ``mode`` asks for (the encoder is loaded); the mode used, logged."""
        decoder, k = self.hparams.decoder, self.hparams.num_classes
        stored_meta = meta.get("decoder")  # None: an encoder-only file
        if mode == "auto":
            mode, why = "encoder", self._auto_reason(stored_meta)
            if why is None:
                mode, why = "full", f"it holds a {decoder} decoder for the same {k} classes"
            rank_zero_info(f"transfer='auto' from {path}: {mode} ({why})")
        if mode == "encoder":
            return "encoder"
        if stored_meta is None:
            raise ValueError(f"transfer={mode!r} needs the decoder saved with the encoder, but {path} holds the "
                             "encoder only (write it with a SegmentationTask's encoder_out); use transfer='encoder'")
        if mode == "decoder_blocks" and (decoder != "unet" or stored_meta.get("type") != "unet"):
            raise ValueError(f"transfer='decoder_blocks:{blocks}' needs a UNet on both sides, but the model's decoder "
                             f"is {decoder!r} and {path} holds {stored_meta.get('type')!r}: DeepLabV3+, PSPNet and FCN "
                             "have no sequence of decoder blocks; use transfer='encoder' or 'full'")
        if stored_meta.get("type") != decoder:
            raise ValueError(f"transfer='full': {path} holds a {stored_meta.get('type')!r} decoder but the model's "
                             f"is {decoder!r}; use transfer='encoder'")
        if mode == "full" and stored_meta.get("num_classes") != k:
            raise ValueError(f"transfer='full': {path} holds a head for {stored_meta.get('num_classes')} classes but "
                             f"the model has num_classes={k}; use transfer='encoder' (or 'decoder_blocks:K' for UNet)")
        state = read_decoder(path)[0]  # type: ignore[index]  # stored_meta is not None
        if mode == "decoder_blocks":
            n = len(self.model.decoder.blocks)
            if blocks > n:
                raise ValueError(f"transfer='decoder_blocks:{blocks}' but the UNet decoder has {n} blocks")
            prefixes = tuple(f"decoder.blocks.{i}." for i in range(blocks))
            state = {name: v for name, v in state.items() if name.startswith(prefixes)}
        else:
            prefixes = tuple(f"{m}." for m in {name.split(".", 1)[0] for name in self.model.state_dict()} - {"encoder"})
            stored_names, names = stored_meta.get("class_names"), self.hparams.class_names
            if stored_names is not None and names is not None and list(stored_names) != list(names):
                rank_zero_warn(f"transfer='full': {path} was trained on classes {stored_names}, the model names {names}")
        self._load_part(state, prefixes, path)
        return mode if mode == "full" else f"decoder_blocks:{blocks}"

    def _auto_reason(self, stored: dict[str, Any] | None) -> str | None:
        """Why ``auto`` falls back to the encoder only (``None``: full transfer fits)."""
        decoder, k, names = self.hparams.decoder, self.hparams.num_classes, self.hparams.class_names
        if stored is None:
            return "the file holds no decoder"
        if self.freeze_encoder:
            return "the encoder is frozen: a probe's decoder starts fresh"
        if stored.get("type") != decoder:
            return f"the file's decoder is {stored.get('type')!r}, the model's {decoder!r}"
        if stored.get("num_classes") != k:
            return f"the file's head has {stored.get('num_classes')} classes, the model {k}"
        if stored.get("class_names") is not None and names is not None and list(stored["class_names"]) != list(names):
            return f"the file's classes are {stored['class_names']}, the model's {names}"
        return None

    def _load_part(self, state: dict[str, torch.Tensor], prefixes: tuple[str, ...], path: str) -> None:
        """Copy ``state`` into every model tensor under ``prefixes``: same keys, same shapes, or an error."""
        model = self.model.state_dict()
        wanted = {name for name in model if name.startswith(prefixes)}
        missing, unexpected = sorted(wanted - set(state)), sorted(set(state) - wanted)
        wrong = sorted(name for name in wanted & set(state) if state[name].shape != model[name].shape)
        if missing or unexpected or wrong:
            raise EncoderFileError(f"the decoder in {path} does not fit the model: missing {missing[:4]}, "
                                   f"unexpected {unexpected[:4]}, wrong shape {wrong[:4]}")
        with torch.no_grad():
            for name, v in state.items():
                model[name].copy_(v)  # state_dict tensors share storage with the parameters and buffers

    def export_encoder(self, path: str) -> None:
        """Write the encoder file with this network's decoder and head (for ``transfer='full'``)."""
        rest = {k: v for k, v in self.model.state_dict().items() if not k.startswith("encoder.")}
        head = {"type": self.hparams.decoder, "num_classes": self.hparams.num_classes,
                "class_names": self.hparams.class_names}
        save_encoder(path, self.encoder, self.arch, self.normalization(), self.training_summary(),
                     self.encoder_source, decoder_state=rest, decoder_meta=head)

    # ----------------------------------------------------------------------------- normalisation
    def normalization(self) -> dict[str, Any] | None:
        """The inputs' normalisation, recorded in the encoder file this task writes."""
        return self.encoder_normalization if self.normalization_used == "encoder" else super().normalization()

    def _stated_normalizations(self, splits: tuple[str, ...]) -> dict[str, dict[str, Any] | None]:
        """The normalisation each of ``splits`` states (``None``: none), from ``split_normalization``.

        ``predict`` takes ``train``'s (the DataModule has no predict set); a split the data holds no
        dataset for is left out; with nothing given, every split states none.
        """
        given = self.split_normalization
        if not given:
            return dict.fromkeys(splits)
        keys = {split: "train" if split == "predict" else split for split in splits}
        return {split: given[key] for split, key in keys.items() if key in given}

    def setup(self, stage: str) -> None:
        super().setup(stage)
        self.normalization_used, self._input_affine = "dataset", {}
        if self.normalization_mode != "dataset" and self.encoder_normalization is not None:
            self._map_inputs(STAGE_SPLITS.get(stage, ("predict",)))

    def _map_inputs(self, splits: tuple[str, ...]) -> None:
        """Map the inputs of ``splits`` to the encoder file's normalisation where all of them state theirs."""
        stated = self._stated_normalizations(splits)
        unstated = [split for split, norm in stated.items() if norm is None]
        path = self.encoder_source.get("path")
        if unstated and self.normalization_mode == "encoder":
            raise ValueError(f"normalization='encoder' maps the dataset's normalisation to the one recorded in {path}, "
                             f"but split(s) {', '.join(unstated)} state none (split_normalization="
                             f"{self.split_normalization}; noisyseg fit links it from the datasets' 'normalization' "
                             "mean/std attribute); use normalization='dataset'")
        if unstated:  # auto: the inputs stay in the dataset's normalisation
            rank_zero_info(f"normalization='auto': dataset (split(s) {', '.join(unstated)} state no normalisation)")
            return
        self.normalization_used = "encoder"
        self._input_affine = {split: input_correction(norm, self.encoder_normalization)  # type: ignore[arg-type]
                              for split, norm in stated.items()}
        rank_zero_info(f"normalization={self.normalization_mode!r}: inputs mapped to the encoder file's "
                       f"normalisation {self.encoder_normalization} (from {path})")

    def _batch_split(self) -> str | None:
        t = self._trainer
        if t is None:  # no loop: no split to map for
            return None
        if t.training:
            return "train"
        if t.validating or t.sanity_checking:
            return "val"
        return "test" if t.testing else "predict"

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        affine = self._input_affine.get(self._batch_split()) if self._input_affine else None  # None: nothing to map
        if affine is not None and IMAGE in batch:
            x = batch[IMAGE]  # B x C x H x W, the dataset's normalisation
            scale, shift = (t.to(x.device, x.dtype).view(1, -1, 1, 1) for t in affine)  # 1 x C x 1 x 1
            batch[IMAGE] = torch.addcmul(shift, x, scale)  # the encoder file's normalisation
        return super().on_after_batch_transfer(batch, dataloader_idx)  # channels-last

    # ----------------------------------------------------------------------------- loop
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
        """``[K]`` int64 labelled pixels per class of the training set (:func:`~noisyseg.data.stats.class_counts`)."""
        counts = class_counts(self.trainer.datamodule.train_set, self.hparams.num_classes, self.ignore_index)
        return torch.from_numpy(counts)

    def on_before_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        batch = super().on_before_batch_transfer(batch, dataloader_idx)  # pixels and band count
        # a label >= num_classes would end in an index assert inside cross_entropy (a fatal device-side one on CUDA)
        k, ignore = self.hparams.num_classes, self.ignore_index
        for key in (MASK, CLEAN_MASK):
            y = batch.get(key) if isinstance(batch, dict) else None  # B x H x W
            if isinstance(y, torch.Tensor) and (y.is_floating_point() or y.is_complex()
                                                or bool((((y < 0) | (y >= k)) & (y != ignore)).any())):
                raise _mask_error(batch, key, k, ignore)
        return batch

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        # Lightning restores module modes itself (not through train()), so re-assert it per batch
        if self.freeze_encoder:
            self.encoder.eval()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x, y = batch[IMAGE], batch[MASK]  # B x C x H x W, B x H x W
        if self.augment is not None:
            x, y = self.augment(x, y)
        set_progress = getattr(self.loss_fn, "set_progress", None)  # e.g. SmallLossSelection's ramp
        if set_progress is not None and self._trainer is not None:
            set_progress(min(1.0, self.global_step / max(1, self.trainer.estimated_stepping_batches)))
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
        # noisyseg.cli writes these scores to the run's results.json
        self.log_dict({f"test/{k}": v for k, v in self.test_scores.items()}, sync_dist=True)

    def predict_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self(batch[IMAGE]).argmax(1)

    def trainable_parameters(self) -> list[nn.Parameter] | list[dict[str, Any]]:
        params = [p for p in self.parameters() if p.requires_grad]
        if self.encoder_lr_factor == 1.0:
            return params
        enc = {id(p) for p in self.encoder.parameters()}
        groups = [{"params": [p for p in params if id(p) in enc], "lr": self.lr * self.encoder_lr_factor},
                  {"params": [p for p in params if id(p) not in enc]}]
        return [g for g in groups if g["params"]]
