"""NT-Xent (SimCLR, Chen et al. 2020, eq. 1) against a loop over the 2N anchors, with FALSE on it.

lightly's ``NTXentLoss`` is not installed here, so the check is an independent float64 loop:
anchor a in ``[z1; z2]``, positive its other view, denominator every view but itself. The last test
runs two gloo processes: negatives gathered across ranks give the loss and gradients of the whole
batch in one process.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from noisyseg.losses import NTXentLoss

CLOSE = {"rtol": 1e-5, "atol": 1e-6}


def ntxent_loop(z1: torch.Tensor, z2: torch.Tensor, t: float) -> torch.Tensor:
    """SimCLR's loss one anchor at a time, in float64 (differentiable, for gradient checks)."""
    z = F.normalize(torch.cat([z1, z2]).double(), dim=1)  # [2N, D]
    n2 = z.shape[0]
    terms = []
    for a in range(n2):
        p = (a + n2 // 2) % n2  # the other view of the same image
        den = sum(torch.exp(z[a] @ z[j] / t) for j in range(n2) if j != a)
        terms.append(-torch.log(torch.exp(z[a] @ z[p] / t) / den))
    return torch.stack(terms).mean()


def views(n: int = 5, d: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)


@pytest.mark.parametrize("t", [0.1, 0.5])
def test_ntxent_equals_loop_in_value_and_gradient(t: float) -> None:
    z1, z2 = (x.requires_grad_(True) for x in views())
    loss = NTXentLoss(t)(z1, z2)
    loss.backward()
    a1, a2 = (x.detach().double().requires_grad_(True) for x in (z1, z2))
    expected = ntxent_loop(a1, a2, t)
    expected.backward()
    torch.testing.assert_close(loss.double(), expected.detach(), **CLOSE)
    torch.testing.assert_close(z1.grad.double(), a1.grad, **CLOSE)
    torch.testing.assert_close(z2.grad.double(), a2.grad, **CLOSE)


def test_positive_of_view_i_is_view_i_of_the_other_batch() -> None:
    z1, z2 = views()
    z2 = z1 + 0.05 * z2  # aligned pairs: a low loss
    loss_fn = NTXentLoss(0.5)
    p = torch.tensor([1, 2, 3, 4, 0])
    aligned, shuffled = loss_fn(z1, z2), loss_fn(z1, z2[p])
    torch.testing.assert_close(shuffled.double(), ntxent_loop(z1, z2[p], 0.5), **CLOSE)
    assert aligned < shuffled - 1.0
    # swapping the two views changes nothing: every view is an anchor once
    torch.testing.assert_close(loss_fn(z2, z1), aligned, **CLOSE)


@pytest.mark.parametrize("mode", ["reference", "closest", "per_anchor"])
def test_false_at_alpha_zero_is_ntxent_exactly(mode: str) -> None:
    z1, z2 = views(seed=1)
    fn = NTXentLoss(0.5, mode, alpha=0.0, threshold=-1.0, positive_min=-1.0)
    assert torch.equal(fn(z1, z2), NTXentLoss(0.5)(z1, z2))
    assert fn.last_false_negatives > 0  # pairs were flagged and weighted by zero


def test_per_anchor_false_on_ntxent_matches_loop() -> None:
    """Every anchor's most similar negative moves wholly (alpha 1) into its numerator."""
    z1, z2 = views(seed=2)
    loss = NTXentLoss(0.5, "per_anchor", alpha=1.0, threshold=-1.0)(z1, z2)
    z = F.normalize(torch.cat([z1, z2]).double(), dim=1)
    n2, total = z.shape[0], 0.0
    for a in range(n2):
        p = (a + n2 // 2) % n2
        negs = {j: math.exp(float(z[a] @ z[j]) / 0.5) for j in range(n2) if j not in (a, p)}
        fn = max(negs, key=negs.get)
        pos = math.exp(float(z[a] @ z[p]) / 0.5)
        total += -math.log((pos + negs[fn]) / (pos + sum(negs.values())))
    torch.testing.assert_close(loss.double(), torch.tensor(total / n2, dtype=torch.float64), **CLOSE)


def test_bf16_autocast_gives_the_fp32_loss() -> None:
    z1, z2 = (x.bfloat16() for x in views(seed=3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = NTXentLoss(0.5)(z1, z2)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, NTXentLoss(0.5)(z1.float(), z2.float()), **CLOSE)


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="temperature=0"):
        NTXentLoss(0)
    with pytest.raises(ValueError, match="'bogus'"):
        NTXentLoss(false_negative="bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="alpha=2"):
        NTXentLoss(alpha=2)
    with pytest.raises(ValueError, match=r"\(3, 8\) and \(2, 8\)"):
        NTXentLoss()(torch.randn(3, 8), torch.randn(2, 8))
    with pytest.raises(ValueError, match="at least 2 images"):
        NTXentLoss()(torch.randn(1, 8), torch.randn(1, 8))


# --------------------------------------------------------------------------------- two processes
N_PER_RANK = 3


def _worker(rank_: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank_, world_size=world)
    z1_all, z2_all = views(world * N_PER_RANK, seed=4)  # every rank draws the global batch
    mine = slice(rank_ * N_PER_RANK, (rank_ + 1) * N_PER_RANK)
    out = {}
    for name, loss_fn in {"plain": NTXentLoss(0.5), "per_anchor": NTXentLoss(0.5, "per_anchor", 0.7, -1.0)}.items():
        z1, z2 = (x[mine].clone().requires_grad_(True) for x in (z1_all, z2_all))
        loss = loss_fn(z1, z2)
        loss.backward()
        out[name] = (loss.detach(), z1.grad, z2.grad)
    torch.save(out, os.path.join(out_dir, f"rank{rank_}.pt"))
    dist.barrier()  # no rank tears gloo down while the other still talks to it
    dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes, each importing torch and noisyseg (~30 s on 2 busy cores)
@pytest.mark.timeout(120)
def test_negatives_are_gathered_across_two_gloo_processes(tmp_path) -> None:
    world = 2
    mp.spawn(_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world, join=True)
    res = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    z1_all, z2_all = views(world * N_PER_RANK, seed=4)
    for name, loss_fn in {"plain": NTXentLoss(0.5), "per_anchor": NTXentLoss(0.5, "per_anchor", 0.7, -1.0)}.items():
        z1, z2 = (x.clone().requires_grad_(True) for x in (z1_all, z2_all))
        full = loss_fn(z1, z2)  # one process, the whole batch: 2 * 6 anchors, 10 negatives each
        full.backward()
        # each rank averages over its 2N anchors; DDP averages the ranks' gradients
        torch.testing.assert_close(sum(r[name][0] for r in res) / world, full.detach(), **CLOSE)
        torch.testing.assert_close(torch.cat([r[name][1] for r in res]) / world, z1.grad, **CLOSE)
        torch.testing.assert_close(torch.cat([r[name][2] for r in res]) / world, z2.grad, **CLOSE)
        # and not the loss of each shard alone (the negatives of the other rank count)
        alone = sum(loss_fn(z1_all[s], z2_all[s]) for s in (slice(0, 3), slice(3, 6))) / world
        assert not torch.allclose(alone, full.detach(), **CLOSE)
