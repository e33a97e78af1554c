"""EpochSampler: per-epoch draws that reach loader workers, reproducible, split across DDP ranks.

The bug these guard against: the epoch was handed to the dataset in the main process while
persistent loader workers kept their own copy, so with workers the noisy-pair draw of Gerard &
Sullivan ("redrawn each time an image is loaded") was identical in every epoch.
"""

import pickle

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from noisyseg.data.loading import DataModule, EpochIndex, EpochSampler, collate, epoch_of
from noisyseg.data.vts import VTSPairs


def test_epoch_index_is_an_int_that_carries_its_epoch_through_pickle():
    i = EpochIndex(7, epoch=3)
    assert i == 7 and hash(i) == hash(7) and [10, 11, 12, 13, 14, 15, 16, 17][i] == 17
    j = pickle.loads(pickle.dumps(i))  # what a loader worker receives
    assert j == 7 and epoch_of(j) == 3
    assert epoch_of(7) == 0 and epoch_of(7, default=5) == 5
    assert epoch_of(EpochIndex.carry(i, 2)) == 3 and EpochIndex.carry(i, 2) == 2
    assert type(EpochIndex.carry(4, 2)) is int


def test_order_is_a_function_of_seed_and_epoch():
    ds = range(50)
    a, b = EpochSampler(ds, seed=1), EpochSampler(ds, seed=1)
    a.set_epoch(2), b.set_epoch(2)
    first = list(a)
    assert first == list(b) and sorted(first) == list(range(50))  # one permutation, reproduced
    assert all(epoch_of(i) == 2 for i in first)
    a.set_epoch(3)
    assert list(a) != first and all(epoch_of(i) == 3 for i in a)
    assert list(EpochSampler(ds, seed=2)) != list(EpochSampler(ds, seed=1))


def test_replacement_and_samples_per_epoch():
    s = EpochSampler(range(6), seed=0, replacement=True, num_samples=600)
    draws = torch.tensor([int(i) for i in s])
    assert len(s) == 600 and len(draws) == 600
    counts = torch.bincount(draws, minlength=6)
    assert (counts > 60).all() and len(set(draws[:12].tolist())) < 12  # uniform, and repeats
    s = EpochSampler(range(6), seed=0, num_samples=15)  # without replacement: whole permutations
    draws = [int(i) for i in s]
    assert len(draws) == 15 and sorted(draws[:6]) == list(range(6)) and sorted(draws[6:12]) == list(range(6))


@pytest.mark.parametrize("n, size", [(10, None), (11, None), (6, 9)])
def test_ranks_get_disjoint_equal_shares_whose_union_is_the_epoch(n, size):
    ranks = [EpochSampler(range(n), seed=4, num_samples=size, num_replicas=2, rank=r) for r in (0, 1)]
    for s in ranks:
        s.set_epoch(1)
    shares = [[int(i) for i in s] for s in ranks]
    assert len(shares[0]) == len(shares[1]) == len(ranks[0])
    epoch = ranks[0].epoch_indices(1).tolist()
    assert sorted(shares[0] + shares[1]) == sorted(epoch)  # the one-process epoch, split in two
    if size is None and n % 2 == 0:
        assert not set(shares[0]) & set(shares[1])  # no padding: disjoint


def _pair_draws(num_workers: int, epochs: int = 3, seed: int = 0) -> list[list[bool]]:
    ds = VTSPairs("train", length=24, size=16, num_cells=4, r=0.5, p=0.5, seed=3)
    sampler = EpochSampler(ds, seed=seed)
    loader = DataLoader(ds, batch_size=8, sampler=sampler, num_workers=num_workers, collate_fn=collate,
                        persistent_workers=num_workers > 0)
    out = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)  # what Lightning's fit loop does before each epoch
        drawn = {}
        for batch in loader:
            for m in batch["meta"]:
                drawn[m["index"]] = (m["noisy"], m["epoch"])
        assert all(e == epoch for _, e in drawn.values())  # the worker saw this epoch
        out.append([drawn[i][0] for i in range(24)])
    return out


def test_pairing_redrawn_every_epoch_with_persistent_workers():
    with_workers = _pair_draws(num_workers=2)
    assert with_workers[0] != with_workers[1] and with_workers[1] != with_workers[2]
    assert with_workers == _pair_draws(num_workers=0)  # workers change nothing
    assert with_workers == _pair_draws(num_workers=2)  # bit for bit again


class _RecordEpochs(L.LightningModule):
    """Records the epoch each training sample was drawn for, as the dataset saw it."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[tuple[int, int, bool]] = []

    def training_step(self, batch, batch_idx):
        self.seen += [(self.current_epoch, m["epoch"], m["noisy"]) for m in batch["meta"]]
        return (self.w * batch["image"].mean()).sum() + self.w.square().sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_fit_tells_workers_the_epoch():
    ds = VTSPairs("train", length=16, size=16, num_cells=4, r=0.5, p=0.5)
    dm = DataModule(train=ds, batch_size=8, num_workers=2, seed=0)
    model = _RecordEpochs()
    L.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, accelerator="cpu").fit(model, datamodule=dm)
    assert len(model.seen) == 48
    assert all(trainer_epoch == drawn for trainer_epoch, drawn, _ in model.seen)
    noisy_per_epoch = [sum(n for e, _, n in model.seen if e == k) for k in range(3)]
    assert 0 < noisy_per_epoch[0] < 16


def test_datamodule_fixed_draws_per_epoch():
    dm = DataModule(train=VTSPairs("train", length=5, size=16, num_cells=4), batch_size=4,
                    replacement=True, samples_per_epoch=40, seed=0)
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, EpochSampler) and len(loader) == 10
    with pytest.raises(ValueError, match="samples_per_epoch=0"):
        DataModule(samples_per_epoch=0)
