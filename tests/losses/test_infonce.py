"""InfoNCELoss (MoCo v2) against a loop over MoCo eq. 1 / InfoNCE (van den Oord et al. 2018).

    L_q = -log( exp(q.k+/T) / (exp(q.k+/T) + sum_{k-} exp(q.k-/T)) ),  q, k unit vectors
"""

from __future__ import annotations

import math

import pytest
import torch

from noisyseg.losses import InfoNCELoss

TIGHT = {"rtol": 1e-6, "atol": 1e-6}  # fp32 implementation vs float64 loop


def infonce_loop(q: torch.Tensor, k: torch.Tensor, negatives: list, t: float) -> float:
    """MoCo eq. 1 one query at a time in float64; ``negatives[i]`` are query i's negatives."""
    total = 0.0
    for i in range(q.shape[0]):
        qi = q[i].double() / q[i].double().norm()
        ki = k[i].double() / k[i].double().norm()
        pos = math.exp(float(qi @ ki) / t)
        neg = sum(math.exp(float(qi @ (n.double() / n.double().norm())) / t) for n in negatives[i])
        total += -math.log(pos / (pos + neg))
    return total / q.shape[0]


def test_matches_loop_with_queue() -> None:
    g = torch.Generator().manual_seed(0)
    q, k, queue = (torch.randn(n, 8, generator=g) for n in (6, 6, 20))
    loss = InfoNCELoss(temperature=0.2)(q, k, queue)
    expected = infonce_loop(q, k, [list(queue)] * 6, 0.2)
    torch.testing.assert_close(loss, torch.tensor(expected), **TIGHT)


def test_matches_loop_without_queue_uses_other_keys() -> None:
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    loss = InfoNCELoss(temperature=0.5)(q, k)
    negatives = [[k[j] for j in range(5) if j != i] for i in range(5)]
    torch.testing.assert_close(loss, torch.tensor(infonce_loop(q, k, negatives, 0.5)), **TIGHT)


def test_gradients_reach_q_and_k_and_scale_is_ignored() -> None:
    g = torch.Generator().manual_seed(2)
    q = torch.randn(4, 8, generator=g, requires_grad=True)
    k = torch.randn(4, 8, generator=g, requires_grad=True)
    loss = InfoNCELoss()(q, k)
    loss.backward()
    assert q.grad is not None and k.grad is not None
    assert torch.isfinite(q.grad).all() and k.grad.abs().sum() > 0
    torch.testing.assert_close(InfoNCELoss()(3 * q, 0.5 * k), loss)  # normalised inside


def test_bf16_autocast_inputs_computed_in_fp32() -> None:
    g = torch.Generator().manual_seed(3)
    q, k, queue = (torch.randn(n, 16, generator=g).bfloat16() for n in (8, 8, 64))
    loss_fn = InfoNCELoss(temperature=0.07)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = loss_fn(q, k, queue)
    assert loss.dtype == torch.float32
    expected = loss_fn(q.float(), k.float(), queue.float())
    torch.testing.assert_close(loss, expected, **TIGHT)


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"temperature": 0.0}, "temperature=0.0"),
        ({"temperature": -0.1}, "temperature=-0.1"),
        ({"alpha": 1.5}, "alpha=1.5"),
        ({"alpha": -0.1}, "alpha=-0.1"),
        ({"false_negative": "bogus"}, "'bogus'"),
        ({"threshold": 2.0}, "threshold=2.0"),
    ],
)
def test_bad_arguments_name_the_value(kwargs: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        InfoNCELoss(**kwargs)


def test_bad_shapes_and_single_key_raise() -> None:
    with pytest.raises(ValueError, match="queue"):
        InfoNCELoss()(torch.randn(2, 4), torch.randn(2, 4), torch.randn(10, 5))
    with pytest.raises(ValueError, match="at least 2 keys"):
        InfoNCELoss()(torch.randn(1, 4), torch.randn(1, 4))
