"""Realised label noise: agreement, precision, recall and IoU against a hand-computed confusion matrix."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml

from noisyseg.data.label_noise import AgreementCounter, dataset_agreement, format_agreement, label_agreement
from noisyseg.data.preview import main as preview
from noisyseg.data.product_noise import NoisyLabels
from noisyseg.data.loading import IGNORE_INDEX
from noisyseg.data.vts import VTSSegmentation

I = IGNORE_INDEX
CLEAN = np.array([[0, 0, 1, 1],
                  [2, 2, I, 1]])
NOISY = np.array([[0, 1, 1, 0],
                  [2, 0, 1, I]])
# counted pairs (clean, noisy): (0,0) (0,1) (1,1) (1,0) (2,2) (2,0); (I,1) not counted; (1,I) noisy-ignored
CONFUSION = [[1, 1, 0, 0],
             [1, 1, 0, 0],
             [1, 0, 1, 0],
             [0, 0, 0, 0]]


def close(a, b):
    return all((math.isnan(x) and math.isnan(y)) or x == pytest.approx(y) for x, y in zip(a, b, strict=True))


def test_label_agreement_against_hand_counts():
    d = label_agreement(NOISY, torch.from_numpy(CLEAN), num_classes=4)
    assert d["confusion"] == CONFUSION  # rows clean, columns noisy
    assert d["pixels"] == 6 and d["noisy_ignored"] == 1
    assert d["agreement"] == pytest.approx(3 / 6)
    nan = float("nan")
    assert close(d["precision"], [1 / 3, 1 / 2, 1 / 1, nan])  # diagonal / column sums 3, 2, 1, 0
    assert close(d["recall"], [1 / 2, 1 / 2, 1 / 2, nan])  # diagonal / row sums 2, 2, 2, 0
    assert close(d["iou"], [1 / (2 + 3 - 1), 1 / (2 + 2 - 1), 1 / (2 + 1 - 1), nan])


def test_label_agreement_rejects_labels_outside_the_classes():
    with pytest.raises(ValueError, match=r"label 2 is outside 0..1 \(num_classes=2"):
        label_agreement(NOISY, CLEAN, num_classes=2)
    with pytest.raises(ValueError, match="differ in shape"):
        label_agreement(NOISY, CLEAN.T, num_classes=3)


def test_counter_grows_without_num_classes():
    c = AgreementCounter()
    c.update(np.array([[0, 1]]), np.array([[0, 1]]))
    c.update(NOISY, CLEAN)
    assert c.result()["confusion"] == [[2, 1, 0], [1, 2, 0], [1, 0, 1]] and c.samples == 2


class Pairs:
    def __init__(self, pairs):
        self.pairs = pairs

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, i):
        noisy, clean = self.pairs[i]
        return {"mask": torch.from_numpy(noisy), **({} if clean is None else {"clean_mask": torch.from_numpy(clean)})}


def test_dataset_agreement_sums_the_samples():
    same = (CLEAN.copy(), CLEAN.copy())
    d = dataset_agreement(Pairs([(NOISY, CLEAN), same, (NOISY, CLEAN)]), num_classes=3)
    assert d["samples"] == 3 and d["pixels"] == 6 + 7 + 6 and d["noisy_ignored"] == 2
    assert d["confusion"] == [[2 + 2, 2, 0], [2, 2 + 3, 0], [2, 0, 2 + 2]]
    assert d["agreement"] == pytest.approx((3 + 7 + 3) / 19)
    assert dataset_agreement(Pairs([(NOISY, CLEAN), same, same]), 3, max_samples=1)["pixels"] == 6
    with pytest.raises(ValueError, match=r"Pairs\[1\] has no \['clean_mask'\]"):
        dataset_agreement(Pairs([same, (NOISY, None)]), 3)


def test_format_agreement_lines():
    text = format_agreement(label_agreement(NOISY, CLEAN, 3), ["background", "road"])
    lines = text.splitlines()
    assert lines[0] == "noisy vs clean labels: 50.0 % of 6 pixels agree; 1 clean pixels ignored in the noisy mask"
    assert lines[2].split() == ["background", "33.3", "50.0", "25.0"]
    assert lines[3].split() == ["road", "50.0", "50.0", "33.3"]
    assert lines[4].split() == ["class", "2", "100.0", "50.0", "50.0"]


def test_preview_prints_and_writes_the_agreement(tmp_path, capsys):
    noise = [{"op": "coarsen", "factor": 8}, {"op": "flip", "rate": 0.25, "unit": "blocks", "block": 8}]
    vts = {"class_path": "noisyseg.data.VTSSegmentation", "init_args": {"split": "val", "length": 2, "size": 32}}
    cfg = {"class_path": "noisyseg.data.NoisyLabels", "init_args": {"dataset": vts, "noise": noise, "num_classes": 2}}
    (tmp_path / "data.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    assert preview(["--config", str(tmp_path / "data.yaml"), "--out", str(out), "--max-previews", "0"]) == 0
    got = json.loads((out / "summary.json").read_text())["splits"]["data"]["label_agreement"]
    want = dataset_agreement(NoisyLabels(VTSSegmentation("val", length=2, size=32), noise, 2), 2)
    assert got == want and want["samples"] == 2 and want["agreement"] < 1
    assert format_agreement(want) in capsys.readouterr().out
