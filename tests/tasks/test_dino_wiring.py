"""DINOTask wiring in a real Lightning fit: frozen last layer, centre, teacher temperature, teacher EMA.

``DINOLoss``, ``cosine_schedule`` and ``momentum_update`` are tested alone in ``tests/losses`` and
``tests/models_contrastive``; here one tiny fit (4 epochs x 2 steps) records what the task hands
them and what it does to the networks, and each test compares that with the reference's schedules
computed in the test (Caron et al., ICCV 2021; facebookresearch/dino ``main_dino.py``:
``cancel_gradients_last_layer``, ``DINOLoss.update_center``, ``teacher_temp_schedule``,
``utils.cosine_scheduler`` for the teacher momentum, used as ``momentum_schedule[it]`` after the
optimiser step of iteration ``it``).
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from noisyseg.data import DataModule
from noisyseg.tasks import DINOTask

EPOCHS, STEPS_PER_EPOCH, BATCH, SIZE, OUT_DIM = 4, 2, 4, 32, 64
TOTAL = EPOCHS * STEPS_PER_EPOCH
WARMUP_TEMP, FINAL_TEMP, WARMUP_EPOCHS = 0.04, 0.07, 3
BASE_M, CENTER_M, STUDENT_TEMP = 0.9, 0.8, 0.1  # base momentum far from 1, so schedule steps are visible


class RandomImages(Dataset):
    """``n`` seeded random images (no labels: DINO needs none)."""

    def __init__(self, n: int) -> None:
        self.images = torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[i]}


def clone_params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


class EpochEnd(L.Callback):
    """The head's last layer at the end of every training epoch."""

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.record["last_layer"].append(clone_params(pl_module.student.head.last_layer))


@pytest.fixture(scope="module")
def fit(tmp_path_factory) -> dict[str, Any]:
    """Fit a tiny DINO task; record every loss call, network output and EMA update."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    L.seed_everything(0)
    task = DINOTask(
        out_dim=OUT_DIM, hidden_dim=32, bottleneck_dim=16, n_local_crops=2, student_temp=STUDENT_TEMP,
        warmup_teacher_temp=WARMUP_TEMP, teacher_temp=FINAL_TEMP, warmup_teacher_temp_epochs=WARMUP_EPOCHS,
        center_momentum=CENTER_M, momentum_teacher=BASE_M, freeze_last_layer_epochs=1,
        lr=1e-3, warmup_fraction=0.0, channels_last=False,
    )
    rec: dict[str, Any] = {name: [] for name in (
        "loss", "center_before", "teacher_in", "teacher_out", "student_in", "student_out", "ema"
    )}
    rec["last_layer"] = [clone_params(task.student.head.last_layer)]  # then one entry per epoch end
    rec["student_initial"] = clone_params(task.student)
    task.loss_fn.register_forward_pre_hook(lambda m, args: rec["center_before"].append(m.center.clone()))
    task.loss_fn.register_forward_hook(
        lambda m, args, out: rec["loss"].append(
            {"args": [a.detach().clone() for a in args[:2]], "out": out.detach()}
        )
    )
    task.teacher.register_forward_hook(lambda m, args, out: rec["teacher_out"].append(out.detach().clone()))
    task.teacher.register_forward_pre_hook(lambda m, args: rec["teacher_in"].append(args[0].clone()))
    task.student.register_forward_pre_hook(lambda m, args: rec["student_in"].append(args[0].clone()))
    task.student.register_forward_hook(lambda m, args, out: rec["student_out"].append(out.detach().clone()))

    batch_end = task.on_train_batch_end

    def record_ema(*args, **kwargs):
        before = clone_params(task.teacher)
        batch_end(*args, **kwargs)
        rec["ema"].append({"teacher_before": before, "student": clone_params(task.student),
                           "teacher_after": clone_params(task.teacher)})

    task.on_train_batch_end = record_ema  # Lightning calls the hook by name on the instance
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_epochs=EPOCHS, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, precision="32-true", num_sanity_val_steps=0,
        default_root_dir=str(tmp_path_factory.mktemp("dino")), callbacks=[EpochEnd(rec)],
    )
    try:
        trainer.fit(task, datamodule=DataModule(train=RandomImages(BATCH * STEPS_PER_EPOCH), batch_size=BATCH))
    finally:
        torch.set_num_threads(threads)
    assert trainer.global_step == TOTAL and len(rec["loss"]) == TOTAL and len(rec["ema"]) == TOTAL
    rec["task"] = task
    return rec


def test_last_layer_is_frozen_in_the_first_epoch_only(fit: dict[str, Any]) -> None:
    initial, after_epoch0, after_epoch1 = fit["last_layer"][:3]
    assert after_epoch0.keys() == initial.keys() and any("original1" in n for n in initial)
    for name in initial:  # two optimiser steps of epoch 0 left it bit-identical
        assert torch.equal(after_epoch0[name], initial[name]), name
    direction = next(n for n in initial if "original1" in n)  # the trainable weight-norm direction
    assert not torch.equal(after_epoch1[direction], after_epoch0[direction])  # trained from epoch 1
    # the rest of the student did train in epoch 0
    student0 = fit["ema"][STEPS_PER_EPOCH - 1]["student"]
    assert not torch.equal(student0["head.mlp.0.weight"], fit["student_initial"]["head.mlp.0.weight"])


def test_student_and_teacher_see_the_same_global_views_in_the_same_order(fit: dict[str, Any]) -> None:
    # per step the student runs on the 2B global crops, then on the local crops; the teacher on the globals
    for step in range(TOTAL):
        globals_ = fit["teacher_in"][step]  # [2B, C, H, W]
        assert globals_.shape == (2 * BATCH, 3, SIZE, SIZE)
        assert torch.equal(fit["student_in"][2 * step], globals_)
        assert fit["student_in"][2 * step + 1].shape[-1] < SIZE  # local crops
        # the loss gets the teacher's [G, B, K] and the student's [V, B, K] with the globals first
        student, teacher = fit["loss"][step]["args"]
        assert torch.equal(teacher, fit["teacher_out"][step].view(2, BATCH, OUT_DIM))
        assert torch.equal(student[:2], fit["student_out"][2 * step].view(2, BATCH, OUT_DIM))
        assert torch.equal(student[2:], fit["student_out"][2 * step + 1].view(2, BATCH, OUT_DIM))


def test_center_is_ema_of_this_steps_teacher_outputs(fit: dict[str, Any]) -> None:
    centers = [*fit["center_before"], fit["task"].loss_fn.center.detach()]
    assert torch.equal(centers[0], torch.zeros(1, OUT_DIM))
    for step in range(TOTAL):
        teacher = fit["teacher_out"][step].double()  # [2B, K] the teacher network's outputs of this step
        expected = CENTER_M * centers[step].double() + (1 - CENTER_M) * teacher.mean(0, keepdim=True)
        torch.testing.assert_close(centers[step + 1].double(), expected, rtol=1e-6, atol=1e-7)


def dino_loss_by_hand(student: torch.Tensor, teacher: torch.Tensor, center: torch.Tensor, tau_t: float) -> float:
    """Caron et al. eq. 2-3 in float64: mean over (teacher view g, student view v != g) of mean_b CE."""
    p_t = torch.softmax((teacher.double() - center.double()) / tau_t, dim=-1)  # [G, B, K]
    log_p_s = torch.log_softmax(student.double() / STUDENT_TEMP, dim=-1)  # [V, B, K]
    terms = [-(p_t[g] * log_p_s[v]).sum(-1).mean() for g in range(teacher.shape[0])
             for v in range(student.shape[0]) if v != g]
    return float(sum(terms) / len(terms))


def test_teacher_temperature_follows_the_epoch_schedule(fit: dict[str, Any]) -> None:
    # the reference: np.concatenate((np.linspace(warmup, final, W), np.ones(epochs - W) * final))
    warmup = np.linspace(WARMUP_TEMP, FINAL_TEMP, WARMUP_EPOCHS)  # 0.04, 0.055, 0.07
    schedule = np.concatenate((warmup, np.full(EPOCHS - WARMUP_EPOCHS, FINAL_TEMP)))
    for step in range(TOTAL):
        epoch = step // STEPS_PER_EPOCH
        student, teacher = fit["loss"][step]["args"]
        center = fit["center_before"][step]
        expected = dino_loss_by_hand(student, teacher, center, float(schedule[epoch]))
        assert float(fit["loss"][step]["out"]) == pytest.approx(expected, rel=1e-5), f"epoch {epoch}"
        if epoch > 0:  # these outputs tell the temperatures apart: epoch 0's would give another loss
            assert dino_loss_by_hand(student, teacher, center, WARMUP_TEMP) != pytest.approx(expected, rel=1e-3)


def test_teacher_ema_momentum_follows_the_cosine_schedule(fit: dict[str, Any]) -> None:
    for step, ema in enumerate(fit["ema"]):  # step: 0-based index of the optimiser step just taken
        m = 1 - (1 - BASE_M) * (math.cos(math.pi * step / TOTAL) + 1) / 2
        before, student, after = ema["teacher_before"], ema["student"], ema["teacher_after"]
        # the momentum the update used, fitted over all parameters: after - s = m (before - s)
        num = sum(float(((after[n] - student[n]) * (before[n] - student[n])).sum()) for n in before)
        den = sum(float(((before[n] - student[n]) ** 2).sum()) for n in before)
        assert den > 0, f"step {step}: teacher equals student before the update"
        assert num / den == pytest.approx(m, abs=2e-4), f"step {step}"
        for n in before:  # and every parameter moved by that one EMA
            torch.testing.assert_close(after[n], m * before[n] + (1 - m) * student[n], rtol=1e-5, atol=1e-6, msg=n)
