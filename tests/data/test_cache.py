"""InMemory: each sample read once, the wrapped dataset's attributes passed through, per-epoch draws refused."""

import pytest
import torch
from torch.utils.data import Dataset

from noisyseg.data.cache import InMemory
from noisyseg.data.loading import DataModule, EpochIndex, make_sample
from noisyseg.data.product_noise import NoisyLabels
from noisyseg.data.vts import VTSPairs


class Counting(Dataset):
    normalization = {"mean": [1.0], "std": [2.0]}

    def __init__(self) -> None:
        self.reads = [0] * 4

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i):
        self.reads[int(i)] += 1
        return make_sample(torch.full((1, 4, 4), float(i)), torch.zeros(4, 4, dtype=torch.long))


def test_each_sample_read_once_and_served_equal():
    inner = Counting()
    ds = InMemory(inner)
    first = [ds[i]["image"][0, 0, 0].item() for i in range(4)]
    again = [ds[EpochIndex(i, 3)]["image"][0, 0, 0].item() for i in range(4)]  # epoch tags do not matter
    assert first == again == [0.0, 1.0, 2.0, 3.0]
    assert inner.reads == [1, 1, 1, 1]
    assert ds.normalization == Counting.normalization and len(ds) == 4


def test_refuses_per_epoch_draws_also_when_wrapped():
    pairs = VTSPairs("train", length=2, size=16, num_cells=4)
    with pytest.raises(ValueError, match="VTSPairs draws new samples every epoch"):
        InMemory(pairs)
    with pytest.raises(ValueError, match="VTSPairs"):
        InMemory(NoisyLabels(pairs))
    with pytest.raises(ValueError, match="cache: false"):
        DataModule(train=pairs, cache=True)


def test_datamodule_cache_wraps_every_split():
    inner = Counting()
    dm = DataModule(train=inner, test=Counting(), batch_size=2, cache=True)
    assert isinstance(dm.train_set, InMemory) and isinstance(dm.test_set, InMemory) and dm.val_set is None
    for _ in range(3):
        for _ in dm.train_dataloader():
            pass
    assert inner.reads == [1, 1, 1, 1]


def test_fit_start_measures_realised_label_noise(caplog):
    from noisyseg.data.vts import VTSSegmentation

    ds = VTSSegmentation("train", length=20, size=32, num_cells=10, label_noise={"flip_rate": 0.3})
    dm = DataModule(train=ds, batch_size=4, noise_report=8)
    with caplog.at_level("INFO"):
        dm.setup("fit")
    rate = sum((ds[i]["mask"] != ds[i]["clean_mask"]).sum().item() for i in range(8)) / (8 * 32 * 32)
    assert dm.label_agreement["agreement"] == pytest.approx(1 - rate) and dm.label_agreement["samples"] == 8
    assert "agree" in caplog.text
    clean = DataModule(train=Counting(), noise_report=8)  # no clean_mask: nothing measured
    clean.setup("fit")
    assert clean.label_agreement is None
    off = DataModule(train=ds, noise_report=0)
    off.setup("fit")
    assert off.label_agreement is None
