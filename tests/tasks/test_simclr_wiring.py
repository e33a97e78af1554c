"""SimCLRTask wiring: which view pairs with which, what the loss sees, what the fit exports.

:class:`~noisyseg.losses.NTXentLoss` is tested alone in ``tests/losses/test_ntxent.py``; here the
loss of a training step is recomputed from the recorded views with a loop NT-Xent (SimCLR eq. 1:
view i of the first batch is the positive of view i of the second), and a two-step Lightning fit
writes the encoder it trained. The CLI run of ``configs/pretrain/simclr_vts.yaml`` is in
``tests/test_configs.py``.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from noisyseg.data import DataModule, VTSPairs
from noisyseg.runfiles import read_encoder
from noisyseg.tasks import SimCLRTask

B, SIZE = 4, 32
CLOSE = {"rtol": 1e-5, "atol": 1e-6}


def make_task(**kw) -> SimCLRTask:
    torch.manual_seed(0)
    args = dict(hidden_dim=32, out_dim=16, channels_last=False)
    args.update(kw)
    return SimCLRTask(**args)


def images(n: int = B, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, SIZE, SIZE, generator=g) + torch.randn(n, 1, 1, 1, generator=g) * 2


def ntxent_loop(z1: torch.Tensor, z2: torch.Tensor, t: float) -> float:
    """SimCLR's loss over ``[z1; z2]``, one anchor at a time in float64."""
    z = F.normalize(torch.cat([z1, z2]).double(), dim=1)
    n2 = z.shape[0]
    total = 0.0
    for a in range(n2):
        p = (a + n2 // 2) % n2
        den = sum(torch.exp(z[a] @ z[j] / t) for j in range(n2) if j != a)
        total += float(-torch.log(torch.exp(z[a] @ z[p] / t) / den).detach())
    return total / n2


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")  # training_step without a Trainer
def test_training_step_pairs_view_i_with_view_i_of_the_other_batch(one_thread) -> None:
    task = make_task(temperature=0.3).eval()  # eval BN: an embedding depends on its own image only
    x1, x2 = images(seed=1), images(seed=1) + 0.1 * images(seed=2)  # x2[i] is close to x1[i]
    task.views = lambda batch: (x1, x2)
    loss = task.training_step({"image": x1}, 0)
    with torch.no_grad():
        z1, z2 = task.model(x1), task.model(x2)  # each image alone
    torch.testing.assert_close(loss.double(), torch.tensor(ntxent_loop(z1, z2, 0.3), dtype=torch.float64), **CLOSE)
    p = torch.tensor([1, 2, 3, 0])
    task.views = lambda batch: (x1, x2[p])  # the same views, pairs broken
    shuffled = task.training_step({"image": x1}, 0)
    torch.testing.assert_close(shuffled.double(), torch.tensor(ntxent_loop(z1, z2[p], 0.3), dtype=torch.float64), **CLOSE)
    assert shuffled > loss + 0.1


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")
def test_train_mode_runs_both_views_through_one_batch(one_thread) -> None:
    """BatchNorm statistics come from the 2B views together, as in SimCLR's concatenated batch."""
    task = make_task().train()
    x1, x2 = images(seed=3), images(seed=4)
    task.views = lambda batch: (x1, x2)
    loss = task.training_step({"image": x1}, 0)
    z = task.model(torch.cat([x1, x2]))  # train BN: the same batch gives the same embeddings
    torch.testing.assert_close(loss.double(), torch.tensor(ntxent_loop(z[:B], z[B:], 0.5), dtype=torch.float64), **CLOSE)
    separate = ntxent_loop(task.model(x1), task.model(x2), 0.5)  # statistics of each view alone
    assert abs(separate - float(loss)) > 1e-3


def test_views_augment_image_and_its_partner(one_thread) -> None:
    task = make_task()
    x = images(seed=5)
    x1, x2 = task.views({"image": x, "image2": x + 100.0})
    assert x1.shape == x2.shape == x.shape
    assert float(x1.mean()) < 10 < 90 < float(x2.mean())  # the second view is of image2
    y1, y2 = task.views({"image": x})  # no partner: two augmentations of image
    assert float(y1.mean()) < 10 and float(y2.mean()) < 10 and not torch.equal(y1, y2)


def test_two_step_fit_trains_and_exports_the_encoder(one_thread, tmp_path) -> None:
    L.seed_everything(0)
    out = tmp_path / "encoder.safetensors"
    task = make_task(false_negative="per_anchor", fn_threshold=-1.0, alpha=0.5, encoder_out=str(out), lr=0.05)
    before = {k: v.clone() for k, v in task.encoder.state_dict().items()}
    data = DataModule(train=VTSPairs(length=8, size=SIZE), batch_size=B, drop_last=True)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
    )
    trainer.fit(task, datamodule=data)
    assert trainer.global_step == 2
    assert task.loss_fn.last_false_negatives == 2 * B  # per_anchor, threshold -1: one per anchor
    state, meta = read_encoder(out)
    assert meta["trained"]["method"] == "simclr-false-per_anchor" and meta["trained"]["steps"] == 2
    assert meta["trained"]["task"] == "SimCLRTask"
    now = task.encoder.state_dict()
    for name, value in state.items():
        torch.testing.assert_close(value, now[name].contiguous(), rtol=0, atol=0, msg=name)
    assert not torch.equal(state["conv1.weight"], before["conv1.weight"])  # SGD moved the encoder
