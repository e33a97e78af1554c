"""SegmentationTask: frozen mode leaves the encoder bit-identical; transfer across class sets."""

import lightning as L
import torch

from noisyseg.checkpoints import read_encoder, save_encoder
from noisyseg.data import DataModule, VTSSegmentation
from noisyseg.tasks import SegmentationTask


def _fit(task, steps=3, size=32, **data_kw):
    dm = DataModule(train=VTSSegmentation("train", length=8, size=size, **data_kw), batch_size=4)
    trainer = L.Trainer(
        max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, precision="32-true",
    )
    trainer.fit(task, datamodule=dm)
    return trainer


def test_frozen_encoder_params_and_bn_buffers_bit_identical(tmp_path):
    enc_path = save_encoder(tmp_path / "e.safetensors", SegmentationTask().encoder, "resnet18")
    task = SegmentationTask(decoder="fcn", num_classes=3, encoder_path=str(enc_path), freeze_encoder=True)
    before = {k: v.clone() for k, v in task.encoder.state_dict().items()}
    head_before = {k: v.clone() for k, v in task.model.head.state_dict().items()}
    _fit(task, third_class=True)
    for k, v in task.encoder.state_dict().items():
        assert torch.equal(before[k], v), f"{k} changed in frozen mode"
    assert any(not torch.equal(head_before[k], v) for k, v in task.model.head.state_dict().items())


def test_finetune_changes_encoder_and_exports(tmp_path):
    out = tmp_path / "enc.safetensors"
    task = SegmentationTask(decoder="unet", num_classes=2, encoder_out=str(out))
    before = {k: v.clone() for k, v in task.encoder.state_dict().items()}
    _fit(task, label_noise={"flip_rate": 0.3})
    state, meta = read_encoder(out)
    assert meta["trained"]["method"] == "supervised" and meta["trained"]["steps"] == 3
    assert meta["normalization"]["mean"] == [0.5, 0.5, 0.5]
    assert any(not torch.equal(before[k], state[k]) for k in before)
    # the pretrained (2-class) encoder loads into a 3-class DeepLabV3+ / PSPNet
    for decoder in ("deeplabv3plus", "pspnet"):
        t = SegmentationTask(decoder=decoder, num_classes=3, encoder_path=str(out))
        assert torch.equal(t.encoder.state_dict()["conv1.weight"], state["conv1.weight"])
