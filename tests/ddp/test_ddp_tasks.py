"""Every task under Lightning DDP: two gloo processes on the CPU against one-process references.

``tests/models_contrastive/test_momentum.py`` checks the primitives (gather, shuffle, queue, raw
losses) in ``mp.spawn`` processes; here the *tasks* run through ``Trainer(strategy="ddp",
devices=2)`` and the test compares what each rank recorded with the same computation done on the
concatenated global batch in this one process.

How it runs: ``strategy="ddp"`` relaunches ``sys.argv`` for rank 1, which would be pytest itself,
so a small script (``ddp_worker.py``) is started as a subprocess instead and Lightning relaunches
*it*; all scenarios run in that one launch (one import of torch per rank, ~10 s each on a busy
2-core machine) and write per-rank results. ``ddp_spawn`` was not used: it pickles the module and
its hooks into fresh processes and brings the trained state back only for rank 0, so the
per-rank records this test compares would need the same file round trip anyway.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassConfusionMatrix

from noisyseg.data import DataModule, VTSSegmentation
from noisyseg.data.loading import IGNORE_INDEX, UnpaddedDistributedSampler
from noisyseg.losses import CrossImageLoss, InfoNCELoss, WithinImageLoss
from noisyseg.tasks import SegmentationTask

WORKER = Path(__file__).with_name("ddp_worker.py")
SCENARIOS = ["segmentation", "moco", "false_per_anchor", "false_closest", "dino", "dense_within", "dense_cross"]
WORLD, BATCH, STEPS = 2, 2, 2


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Run every scenario once under two-process DDP; the directory of per-rank results."""
    out = tmp_path_factory.mktemp("ddp")
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [sys.executable, str(WORKER), str(out), *SCENARIOS], env=env, capture_output=True, text=True, timeout=280
    )
    if proc.returncode != 0:
        pytest.fail(f"ddp_worker.py exited with {proc.returncode}:\n{proc.stderr[-6000:]}")
    return out


def load(runs: Path, name: str) -> list[dict[str, Any]]:
    return [torch.load(runs / f"{name}.rank{r}.pt", weights_only=False) for r in range(WORLD)]


def global_batch(calls: list[list[dict[str, Any]]], step: int) -> list[torch.Tensor]:
    """The loss inputs of ``step`` concatenated over ranks in rank order (what gather builds)."""
    return [torch.cat(parts) for parts in zip(*(c[step]["args"] for c in calls))]


def mean_over_ranks(calls: list[list[dict[str, Any]]], step: int) -> torch.Tensor:
    """DDP averages the ranks' gradients, so the trained objective is the mean of their losses."""
    return torch.stack([c[step]["out"] for c in calls]).mean()


# ---------------------------------------------------------------------------------------- all tasks
@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", SCENARIOS)
def test_task_fits_two_steps_with_parameters_in_sync(runs: Path, name: str) -> None:
    res = load(runs, name)
    assert [r["global_step"] for r in res] == [STEPS, STEPS]
    # ranks saw different data, so equal parameters mean DDP all-reduced the gradients
    assert torch.equal(res[0]["params"], res[1]["params"])
    assert torch.isfinite(res[0]["params"]).all()
    # BN running statistics are per rank during training; BaseTask.on_train_end broadcasts rank 0's
    key = "buffers" if "buffers" in res[0] else "buffers_after_fit"
    assert torch.equal(res[0][key], res[1][key])
    for r in res:
        for call in r.get("loss_calls", []):
            assert torch.isfinite(call["out"])
        if "loss_calls" in r:
            assert len(r["loss_calls"]) == STEPS


# ---------------------------------------------------------------------------------------- MoCo
@pytest.mark.timeout(300)
def test_moco_queue_holds_the_keys_of_both_ranks(runs: Path) -> None:
    res = load(runs, "moco")
    keys = [r["keys"] for r in res]  # per rank, per step: [B, D] local keys before the gather
    assert all(len(k) == STEPS and k[0].shape[0] == BATCH for k in keys)
    assert not torch.equal(keys[0][0], keys[1][0])  # the ranks encoded different images
    # after each step the queue grew by the global batch, rank 0's keys first: 2 steps x 2B rows
    new = torch.cat([keys[r][s] for s in range(STEPS) for r in range(WORLD)])  # [S*W*B, D]
    n = new.shape[0]
    for r in res:
        assert r["ptr"] == n == STEPS * WORLD * BATCH
        torch.testing.assert_close(r["queue"][:n], F.normalize(new, dim=1))
        assert torch.equal(r["queue"][n:], r["queue_initial"][n:])  # older rows untouched
    assert torch.equal(res[0]["queue"], res[1]["queue"])  # one queue, the same on every rank
    # the negatives of step 2 on each rank include the other rank's step-1 keys
    step1 = F.normalize(torch.cat([keys[0][0], keys[1][0]]), dim=1)  # [2B, D]
    for r in res:
        torch.testing.assert_close(r["loss_calls"][1]["args"][2][: WORLD * BATCH], step1)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name, mode", [("moco", "none"), ("false_per_anchor", "per_anchor")])
def test_moco_and_false_loss_equal_the_global_batch_loss(runs: Path, name: str, mode: str) -> None:
    res = load(runs, name)
    calls = [r["loss_calls"] for r in res]
    # the worker's settings: T=0.2, alpha=1, per-anchor threshold -0.99 (every anchor's closest
    # negative is flagged, so FALSE's calibration is exercised on every row)
    loss_fn = InfoNCELoss(0.2, mode, 1.0, -0.99, -1.0)
    for step in range(STEPS):
        q, k, queue = global_batch(calls, step)[0], global_batch(calls, step)[1], calls[0][step]["args"][2]
        assert torch.equal(calls[0][step]["args"][2], calls[1][step]["args"][2])  # same negatives
        torch.testing.assert_close(mean_over_ranks(calls, step), loss_fn(q, k, queue))
        if mode != "none":  # FALSE really changed the loss on these inputs
            assert not torch.allclose(loss_fn(q, k, queue), InfoNCELoss(0.2)(q, k, queue))


@pytest.mark.timeout(300)
def test_false_closest_selects_one_pair_per_rank(runs: Path) -> None:
    """FALSE's one-pair selection (``closest``) picks one (anchor, negative) pair per *process*, as
    the authors' code does on its per-GPU similarity matrix: each rank's loss is the loss of its own
    shard against the shared queue, not a slice of a single global selection."""
    calls = [r["loss_calls"] for r in load(runs, "false_closest")]
    loss_fn = InfoNCELoss(0.2, "closest", 1.0, -0.99, -1.0)
    for step in range(STEPS):
        for c in calls:
            q, k, queue = c[step]["args"]
            torch.testing.assert_close(c[step]["out"], loss_fn(q, k, queue))
    q, k = global_batch(calls, 0)[:2]
    global_selection = loss_fn(q, k, calls[0][0]["args"][2])
    assert not torch.allclose(mean_over_ranks(calls, 0), global_selection)


# ---------------------------------------------------------------------------------------- DINO
@pytest.mark.timeout(300)
def test_dino_center_moves_to_the_mean_teacher_output_of_both_ranks(runs: Path) -> None:
    res = load(runs, "dino")
    calls = [r["loss_calls"] for r in res]
    center = torch.zeros(1, res[0]["center"].shape[1])
    for step in range(STEPS):
        teacher = torch.cat([c[step]["args"][1] for c in calls], dim=1)  # [G, W*B, K]
        for r in res:
            torch.testing.assert_close(r["centers_before"][step], center)
        center = 0.9 * center + 0.1 * teacher.reshape(-1, teacher.shape[-1]).mean(0, keepdim=True)
    for r in res:
        torch.testing.assert_close(r["center"], center)


# ---------------------------------------------------------------------------------------- dense
@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", ["within", "cross"])
def test_dense_loss_equals_the_global_batch_loss(runs: Path, mode: str) -> None:
    calls = [r["loss_calls"] for r in load(runs, f"dense_{mode}")]
    loss_fn = CrossImageLoss(0.07) if mode == "cross" else WithinImageLoss(0.07)
    for step in range(STEPS):
        torch.testing.assert_close(mean_over_ranks(calls, step), loss_fn(*global_batch(calls, step)))
        for c in calls:
            alone = loss_fn(*c[step]["args"])  # the rank's shard as if it were the whole batch
            if mode == "within":  # no cross-image term: a rank needs nothing from the other
                torch.testing.assert_close(c[step]["out"], alone)
            else:  # the last image of a rank is paired with the other rank's first image
                assert not torch.allclose(c[step]["out"], alone)


# ---------------------------------------------------------------------------------------- metrics
def one_process_confusions(runs: Path, length: int) -> tuple[torch.Tensor, list[torch.Tensor], float]:
    """Rank 0's weights tested in this process: Trainer.test's matrix, per-image matrices, mIoU."""
    torch.set_num_threads(1)  # as in the workers: same convolution summation order
    task = SegmentationTask(decoder="unet", num_classes=2, channels_last=False)
    task.load_state_dict(torch.load(runs / "segmentation_model.pt"))
    ds = VTSSegmentation("test", length=length, size=32, num_cells=6, label_noise={"flip_rate": 0.3})
    calls: list[torch.Tensor] = []
    compute = task.test_cm.compute
    task.test_cm.compute = lambda: calls.append(compute()) or calls[-1]
    trainer = L.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, precision="32-true", default_root_dir=str(runs / "one_process"),
    )
    trainer.test(task, datamodule=DataModule(test=ds, batch_size=BATCH, eval_batch_size=1), verbose=False)
    per_image = []
    task.eval()
    with torch.no_grad():
        for i in range(length):
            s = ds[i]
            cm = MulticlassConfusionMatrix(2, ignore_index=IGNORE_INDEX, validate_args=False)
            cm.update(task(s["image"][None]).argmax(1), s["clean_mask"][None])
            per_image.append(cm.compute())
    return calls[-1], per_image, task.test_scores["miou"]


@pytest.mark.timeout(300)
def test_segmentation_metrics_match_one_process(runs: Path) -> None:
    res = load(runs, "segmentation")
    cm9, per_image, miou9 = one_process_confusions(runs, 9)
    assert torch.equal(torch.stack(per_image).sum(0), cm9)
    assert cm9.diag().sum() > 0 and (cm9.sum() - cm9.diag().sum()) > 0  # not a trivial matrix
    cm8 = torch.stack(per_image[:8]).sum(0)

    # 8 images on 2 ranks: Lightning's DistributedSampler splits them without repeats
    run = [r["test8_lightning"] for r in res]
    assert sorted(run[0]["seen"] + run[1]["seen"]) == list(range(8))
    assert torch.equal(run[0]["cm"]["local"] + run[1]["cm"]["local"], cm8)
    for r in run:
        assert torch.equal(r["cm"]["reduced"], cm8)  # reduced over ranks = one process

    # 9 images: Lightning's sampler pads rank 1 with image 0, which is then counted twice
    run = [r["test9_lightning"] for r in res]
    assert run[1]["seen"][-1] == 0 and sorted(run[0]["seen"] + run[1]["seen"]) == [0, *range(9)]
    assert torch.equal(run[0]["cm"]["reduced"], cm9 + per_image[0])
    assert run[0]["miou"] != pytest.approx(miou9)

    # 9 images through UnpaddedDistributedSampler: every image once, exactly one process's result
    run = [r["test9_unpadded"] for r in res]
    assert sorted(run[0]["seen"] + run[1]["seen"]) == list(range(9))
    for r in run:
        assert torch.equal(r["cm"]["reduced"], cm9)
        assert r["miou"] == pytest.approx(miou9, abs=1e-12)

    # validation inside fit (DDP-wrapped module, 9 images, unpadded sampler, uneven 5/4 batches)
    assert sorted(res[0]["val_seen"] + res[1]["val_seen"]) == list(range(9))
    for r in res:
        assert torch.equal(r["val_cm"][-1]["reduced"], cm9)
        assert r["val_miou"] == pytest.approx(miou9, abs=1e-12)


def test_unpadded_sampler_splits_without_repeats_and_rejects_tiny_splits() -> None:
    data = list(range(9))
    parts = [list(UnpaddedDistributedSampler(data, num_replicas=2, rank=r)) for r in range(2)]
    assert parts == [[0, 2, 4, 6, 8], [1, 3, 5, 7]]
    assert [len(UnpaddedDistributedSampler(data, 2, r)) for r in range(2)] == [5, 4]
    assert list(UnpaddedDistributedSampler(data)) == data  # no process group: everything, in order
    with pytest.raises(ValueError, match="1 sample.*2 processes"):
        UnpaddedDistributedSampler([0], num_replicas=2, rank=0)
    with pytest.raises(ValueError, match=r"rank 2.*\[0, 1\]"):
        UnpaddedDistributedSampler(data, num_replicas=2, rank=2)
