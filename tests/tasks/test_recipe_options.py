"""Recipe options of the tasks: lr schedule, augmentation preset, transfer mode, input normalisation."""

import inspect
import logging
from contextlib import contextmanager

import lightning as L
import pytest
import torch
from jsonargparse import ArgumentParser
from torch import nn
from torch.utils.data import DataLoader, Dataset

from noisyseg.data import DataModule, VTSSegmentation
from noisyseg.data.loading import IMAGE
from noisyseg.data.vts import VTS_MEAN, VTS_STD
from noisyseg.models.networks import build_encoder
from noisyseg.runfiles import read_decoder, read_encoder, save_encoder
from noisyseg.tasks import DenseContrastTask, DINOTask, MoCoTask, SegmentationTask
from noisyseg.tasks.base import LR_SCHEDULES, BaseTask, constant, warmup_constant, warmup_cosine
from noisyseg.tasks.base import data_links
from noisyseg.tasks.segmentation import input_correction
from noisyseg.transforms.batch import SEGMENTATION_PRESETS


def _trainer(steps: int) -> L.Trainer:
    return L.Trainer(
        max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, precision="32-true", num_sanity_val_steps=0,
    )


def _vts_data(length: int = 4, val: bool = False, **kw) -> DataModule:
    mk = lambda split: VTSSegmentation(split, length=length, size=32, **kw)  # noqa: E731
    return DataModule(train=mk("train"), val=mk("val") if val else None, batch_size=2)


@contextmanager
def _info_lines():
    """Lines logged through Lightning's rank-zero logger (it does not propagate to pytest's caplog)."""
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = logger.level
    logger.setLevel(logging.INFO)  # another test may have raised it (e.g. a quiet Trainer)
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _rest(task: SegmentationTask) -> dict[str, torch.Tensor]:
    """Decoder + head tensors of a segmentation task's model."""
    return {k: v for k, v in task.model.state_dict().items() if not k.startswith("encoder.")}


# ------------------------------------------------------------------------------------------ lr schedule


def test_schedule_factors_at_chosen_steps():
    # warm-up 4 of 100 steps: factors (s + 1) / 4 during warm-up
    assert [warmup_constant(s, 100, 4) for s in (0, 1, 2, 3, 4, 50, 99)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0]
    assert [constant(s, 100, 4) for s in (0, 3, 50, 99)] == [1.0, 1.0, 1.0, 1.0]  # warm-up ignored
    assert warmup_constant(0, 100, 0) == 1.0
    # cosine after warm-up: half-way through the remaining 96 steps (step 52) the factor is 0.5
    assert warmup_cosine(0, 100, 4) == 0.25 and warmup_cosine(4, 100, 4) == 1.0
    assert warmup_cosine(52, 100, 4) == pytest.approx(0.5, abs=1e-12)
    assert warmup_cosine(100, 100, 4) == pytest.approx(0.0, abs=1e-12)
    assert sorted(LR_SCHEDULES) == ["constant", "warmup_constant", "warmup_cosine"]


class _TinyTask(BaseTask):
    """A 1x1 convolution trained on random images: only the optimiser and its schedule matter."""

    def __init__(self, **kw) -> None:
        super().__init__(channels_last=False, **kw)
        self.encoder = nn.Conv2d(3, 2, 1)
        self.lrs: list[float] = []

    def on_train_batch_start(self, batch, batch_idx) -> None:
        self.lrs.append(self.trainer.optimizers[0].param_groups[0]["lr"])

    def training_step(self, batch, batch_idx):
        return self.encoder(batch[IMAGE]).square().mean()


@pytest.mark.parametrize("schedule", sorted(LR_SCHEDULES))
def test_optimizer_lr_follows_the_schedule_in_a_fit(schedule, one_thread):
    steps, lr = 6, 0.01
    task = _TinyTask(lr=lr, lr_schedule=schedule, warmup_fraction=0.5)  # warm-up: int(0.5 * 6) = 3 steps
    data = DataLoader([{IMAGE: torch.randn(3, 4, 4)} for _ in range(12)], batch_size=2)
    trainer = _trainer(steps)
    trainer.fit(task, train_dataloaders=data)
    factor = LR_SCHEDULES[schedule]
    assert task.lrs == pytest.approx([lr * factor(s, steps, 3) for s in range(steps)], rel=1e-12)
    after = trainer.optimizers[0].param_groups[0]["lr"]  # after N scheduler steps: lr * f(N)
    assert after == pytest.approx(lr * factor(steps, steps, 3), rel=1e-12, abs=1e-15)
    expected_first = {"constant": lr, "warmup_constant": lr / 3, "warmup_cosine": lr / 3}[schedule]
    assert task.lrs[0] == pytest.approx(expected_first, rel=1e-12)


def test_every_task_takes_lr_schedule(one_thread):
    small = {
        SegmentationTask: {},
        MoCoTask: {"hidden_dim": 32, "out_dim": 8, "queue_size": 8},
        DINOTask: {"out_dim": 16, "hidden_dim": 32, "bottleneck_dim": 8},
        DenseContrastTask: {"proj_dim": 8},
    }
    for cls, kw in small.items():
        assert inspect.signature(cls).parameters["lr_schedule"].default == "warmup_cosine", cls
        task = cls(lr_schedule="constant", **kw)
        assert task.lr_schedule == "constant" and task.hparams.lr_schedule == "constant", cls
        with pytest.raises(ValueError, match="lr_schedule='step'.*constant.*warmup_constant.*warmup_cosine"):
            cls(lr_schedule="step", **kw)


def test_options_are_yaml_keys():
    # LightningCLI builds its parser from the signature, as here
    parser = ArgumentParser()
    parser.add_class_arguments(SegmentationTask, "model")
    cfg = parser.parse_string(
        "model:\n  lr_schedule: constant\n  augment: hflip\n  transfer: decoder_blocks:2\n  normalization: dataset\n"
    )
    assert cfg.model.lr_schedule == "constant" and cfg.model.augment == "hflip"
    assert cfg.model.transfer == "decoder_blocks:2" and cfg.model.normalization == "dataset"
    assert parser.parse_string("model:\n  augment: false\n").model.augment is False


# ------------------------------------------------------------------------------------------ augmentation


def test_augment_option_picks_the_preset():
    assert SegmentationTask(augment=True).augment.preset == "d4_jitter"
    assert SegmentationTask(augment=False).augment is None
    for name in SEGMENTATION_PRESETS:
        aug = SegmentationTask(augment=name).augment
        assert (aug is None) if name == "none" else (aug.preset == name), name
    with pytest.raises(ValueError, match="augment='rot90'.*'none', 'hflip', 'flips', 'd4', 'd4_jitter'"):
        SegmentationTask(augment="rot90")


def test_training_step_applies_the_preset(one_thread):
    task = SegmentationTask(augment="hflip")
    seen = []

    def spy(x, y):
        seen.append(task.augment.preset)
        return x.flip(-1), y.flip(-1)

    class Spy(nn.Module):  # the task's augmentation is a module (a YAML class_path may replace it)
        preset = "hflip"

        def forward(self, x, y):
            return spy(x, y)

    task.augment = Spy()
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 2, (2, 32, 32))
    task.model.eval()
    loss = task.training_step({IMAGE: x, "mask": y}, 0)
    assert seen == ["hflip"]
    assert loss.item() == pytest.approx(task.loss_fn(task(x.flip(-1)), y.flip(-1)).item(), rel=1e-6)


# ------------------------------------------------------------------------------------------ transfer


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A UNet pretrained for 2 steps on 2 named classes; its file holds encoder, decoder and head."""
    torch.manual_seed(0)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("pre") / "enc.safetensors"
    task = SegmentationTask(num_classes=2, class_names=["bg", "fg"], encoder_out=str(out), augment=False)
    _trainer(2).fit(task, datamodule=_vts_data())
    torch.set_num_threads(before)
    return task, str(out)


def test_file_holds_decoder_and_readers_see_the_encoder_only(pretrained):
    task, path = pretrained
    state, meta = read_encoder(path)
    assert set(state) == set(task.encoder.state_dict())
    dec_state, dec_meta = read_decoder(path)
    assert dec_meta == {"type": "unet", "num_classes": 2, "class_names": ["bg", "fg"],
                        "modules": ["decoder", "segmentation_head"]}
    for k, v in _rest(task).items():
        assert torch.equal(dec_state[k], v.contiguous()), k
    assert set(dec_state) == set(_rest(task))


def test_full_transfer_reproduces_the_pretrained_logits(pretrained, one_thread):
    pre, path = pretrained
    with _info_lines() as lines:
        task = SegmentationTask(num_classes=2, encoder_path=path, transfer="full")
    assert task.transfer_used == "full" and task.encoder_source["transfer"] == "full"
    assert lines == []  # only 'auto' logs its choice
    for k, v in pre.model.state_dict().items():
        assert torch.equal(task.model.state_dict()[k], v), k
    x = torch.randn(2, 3, 32, 32)
    a, b = pre.model.to(memory_format=torch.contiguous_format).eval(), task.model.eval()
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_encoder_transfer_leaves_decoder_at_its_fresh_init(pretrained):
    _, path = pretrained
    torch.manual_seed(7)
    task = SegmentationTask(num_classes=2, encoder_path=path, transfer="encoder")
    torch.manual_seed(7)
    fresh = SegmentationTask(num_classes=2)
    for k, v in _rest(fresh).items():
        assert torch.equal(_rest(task)[k], v), k
    state, _ = read_encoder(path)
    assert all(torch.equal(task.encoder.state_dict()[k], v) for k, v in state.items())
    assert task.transfer_used == "encoder"


def test_full_transfer_refuses_what_the_file_cannot_serve(pretrained, tmp_path):
    _, path = pretrained
    with pytest.raises(ValueError, match="head for 2 classes but the model has num_classes=3"):
        SegmentationTask(num_classes=3, encoder_path=path, transfer="full")
    with pytest.raises(ValueError, match="holds a 'unet' decoder but the model's is 'pspnet'"):
        SegmentationTask(decoder="pspnet", num_classes=2, encoder_path=path, transfer="full")
    bare = save_encoder(tmp_path / "bare.safetensors", build_encoder("resnet18", 3), "resnet18")
    with pytest.raises(ValueError, match="holds the encoder only"):
        SegmentationTask(encoder_path=str(bare), transfer="full")
    with pytest.raises(ValueError, match="needs an encoder_path"):
        SegmentationTask(transfer="full")
    with pytest.raises(ValueError, match="transfer='all'; valid: .*'full'.*'decoder_blocks:K'"):
        SegmentationTask(transfer="all")


@pytest.mark.parametrize(
    "kw, chosen, why",
    [
        ({"num_classes": 2}, "full", "unet decoder for the same 2 classes"),
        ({"num_classes": 2, "class_names": ["bg", "fg"]}, "full", "same 2 classes"),
        ({"num_classes": 3}, "encoder", "head has 2 classes, the model 3"),
        ({"num_classes": 2, "class_names": ["water", "land"]}, "encoder", "classes are ['bg', 'fg']"),
        ({"num_classes": 2, "decoder": "fcn"}, "encoder", "decoder is 'unet', the model's 'fcn'"),
        ({"num_classes": 2, "freeze_encoder": True}, "encoder", "encoder is frozen"),
    ],
)
def test_auto_transfer_picks_full_only_when_everything_matches(pretrained, kw, chosen, why):
    pre, path = pretrained
    with _info_lines() as lines:
        task = SegmentationTask(encoder_path=path, **kw)  # transfer="auto" by default
    assert task.transfer_used == chosen
    assert len(lines) == 1 and f": {chosen} (" in lines[0] and why in lines[0], lines
    head_equal = torch.equal(task.model.state_dict().get("segmentation_head.0.bias", torch.zeros(0)),
                             pre.model.state_dict()["segmentation_head.0.bias"])
    assert head_equal == (chosen == "full")


def test_auto_transfer_from_an_encoder_only_file(tmp_path):
    bare = save_encoder(tmp_path / "bare.safetensors", build_encoder("resnet18", 3), "resnet18")
    with _info_lines() as lines:
        task = SegmentationTask(encoder_path=str(bare))
    assert task.transfer_used == "encoder" and "encoder (the file holds no decoder)" in lines[0]


def test_decoder_blocks_transfer_loads_the_first_k_blocks(pretrained):
    pre, path = pretrained
    torch.manual_seed(3)
    task = SegmentationTask(num_classes=3, encoder_path=path, transfer="decoder_blocks:2")
    torch.manual_seed(3)
    fresh = SegmentationTask(num_classes=3)
    assert task.transfer_used == "decoder_blocks:2"
    got, pre_state, fresh_state = _rest(task), _rest(pre), _rest(fresh)
    for k, v in got.items():
        from_file = k.startswith(("decoder.blocks.0.", "decoder.blocks.1."))
        assert torch.equal(v, (pre_state if from_file else fresh_state)[k]), k
    assert any(k.startswith("decoder.blocks.1.") for k in got) and any(k.startswith("decoder.blocks.2.") for k in got)
    with pytest.raises(ValueError, match="needs a UNet on both sides.*'deeplabv3plus'"):
        SegmentationTask(decoder="deeplabv3plus", encoder_path=path, transfer="decoder_blocks:2")
    with pytest.raises(ValueError, match="decoder_blocks:9.*has 5 blocks"):
        SegmentationTask(encoder_path=path, transfer="decoder_blocks:9")
    with pytest.raises(ValueError, match="integer >= 1"):
        SegmentationTask(encoder_path=path, transfer="decoder_blocks:x")


# ------------------------------------------------------------------------------------------ normalisation


def test_input_correction_values():
    dataset, encoder = {"mean": [10.0, 20.0], "std": [2.0, 4.0]}, {"mean": [12.0, 10.0], "std": [1.0, 5.0]}
    scale, shift = input_correction(dataset, encoder)
    # scale = std_ds / std_enc, shift = (mean_ds - mean_enc) / std_enc, by hand
    assert scale.tolist() == [2.0, 0.800000011920929] and shift.tolist() == [-2.0, 2.0]
    raw = torch.rand(3, 2, 5, 5) * 50  # B x C x H x W in raw units
    x_ds = (raw - torch.tensor([10.0, 20.0]).view(1, 2, 1, 1)) / torch.tensor([2.0, 4.0]).view(1, 2, 1, 1)
    x_enc = (raw - torch.tensor([12.0, 10.0]).view(1, 2, 1, 1)) / torch.tensor([1.0, 5.0]).view(1, 2, 1, 1)
    assert torch.allclose(x_ds * scale.view(1, 2, 1, 1) + shift.view(1, 2, 1, 1), x_enc, atol=1e-5)
    assert input_correction(dataset, dict(dataset)) is None
    with pytest.raises(ValueError, match="normalisation has 2 bands.*encoder file's has 3"):
        input_correction(dataset, {"mean": [0.0] * 3, "std": [1.0] * 3})


class _Spy(SegmentationTask):
    """Records each batch's image as the dataset gave it and as the network sees it."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.given: list[torch.Tensor] = []
        self.seen: list[torch.Tensor] = []

    def on_before_batch_transfer(self, batch, dataloader_idx):
        self.given.append(batch[IMAGE].clone())
        return super().on_before_batch_transfer(batch, dataloader_idx)

    def training_step(self, batch, batch_idx):
        self.seen.append(batch[IMAGE].clone())
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        self.seen.append(batch[IMAGE].clone())
        return super().validation_step(batch, batch_idx)


ENC_NORM = {"mean": [0.2, 0.3, 0.4], "std": [0.5, 0.25, 1.0]}


@pytest.fixture
def normalised_file(tmp_path):
    return str(save_encoder(tmp_path / "n.safetensors", build_encoder("resnet18", 3), "resnet18", ENC_NORM))


def test_encoder_normalisation_maps_every_batch(normalised_file, tmp_path, one_thread):
    out = tmp_path / "out.safetensors"
    data = _vts_data(val=True)
    task = _Spy(encoder_path=normalised_file, augment="none", encoder_out=str(out),  # normalization="auto"
                **data_links(_Spy, data))  # as noisyseg fit links them
    with _info_lines() as lines:
        _trainer(2).fit(task, datamodule=data)
    assert task.normalization_used == "encoder"
    assert sum("normalization='auto': inputs mapped to the encoder file's normalisation" in ln for ln in lines) == 1
    mean, std = torch.tensor(ENC_NORM["mean"]).view(1, 3, 1, 1), torch.tensor(ENC_NORM["std"]).view(1, 3, 1, 1)
    assert len(task.given) == len(task.seen) == 4  # 2 training + 2 validation batches
    for given, seen in zip(task.given, task.seen):
        raw = given * VTS_STD + VTS_MEAN  # the dataset's normalisation undone
        assert torch.allclose(seen, (raw - mean) / std, atol=1e-6)
    assert read_encoder(out)[1]["normalization"] == ENC_NORM  # the encoder's, not the dataset's


def test_dataset_normalisation_leaves_batches(normalised_file, tmp_path, one_thread):
    out = tmp_path / "out.safetensors"
    data = _vts_data()
    task = _Spy(encoder_path=normalised_file, augment="none", normalization="dataset", encoder_out=str(out),
                **data_links(_Spy, data))
    _trainer(1).fit(task, datamodule=data)
    assert task.normalization_used == "dataset"
    assert torch.equal(task.given[0], task.seen[0])
    assert read_encoder(out)[1]["normalization"] == {"mean": [VTS_MEAN] * 3, "std": [VTS_STD] * 3}


class _Unstated(Dataset):
    """A dataset that states no normalisation."""

    def __init__(self) -> None:
        self.inner = VTSSegmentation("train", length=4, size=32)

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i):
        return self.inner[i]


def test_normalisation_errors_and_auto_fallback(normalised_file, tmp_path, one_thread):
    bare = str(save_encoder(tmp_path / "bare.safetensors", build_encoder("resnet18", 3), "resnet18"))
    with pytest.raises(ValueError, match="normalization='encoder'.*records none"):
        SegmentationTask(encoder_path=bare, normalization="encoder")
    with pytest.raises(ValueError, match="normalization='per_band'; valid"):
        SegmentationTask(normalization="per_band")
    unstated = DataModule(train=_Unstated(), batch_size=2)
    task = SegmentationTask(encoder_path=normalised_file, normalization="encoder",
                            **data_links(SegmentationTask, unstated))
    with pytest.raises(ValueError, match=r"split\(s\) train state none \(split_normalization=\{'train': None\}"):
        _trainer(1).fit(task, datamodule=unstated)
    task = SegmentationTask(encoder_path=normalised_file, normalization="encoder")  # nothing linked: none stated
    with pytest.raises(ValueError, match=r"split\(s\) train, val state none \(split_normalization=\{\}"):
        _trainer(1).fit(task, datamodule=_vts_data(val=True))
    task = _Spy(encoder_path=normalised_file, augment="none", **data_links(_Spy, unstated))  # auto: falls back
    with _info_lines() as lines:
        _trainer(1).fit(task, datamodule=unstated)
    assert task.normalization_used == "dataset" and torch.equal(task.given[0], task.seen[0])
    assert any("normalization='auto': dataset" in ln for ln in lines)
    two = str(save_encoder(tmp_path / "two.safetensors", build_encoder("resnet18", 3), "resnet18",
                           {"mean": [0.0, 0.0], "std": [1.0, 1.0]}))
    # a file whose normalisation has another band count than its encoder is refused when read
    with pytest.raises(ValueError, match="two.safetensors has invalid metadata: normalization mean has 2 values"):
        SegmentationTask(encoder_path=two)
    # a consistent 3-band file against a 2-band dataset: the mapping names both band counts
    with pytest.raises(ValueError, match="normalisation has 2 bands.*encoder file's has 3"):
        input_correction({"mean": [0.0, 0.0], "std": [1.0, 1.0]}, {"mean": [0.0] * 3, "std": [1.0] * 3})


# ------------------------------------------------------------------------------------- encoder lr
def test_encoder_lr_factor_gives_the_encoder_its_own_lr(one_thread):
    task = SegmentationTask(arch="resnet18", num_classes=2, lr=0.01, encoder_lr_factor=0.1, lr_schedule="constant",
                            augment="none")
    opt = task.configure_optimizers()["optimizer"]
    enc = {id(p) for p in task.encoder.parameters()}
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.001, 0.01])
    assert {id(p) for p in opt.param_groups[0]["params"]} == enc
    assert not enc & {id(p) for p in opt.param_groups[1]["params"]}
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(task.parameters()))
    # one fitted step moves encoder weights by ~lr_enc (Adam's first step is lr x sign(gradient))
    before = {n: p.detach().clone() for n, p in task.named_parameters()}
    _trainer(1).fit(task, datamodule=_vts_data())
    step = {id(p): (p.detach() - before[n]).abs().max().item() for n, p in task.named_parameters()}
    assert max(v for i, v in step.items() if i in enc) == pytest.approx(0.001, rel=0.05)
    assert max(v for i, v in step.items() if i not in enc) == pytest.approx(0.01, rel=0.05)


def test_encoder_lr_factor_one_is_one_group_and_bad_values_raise():
    task = SegmentationTask(arch="resnet18", num_classes=2)
    assert len(task.configure_optimizers()["optimizer"].param_groups) == 1
    for bad in (0.0, -0.5):
        with pytest.raises(ValueError, match="encoder_lr_factor"):
            SegmentationTask(arch="resnet18", num_classes=2, encoder_lr_factor=bad)
