"""SegmentationTask: frozen mode leaves the encoder bit-identical; transfer across class sets; scores."""

import math

import lightning as L
import pytest
import torch

from noisyseg.data import DataModule, VTSSegmentation
from noisyseg.runfiles import read_encoder, save_encoder
from noisyseg.tasks import SegmentationTask
from noisyseg.tasks.segmentation import scores_from_confusion


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
    norm = VTSSegmentation("train", length=1, size=32).normalization  # as noisyseg fit links it from the data
    task = SegmentationTask(decoder="unet", num_classes=2, encoder_out=str(out), input_normalization=norm)
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


# ------------------------------------------------------------------------------------- test / predict
def _by_hand(task, ds, target_key):
    """Scores from a confusion matrix counted here: argmax of the network against ``target_key``."""
    task.eval()
    cm = torch.zeros(2, 2, dtype=torch.long)
    with torch.no_grad():
        for i in range(len(ds)):
            s = ds[i]
            pred = task(s["image"][None]).argmax(1)[0]
            t = s[target_key]
            ok = t != 255
            cm += torch.bincount(t[ok] * 2 + pred[ok], minlength=4).view(2, 2)
    return scores_from_confusion(cm, task.class_names)


def test_test_scores_clean_labels(tmp_path, one_thread):
    task = SegmentationTask(num_classes=2, class_names=["bg", "fg"], augment="none", channels_last=False)
    ds = VTSSegmentation("test", length=6, size=32, label_noise={"flip_rate": 0.5})  # noisy mask, clean_mask
    dm = DataModule(train=ds, test=ds, batch_size=3)
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, precision="32-true", default_root_dir=str(tmp_path))
    trainer.fit(task, datamodule=dm)
    trainer.test(task, datamodule=dm, verbose=False)
    logged = trainer.callback_metrics  # what noisyseg.cli writes to results.json
    clean, noisy = _by_hand(task, ds, "clean_mask"), _by_hand(task, ds, "mask")
    assert clean["miou"] != noisy["miou"]  # the two targets tell apart which one was scored
    for key in ("miou", "iou/fg", "f1", "accuracy"):
        assert float(logged[f"test/{key}"]) == pytest.approx(clean[key], abs=1e-6)
        assert task.test_scores[key] == pytest.approx(clean[key], abs=1e-6)
    preds = trainer.predict(task, dataloaders=dm.test_dataloader())
    assert torch.equal(torch.cat(preds), torch.stack([task(ds[i]["image"][None]).argmax(1)[0] for i in range(len(ds))]))


def test_inverse_frequency_weights_count_the_training_labels(one_thread):
    from noisyseg.losses.segmentation import inverse_frequency_weights

    task = SegmentationTask(num_classes=2, class_weights="inverse_frequency", augment="none", channels_last=False)
    trainer = _fit(task, steps=1)
    ds = trainer.datamodule.train_set
    counts = torch.zeros(2, dtype=torch.long)
    for i in range(len(ds)):
        m = ds[i]["mask"]
        counts += torch.bincount(m[m != 255], minlength=2)
    assert counts.sum() == len(ds) * 32 * 32 and counts.min() > 0
    assert torch.equal(task._count_classes(), counts)
    assert torch.allclose(task.loss_fn.class_weights, inverse_frequency_weights(counts))


# ------------------------------------------------------------------------------------------ scores
def test_scores_hand_computed():
    # truth rows, prediction columns
    cm = torch.tensor([[5, 1, 0], [2, 3, 0], [0, 0, 0]])
    s = scores_from_confusion(cm, ["a", "b", "c"])
    assert math.isclose(s["iou/a"], 5 / (5 + 2 + 1))
    assert math.isclose(s["iou/b"], 3 / (3 + 1 + 2))
    assert math.isnan(s["iou/c"])  # never present nor predicted: left out of the mean
    assert math.isclose(s["miou"], (5 / 8 + 3 / 6) / 2)
    assert math.isclose(s["f1/a"], 2 * 5 / (2 * 5 + 2 + 1))
    assert math.isclose(s["f1"], (10 / 13 + 6 / 9) / 2)
    assert math.isclose(s["accuracy"], 8 / 11)
    assert list(s) == ["miou", "f1", "accuracy", "iou/a", "f1/a", "iou/b", "f1/b", "iou/c", "f1/c"]
    assert list(scores_from_confusion(cm)) == ["miou", "f1", "accuracy", "iou/0", "f1/0", "iou/1", "f1/1",
                                               "iou/2", "f1/2"]


def test_task_confusion_accumulates_over_batches_and_skips_ignore():
    cm = SegmentationTask(num_classes=2, ignore_index=255).val_cm
    cm.update(torch.tensor([[0, 1]]), torch.tensor([[0, 0]]))
    cm.update(torch.tensor([[1, 1]]), torch.tensor([[1, 255]]))
    assert cm.compute().tolist() == [[1, 1], [0, 1]]
    # accumulated, not averaged per batch: batch-wise mIoU would be (0.5/2... ) different
    s = scores_from_confusion(cm.compute())
    assert math.isclose(s["miou"], (1 / 2 + 1 / 2) / 2)
