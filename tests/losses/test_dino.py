"""DINOLoss against a loop over DINO eq. 2-3 (Caron et al., ICCV 2021; facebookresearch/dino).

    P_t^(g) = softmax((g_t(x_g) - c) / tau_t),  P_s^(v) = softmax(g_s(x_v) / tau_s)
    loss    = mean over g in global views, v in all views, v != g of  H(P_t^(g), P_s^(v))
    c      <- m c + (1 - m) mean_batch g_t(x)
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from noisyseg.losses import DINOLoss

TIGHT = {"rtol": 1e-6, "atol": 1e-6}  # fp32 implementation vs float64 loop


def dino_loop(student, teacher, center, tau_s: float, tau_t: float) -> float:
    """Cross-entropy one (teacher view, student view, sample) at a time in float64."""
    terms = []
    for g in range(teacher.shape[0]):
        for v in range(student.shape[0]):
            if v == g:
                continue
            ces = []
            for b in range(student.shape[1]):
                p_t = torch.softmax((teacher[g, b].double() - center.double()) / tau_t, dim=-1)
                log_p_s = torch.log_softmax(student[v, b].double() / tau_s, dim=-1)
                ces.append(float(-(p_t * log_p_s).sum()))
            terms.append(sum(ces) / len(ces))
    return sum(terms) / len(terms)


def test_matches_loop_and_skips_same_view_pairs() -> None:
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(4, 3, 10, generator=g), torch.randn(2, 3, 10, generator=g)
    loss_fn = DINOLoss(
        10, warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=5, n_epochs=10
    )
    loss_fn.center.copy_(torch.randn(1, 10, generator=g))
    center = loss_fn.center[0].clone()
    loss = loss_fn(student, teacher, epoch=2)
    expected = dino_loop(student, teacher, center, 0.1, loss_fn.teacher_temperature(2))
    torch.testing.assert_close(loss, torch.tensor(expected), **TIGHT)


def test_teacher_temperature_warmup_is_numpy_linspace_then_constant() -> None:
    loss_fn = DINOLoss(
        8, warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=30, n_epochs=100
    )
    schedule = np.concatenate((np.linspace(0.04, 0.07, 30), np.ones(70) * 0.07))  # the reference
    got = np.array([loss_fn.teacher_temperature(e) for e in range(100)])
    np.testing.assert_allclose(got, schedule, rtol=1e-12)
    assert loss_fn.teacher_temperature(0) == 0.04 and loss_fn.teacher_temperature(500) == 0.07
    assert DINOLoss(8).teacher_temperature(0) == 0.04  # no warm-up


def test_center_is_ema_of_teacher_mean_in_training_only() -> None:
    g = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(3, 5, 6, generator=g), torch.randn(2, 5, 6, generator=g)
    loss_fn = DINOLoss(6, center_momentum=0.9)
    c0 = torch.randn(1, 6, generator=g)
    loss_fn.center.copy_(c0)
    loss_fn(student, teacher, epoch=0)
    expected = 0.9 * c0 + 0.1 * teacher.reshape(-1, 6).mean(0, keepdim=True)
    torch.testing.assert_close(loss_fn.center, expected, rtol=1e-6, atol=1e-7)
    loss_fn.eval()
    before = loss_fn.center.clone()
    loss_fn(student, teacher, epoch=0)
    assert torch.equal(loss_fn.center, before)


def test_gradient_flows_to_student_only() -> None:
    g = torch.Generator().manual_seed(2)
    student = torch.randn(3, 2, 4, generator=g, requires_grad=True)
    teacher = torch.randn(2, 2, 4, generator=g, requires_grad=True)
    DINOLoss(4)(student, teacher, epoch=0).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_bf16_autocast_inputs_computed_in_fp32() -> None:
    g = torch.Generator().manual_seed(3)
    student, teacher = (torch.randn(v, 3, 16, generator=g).bfloat16() for v in (4, 2))
    a, b = DINOLoss(16).eval(), DINOLoss(16).eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = a(student, teacher, epoch=0)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, b(student.float(), teacher.float(), epoch=0), **TIGHT)


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"student_temp": 0.0}, "student_temp=0.0"),
        ({"teacher_temp": -1.0}, "teacher_temp=-1.0"),
        ({"warmup_teacher_temp_epochs": 20, "n_epochs": 10}, "warmup_teacher_temp_epochs=20"),
        ({"center_momentum": 1.5}, "center_momentum=1.5"),
    ],
)
def test_bad_arguments_name_the_value(kwargs: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        DINOLoss(8, **kwargs)


def test_bad_shapes_and_epoch_raise() -> None:
    loss_fn = DINOLoss(8)
    with pytest.raises(ValueError, match="K=8"):
        loss_fn(torch.randn(3, 2, 7), torch.randn(2, 2, 7), epoch=0)
    with pytest.raises(ValueError, match="epoch=-1"):
        loss_fn.teacher_temperature(-1)
