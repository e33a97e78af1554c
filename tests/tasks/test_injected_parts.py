"""Tasks wire the parts handed to them: encoder, heads, loss and augmentation from a config.

Each task takes its parts as constructor arguments that a YAML config replaces with
``class_path`` / ``init_args`` (as torchgeo's trainers take ``augmentation1/2``); left out, each
part is built as before from the string and number options, so the first training step gives the
same loss as before the parts became arguments (values recorded from that code, same seeds). The
data-derived arguments (normalisation, MoCo's batch and training-set size) are linked from the data
module by :func:`~noisyseg.tasks.base.link_data_arguments`, as ``noisyseg fit`` does.
"""

from __future__ import annotations

import pytest
import torch
from jsonargparse import ArgumentParser
from lightning import LightningDataModule
from torch import nn

from noisyseg.data import DataModule, VTSPairs, VTSSegmentation
from noisyseg.data.loading import IMAGE, IMAGE2, MASK, MASK2
from noisyseg.losses.dense import downsample_labels
from noisyseg.models.networks import last_features
from noisyseg.tasks import DenseContrastTask, DINOTask, MoCoTask, SegmentationTask, SimCLRTask
from noisyseg.tasks.base import BaseTask
from noisyseg.tasks.base import link_data_arguments

HERE = __name__  # class paths of the stubs below, as a config names them
CLOSE = {"rtol": 1e-4, "atol": 1e-5}  # same network, another batch composition of the convolutions


class RecordingView(nn.Module):
    """A deterministic augmentation: flips image (and mask) left-right and records each input."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[torch.Tensor] = []

    def forward(self, image, mask=None, generator=None):
        self.inputs.append(image)
        return image.flip(-1), (mask.flip(-1) if mask is not None else None)


class RecordingLoss(nn.Module):
    """Records its arguments; the loss is the mean of the first one scaled by ``scale``."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale
        self.calls: list[tuple] = []

    def forward(self, *args):
        self.calls.append(args)
        return args[0].float().mean() * self.scale


class PooledLinear(nn.Module):
    """A head: global average pool, one linear layer; records its outputs. ``[B,C,h,w] -> [B,D]``."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)
        self.outputs: list[torch.Tensor] = []

    def forward(self, x):
        z = self.linear(x.mean(dim=(2, 3)))
        self.outputs.append(z)
        return z


def batch(n: int = 4, size: int = 32) -> dict:
    g = torch.Generator().manual_seed(3)
    image, image2 = (torch.randn(n, 3, size, size, generator=g) for _ in range(2))
    mask, mask2 = (torch.randint(0, 2, (n, size, size), generator=g) for _ in range(2))
    return {IMAGE: image, IMAGE2: image2, MASK: mask, MASK2: mask2}


def build(yaml: str) -> BaseTask:
    """The task a ``model:`` YAML section names, parsed and built as LightningCLI does."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(BaseTask, "model")
    return parser.instantiate(parser.parse_string(yaml)).model


# ------------------------------------------------------------------------------ parts from YAML
def test_yaml_replaces_mocos_loss_augmentation_and_head(one_thread) -> None:
    task = build(f"""
model:
  class_path: noisyseg.tasks.MoCoTask
  init_args:
    queue_size: 16
    out_dim: 8
    key_bn_chunks: 2
    channels_last: false
    loss: {{class_path: {HERE}.RecordingLoss, init_args: {{scale: 2.0}}}}
    augmentation: {{class_path: {HERE}.RecordingView}}
    projection_head: {{class_path: {HERE}.PooledLinear, init_args: {{in_dim: 512, out_dim: 8}}}}
""")
    assert isinstance(task.loss_fn, RecordingLoss) and isinstance(task.view, RecordingView)
    assert task.query.head is not None and isinstance(task.query.head, PooledLinear)
    assert "loss" not in task.hparams and "projection_head" not in task.hparams  # modules stay out of checkpoints
    b = batch()
    queue = task.queue.queue.clone()
    loss = task.training_step(b, 0)
    view = task.view
    assert len(view.inputs) == 2 and view.inputs[0] is b[IMAGE] and view.inputs[1] is b[IMAGE2]  # one view each
    (q, k, negatives), = task.loss_fn.calls
    assert q is task.query.head.outputs[0]  # the query is the given head's output on view 1
    torch.testing.assert_close(q, task.query.head(last_features(task.encoder, b[IMAGE].flip(-1))))
    assert k.shape == (4, 8) and torch.equal(negatives, queue)
    assert loss.item() == pytest.approx(2.0 * q.mean().item(), rel=1e-6)


@pytest.mark.parametrize("name", ["simclr", "dino", "dense"])
def test_yaml_replaces_the_other_tasks_loss_augmentation_and_head(name, one_thread) -> None:
    head = f"{{class_path: {HERE}.PooledLinear, init_args: {{in_dim: 512, out_dim: 8}}}}"
    parts = {
        "simclr": ("SimCLRTask", f"augmentation: {{class_path: {HERE}.RecordingView}}\n    projection_head: {head}"),
        "dino": ("DINOTask", f"global_augmentation: {{class_path: {HERE}.RecordingView}}\n    head: {head}\n"
                 "    n_local_crops: 0\n    freeze_last_layer_epochs: 0"),
        "dense": ("DenseContrastTask", f"augmentation: {{class_path: {HERE}.RecordingView}}\n    projection_head: "
                  "{class_path: torch.nn.Conv2d, init_args: {in_channels: 512, out_channels: 8, kernel_size: 1}}\n"
                  "    feature_size: 4"),
    }[name]
    task = build(f"""
model:
  class_path: noisyseg.tasks.{parts[0]}
  init_args:
    channels_last: false
    loss: {{class_path: {HERE}.RecordingLoss}}
    {parts[1]}
""")
    b = batch()
    task.eval()  # BatchNorm's running statistics: a view gives the same features alone as in the step's batch
    loss = task.training_step(b, 0)
    view = task.global_view if name == "dino" else task.view
    assert len(view.inputs) == 2 and view.inputs[0] is b[IMAGE] and view.inputs[1] is b[IMAGE2]
    (args,) = task.loss_fn.calls
    x1 = b[IMAGE].flip(-1)  # view 1 as the recording view makes it
    if name == "simclr":
        assert isinstance(task.model.head, PooledLinear) and args[0].shape == (4, 8)
        z1 = task.model.head(last_features(task.encoder, x1))
        torch.testing.assert_close(args[0], z1, **CLOSE)  # rows of view 1 from the given head
    elif name == "dino":
        assert isinstance(task.student.head, PooledLinear)
        s1 = task.student.head(last_features(task.encoder, x1))
        assert args[0].shape == (2, 4, 8)  # 2 global views x B x the given head's 8 outputs
        torch.testing.assert_close(args[0][0], s1, **CLOSE)
    else:
        assert isinstance(task.projection, nn.Conv2d) and args[0].shape == (4, 8, 4, 4)
        f = nn.functional.interpolate(last_features(task.encoder, x1), size=(4, 4), mode="bilinear",
                                      align_corners=False)  # B x 512 x 4 x 4, as the task resizes
        torch.testing.assert_close(args[0], task.projection(f), **CLOSE)  # B x 8 x 4 x 4 from the given 1x1 conv
        assert torch.equal(args[2], downsample_labels(b[MASK].flip(-1), 4))  # labels moved with the view
    assert loss.item() == pytest.approx(args[0].float().mean().item(), rel=1e-6)


def test_yaml_replaces_the_segmentation_augmentation_and_loss(one_thread) -> None:
    task = build(f"""
model:
  class_path: noisyseg.tasks.SegmentationTask
  init_args:
    channels_last: false
    loss: {{class_path: {HERE}.RecordingLoss}}
    augmentation: {{class_path: {HERE}.RecordingView}}
""")
    b = batch()
    task.model.eval()  # fixed BatchNorm statistics: the same logits in and after the step
    loss = task.training_step(b, 0)
    assert len(task.augment.inputs) == 1 and task.augment.inputs[0] is b[IMAGE]
    logits, target = task.loss_fn.calls[0]
    assert torch.equal(target, b[MASK].flip(-1))  # the augmented mask
    torch.testing.assert_close(logits, task(b[IMAGE].flip(-1)))
    assert loss.item() == pytest.approx(logits.mean().item(), rel=1e-6)
    with pytest.raises(ValueError, match="augment='hflip' picks a preset but augmentation=RecordingView"):
        SegmentationTask(augment="hflip", augmentation=RecordingView())
    with pytest.raises(ValueError, match="model=Linear has no .encoder"):
        SegmentationTask(model=nn.Linear(2, 2))


# ------------------------------------------------------------------------------ defaults unchanged
# first-step losses of the tasks with every part left at its default (built from the options),
# recorded from the code in which the tasks built their parts themselves (seed 0 for the weights,
# seed 1 for the augmentations, the batch above, one thread)
SMALL = {"channels_last": False}
FIRST_STEP = {
    "moco": (lambda: MoCoTask(hidden_dim=32, out_dim=16, queue_size=16, key_bn_chunks=2, **SMALL), 1.364554762840271),
    "simclr": (lambda: SimCLRTask(hidden_dim=32, out_dim=16, **SMALL), 1.9654433727264404),
    "dino": (lambda: DINOTask(out_dim=16, hidden_dim=32, bottleneck_dim=8, n_local_crops=2, **SMALL),
             4.846252918243408),
    "dense": (lambda: DenseContrastTask(proj_dim=8, feature_size=4, **SMALL), 5.069191932678223),
    "dense_cross": (lambda: DenseContrastTask(proj_dim=8, feature_size=4, mode="cross", **SMALL), 5.739090919494629),
    "seg": (lambda: SegmentationTask(num_classes=2, **SMALL), 1.3281431198120117),
    "seg_hflip": (lambda: SegmentationTask(num_classes=2, augment="hflip", **SMALL), 1.2952078580856323),
}


@pytest.mark.parametrize("name", sorted(FIRST_STEP))
def test_default_parts_give_the_recorded_first_step_loss(name, one_thread) -> None:
    make, expected = FIRST_STEP[name]
    torch.manual_seed(0)
    task = make().train()
    torch.manual_seed(1)
    loss = task.training_step(batch(), 0)
    assert loss.item() == pytest.approx(expected, rel=1e-6, abs=1e-7)


# ------------------------------------------------------------------------------ links from the data
class _Bare(LightningDataModule):
    """A data module that states nothing the links read."""


def _linked(model_yaml: str, data: LightningDataModule) -> BaseTask:
    """Build the model with :func:`link_data_arguments` applied from ``data`` (as noisyseg fit does)."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(BaseTask, "model")
    parser.add_argument("--data", type=LightningDataModule)
    link_data_arguments(parser)
    cfg = parser.parse_string(model_yaml)
    cfg.data = data  # an instance, as LightningCLI holds it once built
    return parser.instantiate(cfg).model


def test_links_give_the_task_the_datas_normalisation_batch_and_size() -> None:
    train, val = VTSPairs("train", length=20, size=32), VTSPairs("val", length=6, size=32)
    data = DataModule(train=train, val=val, batch_size=3)
    task = _linked("model: {class_path: noisyseg.tasks.MoCoTask, init_args: {out_dim: 8, hidden_dim: 16}}", data)
    assert task.input_normalization == train.normalization is not None
    assert (task.batch_size, task.train_size) == (3, 20)
    seg = _linked("model: {class_path: noisyseg.tasks.SegmentationTask}",
                  DataModule(train=VTSSegmentation("train", length=4, size=32), batch_size=2))
    assert seg.split_normalization == {"train": seg.input_normalization} and seg.input_normalization is not None
    assert not hasattr(seg, "batch_size")  # a link whose target the task does not take is skipped
    bare = _linked("model: {class_path: noisyseg.tasks.MoCoTask, init_args: {out_dim: 8, hidden_dim: 16}}", _Bare())
    assert (bare.input_normalization, bare.batch_size, bare.train_size) == (None, None, None)


def _moco_run(root, length: int, max_steps: int) -> dict:
    """A tiny ``noisyseg fit`` config: MoCo with a null queue on ``length`` VTS pairs, batches of 4."""
    return {
        "seed_everything": 0,
        "trainer": {"max_steps": max_steps, "max_epochs": 1000, "default_root_dir": str(root), "logger": False,
                    "enable_progress_bar": False, "precision": "32-true", "enable_model_summary": False},
        "model": {"class_path": "noisyseg.tasks.MoCoTask",
                  "init_args": {"hidden_dim": 16, "out_dim": 8, "key_bn_chunks": 1, "queue_size": None,
                                "channels_last": False, "encoder_out": str(root / "encoder.safetensors")}},
        "data": {"class_path": "noisyseg.data.DataModule", "init_args": {
            "batch_size": 4, "drop_last": True,
            "train": {"class_path": "noisyseg.data.VTSPairs",
                      "init_args": {"split": "train", "length": length, "size": 32}}}},
    }


def test_noisyseg_fit_links_the_data_and_a_resume_takes_the_checkpoints_queue(tmp_path, one_thread) -> None:
    from noisyseg.runfiles import read_encoder
    from noisyseg.cli import run_config

    first = run_config(_moco_run(tmp_path, length=16, max_steps=2), quiet=True)
    task = first["model"]
    assert (task.batch_size, task.train_size) == (4, 16)
    assert task.queue.size == 8  # half of 16 = 8, a multiple of the global batch 4
    norm = VTSPairs("train", length=1, size=32).normalization
    assert read_encoder(tmp_path / "encoder.safetensors")[1]["normalization"] == norm  # linked, then written
    # resumed on a larger training set: setup sizes a 20-key queue, the checkpoint's 8 keys replace it
    resumed = run_config(_moco_run(tmp_path, length=40, max_steps=3), quiet=True, ckpt_path="last")["model"]
    assert resumed.train_size == 40 and resumed.queue.size == 8 and resumed.global_step == 3
