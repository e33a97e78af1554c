"""Momentum update, cosine schedule, key queue, batch shuffle and the gather helpers.

The last test runs two gloo processes on the CPU to check the DDP paths (gather with gradients,
MoCo's cross-process shuffle, the queue, InfoNCE / CrossImageLoss / DINO center across ranks)
against the same computation done on the whole batch in one process.
"""

from __future__ import annotations

import copy
import math
import os

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from noisyseg.runtime import gather, gather_no_grad, is_dist, rank, world_size
from noisyseg.models.momentum import (
    KeyQueue,
    SplitBatchNorm2d,
    batch_shuffle,
    batch_unshuffle,
    cosine_schedule,
    momentum_update,
    split_batchnorm,
)


def small_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    net[1].running_mean.normal_()
    return net


@pytest.mark.parametrize("m", [0.0, 0.5, 1.0])
def test_momentum_update_copies_keeps_or_averages(m: float) -> None:
    online, target = small_net(0), small_net(1)
    before = [p.clone() for p in target.parameters()]
    momentum_update(online, target, m)
    for p_o, p_t, p_0 in zip(online.parameters(), target.parameters(), before):
        if m == 0.0:
            assert torch.equal(p_t, p_o)
        elif m == 1.0:
            assert torch.equal(p_t, p_0)
        else:
            torch.testing.assert_close(p_t, (p_o + p_0) / 2)
    for b_o, b_t in zip(online.buffers(), target.buffers()):
        assert torch.equal(b_o, b_t)  # buffers copied


def test_momentum_update_of_networks_without_buffers() -> None:
    online, target = nn.Linear(3, 2), nn.Linear(3, 2)
    momentum_update(online, target, 0.0)
    assert torch.equal(target.weight, online.weight) and torch.equal(target.bias, online.bias)


def test_momentum_update_rejects_bad_m_and_mismatched_networks() -> None:
    with pytest.raises(ValueError, match="m=1.5"):
        momentum_update(small_net(0), small_net(1), 1.5)
    with pytest.raises(ValueError, match="parameter or buffer names"):
        momentum_update(small_net(0), nn.Linear(3, 4), 0.9)


def test_cosine_schedule_endpoints_midpoint_and_hold() -> None:
    assert cosine_schedule(0, 100, 0.996, 1.0) == 0.996
    assert cosine_schedule(100, 100, 0.996, 1.0) == 1.0
    assert cosine_schedule(250, 100, 0.996, 1.0) == 1.0
    assert math.isclose(cosine_schedule(50, 100, 0.996, 1.0), 0.998, rel_tol=1e-12)
    values = [cosine_schedule(s, 10, 0.9, 1.0) for s in range(11)]
    assert values == sorted(values)
    with pytest.raises(ValueError, match="total_steps=0"):
        cosine_schedule(0, 0, 0.9, 1.0)
    with pytest.raises(ValueError, match="step=-1"):
        cosine_schedule(-1, 10, 0.9, 1.0)


def unit(n: int, d: int, start: int) -> torch.Tensor:
    """Distinguishable unit keys: one-hot rows."""
    return torch.eye(d)[torch.arange(start, start + n) % d]


def test_queue_is_fifo_with_wrap_around() -> None:
    queue = KeyQueue(dim=8, size=5)
    torch.testing.assert_close(queue.queue.norm(dim=1), torch.ones(5))  # normalised random init
    keys = [unit(2, 8, 0), unit(2, 8, 2), unit(2, 8, 4)]  # 6 keys into 5 slots
    for k in keys:
        queue.enqueue(k)
    everything = torch.cat(keys)  # [6, 8]
    assert int(queue.ptr) == 1
    assert torch.equal(queue.ordered(), everything[1:])  # the 5 newest, oldest first
    assert torch.equal(queue.queue[0], everything[5])  # the 6th key wrapped to row 0
    snap = queue.snapshot()
    queue.enqueue(unit(3, 8, 6))
    assert torch.equal(queue.ordered(), torch.cat([everything[4:], unit(3, 8, 6)]))
    assert not torch.equal(snap, queue.queue)  # the snapshot is a copy


def test_queue_normalises_keys_and_rejects_large_batches() -> None:
    queue = KeyQueue(dim=4, size=6)
    queue.enqueue(3 * torch.ones(2, 4))
    torch.testing.assert_close(queue.queue[:2], torch.full((2, 4), 0.5))
    with pytest.raises(ValueError, match=r"queue size 6 .*batch_size=4 x world_size=2 = 8.*>= 8"):
        queue.check_batch(4, 2)
    queue.check_batch(3, 2)
    with pytest.raises(ValueError, match="queue size 6"):
        queue.enqueue(torch.randn(7, 4))
    with pytest.raises(ValueError, match="size=0"):
        KeyQueue(4, 0)


def test_batch_shuffle_round_trip_single_process() -> None:
    x = torch.arange(12.0).view(6, 2)
    shuffled, idx = batch_shuffle(x, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(shuffled, x) and torch.equal(shuffled.sort(0).values, x)
    assert torch.equal(batch_unshuffle(shuffled, idx), x)
    with pytest.raises(ValueError, match="idx_unshuffle"):
        batch_unshuffle(shuffled, idx[:3])


def test_split_batchnorm_equals_running_the_network_on_each_sub_batch() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1), nn.BatchNorm2d(2))
    net.train()
    ref = copy.deepcopy(net)
    split = split_batchnorm(copy.deepcopy(net), groups=3)
    assert [n for n, _ in split.named_parameters()] == [n for n, _ in net.named_parameters()]
    assert [n for n, _ in split.named_buffers()] == [n for n, _ in net.named_buffers()]
    x = (torch.randn(8, 3, 6, 6) * 3 + 1).contiguous(memory_format=torch.channels_last)
    out = split(x)
    expected = torch.cat([ref(p) for p in torch.tensor_split(x, 3)])  # sub-batches of 3, 3, 2
    torch.testing.assert_close(out, expected)
    assert out.is_contiguous(memory_format=torch.channels_last)
    for (name, b), b_ref in zip(split.named_buffers(), ref.buffers()):  # one update per sub-batch
        torch.testing.assert_close(b, b_ref, msg=name)
    assert not torch.allclose(out, net(x))  # whole-batch statistics differ
    # a batch of 3 cannot give 3 sub-batches of >= 2 samples: one group; eval mode is plain BN
    small = torch.randn(3, 3, 6, 6)
    torch.testing.assert_close(split(small), copy.deepcopy(net)(small))
    net.load_state_dict(split.state_dict())  # same names: plain BN loads split BN's state
    split.eval(), net.eval()
    torch.testing.assert_close(split(x), net(x))
    assert "groups=3" in repr(split)
    frozen = split_batchnorm(copy.deepcopy(net).requires_grad_(False), 2)
    assert not any(p.requires_grad for p in frozen.parameters())  # MoCo's key encoder stays frozen
    bare = split_batchnorm(nn.Sequential(nn.BatchNorm2d(3, affine=False, track_running_stats=False)), 2)
    torch.testing.assert_close(bare(x[:, :3]), torch.cat([F.batch_norm(p, None, None, training=True) for p in x[:, :3].chunk(2)]))
    with pytest.raises(ValueError, match="groups=0"):
        split_batchnorm(net, 0)


def test_split_batchnorm_keeps_tensors_and_dtype_and_converts_a_root_batchnorm() -> None:
    bn = nn.BatchNorm2d(3).double()
    weight, mean = bn.weight, bn.running_mean
    assert split_batchnorm(bn, 2) is bn
    assert type(bn) is SplitBatchNorm2d and bn.groups == 2
    assert bn.weight is weight and bn.running_mean is mean and weight.dtype == torch.float64
    x = torch.randn(4, 3, 2, 2, dtype=torch.float64)
    expected = torch.cat([F.batch_norm(p, None, None, weight, bn.bias, training=True) for p in x.chunk(2)])
    torch.testing.assert_close(bn(x), expected)


def test_helpers_are_identities_without_a_process_group() -> None:
    x = torch.randn(3, 2, requires_grad=True)
    assert not is_dist() and rank() == 0 and world_size() == 1
    assert gather(x) is x
    assert torch.equal(gather_no_grad(x), x) and not gather_no_grad(x).requires_grad


# --------------------------------------------------------------------------------- two processes
def _worker(rank_: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    from noisyseg.losses import CrossImageLoss, DINOLoss, InfoNCELoss

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank_, world_size=world)
    torch.manual_seed(0)  # every rank draws the same global batch and keeps its slice
    n = 3
    q_all, k_all = torch.randn(world * n, 8), torch.randn(world * n, 8)
    f1_all, f2_all = torch.randn(world, 4, 3, 3), torch.randn(world, 4, 3, 3)
    l1_all, l2_all = torch.randint(0, 2, (world, 3, 3)), torch.randint(0, 2, (world, 3, 3))
    teacher_all = torch.randn(2, world * n, 5)
    mine = slice(rank_ * n, (rank_ + 1) * n)
    out: dict[str, torch.Tensor] = {}

    x = torch.full((2, 3), float(rank_), requires_grad=True)
    (gather(x) * torch.arange(1.0, 2 * world + 1)[:, None]).sum().backward()
    out["gather_grad"] = x.grad  # summed over ranks: world * weight of this shard

    q = q_all[mine].clone().requires_grad_(True)
    k = k_all[mine].clone().requires_grad_(True)
    loss = InfoNCELoss(temperature=0.3)(q, k)
    loss.backward()
    out["infonce"], out["q_grad"], out["k_grad"] = loss.detach(), q.grad, k.grad

    shuffled, idx = batch_shuffle(q_all[mine], generator=torch.Generator().manual_seed(1))
    out["shuffled"] = shuffled
    out["unshuffled"] = batch_unshuffle(shuffled * 2, idx)

    queue = KeyQueue(8, size=10)
    queue.queue.fill_(0.0)
    queue.enqueue(k_all[mine])
    out["queue"] = queue.ordered()

    one = slice(rank_, rank_ + 1)  # one image per rank: its partner lives on the other rank
    cross = CrossImageLoss(temperature=0.2)
    out["cross"] = cross(f1_all[one], f2_all[one], l1_all[one], l2_all[one])
    dino = DINOLoss(5)
    dino(torch.randn(3, n, 5), teacher_all[:, mine], epoch=0)
    out["center"] = dino.center
    results = {key: v.detach() for key, v in out.items()}
    torch.save(results, os.path.join(out_dir, f"rank{rank_}.pt"))
    dist.barrier()  # no rank tears gloo down while the other still talks to it
    dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_under_two_gloo_processes(tmp_path) -> None:
    from noisyseg.losses import CrossImageLoss, InfoNCELoss

    world = 2
    mp.spawn(_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world, join=True)
    res = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]

    torch.manual_seed(0)  # the same draws as the workers, on the whole batch
    n = 3
    q_all, k_all = torch.randn(world * n, 8), torch.randn(world * n, 8)
    f1_all, f2_all = torch.randn(world, 4, 3, 3), torch.randn(world, 4, 3, 3)
    l1_all, l2_all = torch.randint(0, 2, (world, 3, 3)), torch.randint(0, 2, (world, 3, 3))
    teacher_all = torch.randn(2, world * n, 5)

    for r in range(world):  # d/dx of sum_r' sum(gather(x) * w) = world * w[shard r]
        weight = torch.tensor([[1.0 + 2 * r], [2.0 + 2 * r]]).expand(2, 3)
        torch.testing.assert_close(res[r]["gather_grad"], world * weight)

    q = q_all.clone().requires_grad_(True)
    k = k_all.clone().requires_grad_(True)
    full = InfoNCELoss(temperature=0.3)(q, k)
    full.backward()
    torch.testing.assert_close(sum(x["infonce"] for x in res) / world, full.detach())
    # each rank's loss is a mean over its anchors; DDP averages the ranks' gradients
    torch.testing.assert_close(torch.cat([x["q_grad"] for x in res]) / world, q.grad)
    torch.testing.assert_close(torch.cat([x["k_grad"] for x in res]) / world, k.grad)

    shuffled = torch.cat([x["shuffled"] for x in res])
    assert not torch.equal(shuffled, q_all)
    assert torch.equal(shuffled.sort(0).values, q_all.sort(0).values)
    torch.testing.assert_close(torch.cat([x["unshuffled"] for x in res]), 2 * q_all)

    expected_queue = torch.cat([torch.zeros(4, 8), torch.nn.functional.normalize(k_all, dim=1)])
    for x in res:  # every rank holds the same queue: zeros, then rank 0's keys, then rank 1's
        torch.testing.assert_close(x["queue"], expected_queue)

    cross = CrossImageLoss(temperature=0.2)(f1_all, f2_all, l1_all, l2_all)
    torch.testing.assert_close(sum(x["cross"] for x in res) / world, cross)

    expected_center = 0.1 * teacher_all.reshape(-1, 5).mean(0, keepdim=True)
    for x in res:
        torch.testing.assert_close(x["center"], expected_center)


def test_moco_key_encoder_has_split_bn_and_no_trainable_parameters() -> None:
    from noisyseg.models.momentum import SplitBatchNorm2d
    from noisyseg.tasks import MoCoTask

    task = MoCoTask(hidden_dim=32, out_dim=16, queue_size=32, key_bn_chunks=4)
    bns = [m for m in task.key.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(isinstance(m, SplitBatchNorm2d) and m.groups == 4 for m in bns)
    assert not any(p.requires_grad for p in task.key.parameters())  # DDP rejects unused trainable ones
    assert not any(isinstance(m, SplitBatchNorm2d) for m in task.query.modules())  # queries: whole-batch BN
    assert list(task.key.state_dict()) == list(task.query.state_dict())
