"""MoCoTask wiring: which sample a key belongs to, which queue the loss sees, how the key encoder moves.

The parts (``batch_shuffle``, ``SplitBatchNorm2d``, ``KeyQueue``, ``momentum_update``,
``InfoNCELoss``) are tested alone in ``tests/models_contrastive`` and ``tests/losses``; here each
test checks how :class:`~noisyseg.tasks.MoCoTask` puts them together, against values computed in
the test. Reference: facebookresearch/moco ``moco/builder.py`` (``forward``: momentum update, then
shuffled keys, unshuffle, logits against the queue as it was, then ``_dequeue_and_enqueue``).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import noisyseg.tasks.moco as moco_module
from noisyseg.losses import InfoNCELoss
from noisyseg.tasks import MoCoTask

B, SIZE, OUT_DIM = 8, 32, 16
CLOSE = {"rtol": 1e-4, "atol": 1e-5}  # same network, different batch composition of the convolutions


def make_task(**kw) -> MoCoTask:
    torch.manual_seed(0)
    args = dict(hidden_dim=32, out_dim=OUT_DIM, queue_size=16, key_bn_chunks=2, channels_last=False)
    args.update(kw)
    return MoCoTask(**args)


def images(n: int = B, seed: int = 1) -> torch.Tensor:
    """``[n, 3, SIZE, SIZE]`` distinct images, with per-sample offsets so that BN statistics depend on the mix."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, SIZE, SIZE, generator=g) + torch.randn(n, 1, 1, 1, generator=g) * 2


def plain_bn_copy(task: MoCoTask) -> torch.nn.Module:
    """The key network's weights and buffers in the query's architecture (plain, unsplit BatchNorm)."""
    ref = copy.deepcopy(task.query)
    ref.load_state_dict(task.key.state_dict())
    return ref


def record_shuffle(monkeypatch) -> list[torch.Tensor]:
    """Record the permutation (``x2s = x[perm]``) of every ``batch_shuffle`` call the task makes."""
    perms: list[torch.Tensor] = []
    shuffle = moco_module.batch_shuffle

    def spy(x, *args, **kwargs):
        xs, idx_unshuffle = shuffle(x, *args, **kwargs)
        perms.append(torch.argsort(idx_unshuffle))  # x2s[j] = x[perm[j]]
        return xs, idx_unshuffle

    monkeypatch.setattr(moco_module, "batch_shuffle", spy)
    return perms


def test_eval_mode_key_of_each_sample_is_that_samples_key(one_thread, monkeypatch) -> None:
    task = make_task().eval()  # eval BN: a key depends on its own image only
    perms = record_shuffle(monkeypatch)
    x = images()
    k = task.keys(x)  # [B, D]
    assert len(perms) == 1 and not torch.equal(perms[0], torch.arange(B))  # the batch really was shuffled
    expected = task.key(x)  # every sample in its own row, no shuffle
    torch.testing.assert_close(k, expected, **CLOSE)
    # and the other way round: permuting the batch permutes the keys identically
    p = torch.tensor([3, 0, 7, 1, 6, 2, 5, 4])
    torch.testing.assert_close(task.keys(x[p]), expected[p], **CLOSE)


def test_train_mode_keys_use_split_bn_over_the_shuffled_batch(one_thread, monkeypatch) -> None:
    """Key i = the key network run on the shuffled sub-batch that holds sample i, put back at row i."""
    task = make_task(key_bn_chunks=2).train()
    perms = record_shuffle(monkeypatch)
    x = images()
    k = task.keys(x)  # [B, D]
    (perm,) = perms
    ref = plain_bn_copy(task).train()  # train mode: batch statistics, running statistics unused
    expected = torch.empty_like(k)
    for chunk in torch.tensor_split(torch.arange(B), 2):  # positions in the shuffled batch
        rows = perm[chunk]  # original sample indices of this sub-batch
        expected[rows] = ref(x[rows])
    torch.testing.assert_close(k, expected, **CLOSE)
    # the grouping matters on these images: whole-batch statistics (no split BN) give other keys,
    # and so do sub-batches of the unshuffled order
    assert not torch.allclose(ref(x), expected, **CLOSE)
    unshuffled = torch.cat([ref(part) for part in torch.tensor_split(x, 2)])
    assert not torch.allclose(unshuffled, expected, **CLOSE)


@pytest.mark.parametrize("m", [0.9, 0.999])  # not 0.5: swapping m and 1 - m would go unseen
def test_key_encoder_is_momentum_updated_before_it_encodes(one_thread, m: float) -> None:
    task = make_task(momentum=m).eval()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # make the query differ from the key (they start as copies)
        for p in task.query.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
        for name, b in task.query.named_buffers():
            if b.is_floating_point():
                b.add_(torch.rand(b.shape, generator=g))
    key0 = {n: p.clone() for n, p in task.key.named_parameters()}
    query0 = {n: p.clone() for n, p in task.query.named_parameters()}
    query_buffers = {n: b.clone() for n, b in task.query.named_buffers()}
    x = images()
    k = task.keys(x)
    for name, p in task.key.named_parameters():  # key <- m key + (1 - m) query, once
        torch.testing.assert_close(p, m * key0[name] + (1 - m) * query0[name], rtol=1e-6, atol=1e-7, msg=name)
    for name, p in task.query.named_parameters():  # the query network is not touched
        assert torch.equal(p, query0[name]), name
    for name, b in task.key.named_buffers():  # buffers copied from the query
        assert torch.equal(b, query_buffers[name]), name
    # the keys come from the updated network (MoCo: update, then encode)
    ref = copy.deepcopy(task.query)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            p.copy_(m * key0[name] + (1 - m) * query0[name])
    torch.testing.assert_close(k, ref(x), **CLOSE)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")  # training_step without a Trainer
@pytest.mark.parametrize("ptr", [3, 14])  # 14: a batch of 4 crosses the end of a 16-key queue
def test_training_step_loss_reads_the_queue_before_this_steps_keys(one_thread, ptr: int) -> None:
    n, size = 4, 16
    task = make_task(queue_size=size, temperature=0.2).train()
    task.key.eval()  # keys computed without batch statistics, so the test can recompute them
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        task.queue.queue.copy_(F.normalize(torch.randn(size, OUT_DIM, generator=g), dim=1))
        task.queue.ptr.fill_(ptr)
    queue_before = task.queue.queue.clone()
    views: list[tuple[torch.Tensor, torch.Tensor]] = []
    make_views = task.views
    task.views = lambda batch: views.append(make_views(batch)) or views[-1]  # record x1, x2
    batch = {"image": images(n, seed=4), "image2": images(n, seed=5)}

    loss = task.training_step(batch, 0)
    loss.backward()  # the negatives used by the loss were not overwritten in place by the enqueue

    (x1, x2), = views
    q = task.query(x1)  # [n, D] train-mode BN: the same batch gives the same queries
    k = task.key(x2)  # [n, D] the key network after this step's momentum update (eval BN)
    expected = InfoNCELoss(0.2)(q, k, queue_before)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(InfoNCELoss(0.2)(q, k, task.queue.queue), expected, rtol=1e-5, atol=1e-6)

    rows = (ptr + torch.arange(n)) % size  # ptr..K-1, then 0..
    torch.testing.assert_close(task.queue.queue[rows], F.normalize(k, dim=1), **CLOSE)
    others = torch.ones(size, dtype=torch.bool)
    others[rows] = False
    assert torch.equal(task.queue.queue[others], queue_before[others])
    assert int(task.queue.ptr) == (ptr + n) % size


# ------------------------------------------------------------------------------------- queue sizing
@pytest.mark.parametrize(("n", "batch", "expected"), [
    (1000, 32, 480),  # half of 1000 = 500, rounded down to a multiple of 32
    (1000, 8, 496), (40, 32, 32),  # never below one global batch
    (10**6, 256, 65536),  # capped (65536 is a multiple of 256)
    (10**6, 100, 65500),  # the cap rounded down to a multiple of the batch
    (64, 32, 32),
])
def test_default_queue_size_values(n: int, batch: int, expected: int) -> None:
    assert moco_module.default_queue_size(n, batch) == expected
    assert moco_module.default_queue_size(1000, 32, cap=100) == 96


def fake_trainer(world_size: int = 1):
    from types import SimpleNamespace

    return SimpleNamespace(world_size=world_size)  # all that setup reads from the trainer


def test_setup_sizes_a_null_queue_from_its_arguments() -> None:
    task = make_task(queue_size=None, train_size=200, batch_size=8)
    assert task.queue is None
    task._trainer = fake_trainer()
    task.setup("fit")
    assert tuple(task.queue.queue.shape) == (96, OUT_DIM)  # half of 200 = 100 -> 96, 8 per batch
    kept = task.queue
    task.setup("validate")  # a second setup keeps the queue (and its keys)
    assert task.queue is kept


def test_setup_sizes_the_queue_from_the_global_batch_of_a_two_process_world() -> None:
    # half of 100 = 50: a multiple of the global batch 2 x 7 = 14 is 42 (one process: 7 -> 49)
    task = make_task(queue_size=None, train_size=100, batch_size=7)
    task._trainer = fake_trainer(world_size=2)
    task.setup("fit")
    assert tuple(task.queue.queue.shape) == (42, OUT_DIM)
    task = make_task(queue_size=None, train_size=100, batch_size=7)
    task._trainer = fake_trainer(world_size=1)
    task.setup("fit")
    assert tuple(task.queue.queue.shape) == (49, OUT_DIM)
    task = make_task(queue_size=10, batch_size=7)  # holds one process's 7 keys, not two processes' 14
    task._trainer = fake_trainer(world_size=2)
    with pytest.raises(ValueError, match="queue size 10 is smaller than the global batch"):
        task.setup("fit")


def test_setup_without_sizes_or_with_a_bad_batch_raises() -> None:
    task = make_task(queue_size=None, batch_size=8)
    task._trainer = fake_trainer()
    with pytest.raises(ValueError, match="queue_size is null but train_size=None"):
        task.setup("fit")
    task = make_task(queue_size=None, train_size=200)
    task._trainer = fake_trainer()
    with pytest.raises(ValueError, match="queue_size is null but train_size=200 and batch_size=None"):
        task.setup("fit")
    task = make_task(queue_size=4, batch_size=8)  # smaller than one batch of keys
    task._trainer = fake_trainer()
    with pytest.raises(ValueError, match="queue size 4 is smaller than the global batch"):
        task.setup("fit")
    task = make_task(queue_size=16, train_size=200, batch_size=8)
    task._trainer = fake_trainer()
    task.setup("fit")
    assert tuple(task.queue.queue.shape) == (16, OUT_DIM)


def test_a_checkpoint_restored_after_setup_resizes_the_queue() -> None:
    # Lightning's order on fit(ckpt_path=...): setup sizes the queue from the arguments, then the
    # checkpoint's queue (another size: another batch or dataset when it was saved) replaces it
    task = make_task(queue_size=None, train_size=200, batch_size=8)
    task._trainer = fake_trainer()
    task.setup("fit")
    saved = F.normalize(torch.randn(24, OUT_DIM), dim=1)
    ckpt = {"state_dict": {**task.state_dict(), "queue.queue": saved, "queue.ptr": torch.tensor(5)}}
    task.on_load_checkpoint(ckpt)
    task.load_state_dict(ckpt["state_dict"])
    assert torch.equal(task.queue.queue, saved) and int(task.queue.ptr) == 5


def test_load_checkpoint_resizes_the_queue_to_the_checkpoints() -> None:
    task = make_task(queue_size=None)
    saved = torch.randn(24, OUT_DIM)
    task.on_load_checkpoint({"state_dict": {"queue.queue": saved}})
    assert tuple(task.queue.queue.shape) == (24, OUT_DIM)
    task = make_task(queue_size=16)
    before = task.queue
    task.on_load_checkpoint({"state_dict": {"queue.queue": torch.randn(16, OUT_DIM)}})
    assert task.queue is before  # same shape: the existing queue receives the state
    task.on_load_checkpoint({"state_dict": {"queue.queue": torch.randn(32, OUT_DIM)}})
    assert tuple(task.queue.queue.shape) == (32, OUT_DIM)
    task.on_load_checkpoint({"state_dict": {}})  # a checkpoint without a queue leaves it alone
    assert tuple(task.queue.queue.shape) == (32, OUT_DIM)
