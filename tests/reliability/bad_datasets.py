"""Datasets that return bad samples on purpose (seeded, tiny), named by class_path in test configs.

They bypass :func:`~noisyseg.data.loading.make_sample` where a real but careless user dataset would,
so that the task's own per-batch checks are what is tested.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from noisyseg.data.loading import IGNORE_INDEX, IMAGE, MASK, META


class Broken(Dataset):
    """``length`` samples of ``bands x size x size``; ``kind`` says what is wrong from ``start`` on.

    Kinds: ``ok``, ``nan`` (NaN pixels), ``label`` (class id 7), ``float_mask``, ``empty`` (all
    pixels IGNORE_INDEX), ``huge`` (finite pixels of 3e38 that overflow to Inf/NaN inside the network).
    """

    def __init__(self, kind: str = "ok", length: int = 8, size: int = 32, bands: int = 3, start: int = 0) -> None:
        self.kind, self.length, self.size, self.bands, self.start = kind, length, size, bands, start

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        x = torch.randn(self.bands, self.size, self.size, generator=g)  # C x H x W
        y = (x[0] > 0).long()  # H x W, 2 classes
        if i >= self.start:
            if self.kind == "nan":
                x[:, 3:5, 3:5] = float("nan")
            elif self.kind == "label":
                y[0, 0] = 7
            elif self.kind == "float_mask":
                y = y.float() * 0.5
            elif self.kind == "huge":  # finite, but overflows to Inf in the first convolution
                x = x.sign() * 3e38
            elif self.kind == "empty":
                y[:] = IGNORE_INDEX
        return {IMAGE: x, MASK: y, META: {"source": f"broken-{self.kind}-{i}.tif"}}
