"""``noisyseg data noise-report``: the noisy-vs-clean confusion matrix of a config's split against a
hand count, the CSV / PNG / JSON it writes, the figure's row normalisation and the exit codes."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from noisyseg.cli import main as cli
from noisyseg.data.label_noise import AgreementCounter, dataset_agreement, format_agreement
from noisyseg.data.loading import IGNORE_INDEX, default_seed, make_sample
from noisyseg.data.preview import confusion_figure, row_percent

I = IGNORE_INDEX
# (noisy, clean) masks of the two samples; 3 classes
MASKS = [
    (np.array([[0, 1, 1, 0],
               [2, 0, 1, I]]),
     np.array([[0, 0, 1, 1],
               [2, 2, I, 1]])),
    (np.array([[1, 2, 2, I],
               [0, 0, I, 1]]),
     np.array([[1, 1, 2, I],
               [0, 0, 0, 0]])),
]
# counted (clean, noisy) pairs, sample 1: (0,0) (0,1) (1,1) (1,0) (2,2) (2,0); (I,1) clean-ignored,
# (1,I) noisy-ignored. Sample 2: (1,1) (1,2) (2,2) (0,0) (0,0) (0,1); (I,I) clean-ignored, (0,I) noisy-ignored.
CONFUSION = [[3, 2, 0],  # rows clean, columns noisy
             [1, 2, 1],
             [1, 0, 2]]
NOISY_IGNORED_BY_CLASS = [1, 1, 0]  # clean class of the pixels the noisy mask ignores
CLEAN_IGNORED = 2
ROW_PERCENT = [[60.0, 40.0, 0.0],  # 3/5, 2/5
               [25.0, 50.0, 25.0],  # 1/4, 2/4, 1/4
               [100 / 3, 0.0, 200 / 3]]  # 1/3, 2/3


SEEDS_SEEN: list[int] = []  # the run seed each KnownPairs was built under


class KnownPairs(torch.utils.data.Dataset):
    """The two samples of ``MASKS`` (``clean=False``: without ``clean_mask``)."""

    num_classes = 3
    class_names = ["ground", "road", "roof"]

    def __init__(self, clean: bool = True) -> None:
        self.clean = clean
        SEEDS_SEEN.append(default_seed())  # as a seed-null TileSplit reads it

    def __len__(self) -> int:
        return len(MASKS)

    def __getitem__(self, i: int):
        noisy, clean = MASKS[i]
        return make_sample(np.zeros((1, *noisy.shape), np.float32), noisy, clean_mask=clean if self.clean else None)


def write_config(tmp_path, model_names=None, seed=None):
    pairs = {"class_path": f"{__name__}.KnownPairs", "init_args": {}}
    cfg = {"data": {"class_path": "noisyseg.data.DataModule", "init_args": {
        "train": pairs, "val": {**pairs, "init_args": {"clean": False}}}}}
    if seed is not None:
        cfg["seed_everything"] = seed
    if model_names:
        cfg["model"] = {"class_path": "noisyseg.tasks.SegmentationTask",
                        "init_args": {"num_classes": 3, "class_names": model_names}}
    path = tmp_path / "pairs.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_confusion_against_the_hand_count():
    d = dataset_agreement(KnownPairs(), 3)
    assert d["confusion"] == CONFUSION
    assert d["noisy_ignored_by_class"] == NOISY_IGNORED_BY_CLASS and d["noisy_ignored"] == 2
    assert d["clean_ignored"] == CLEAN_IGNORED and d["pixels"] == 12 and d["samples"] == 2
    assert d["agreement"] == pytest.approx(7 / 12)
    assert dataset_agreement(KnownPairs(), 3, max_samples=1)["confusion"] == [[1, 1, 0], [1, 1, 0], [1, 0, 1]]
    assert {k: v for k, v in dataset_agreement(KnownPairs(), None).items() if k in d} == d  # a growing matrix
    grown = AgreementCounter()
    grown.update(np.array([[0, I]]), np.array([[0, 2]]))  # class 2 appears only where the noisy mask ignores it
    assert grown.result()["confusion"] == [[1, 0, 0], [0, 0, 0], [0, 0, 0]]
    assert grown.result()["noisy_ignored_by_class"] == [0, 0, 1]


def test_row_normalisation_of_the_figure_data(tmp_path):
    pct = confusion_figure(CONFUSION, ["a", "b", "c"], tmp_path / "c.png", "title")
    np.testing.assert_allclose(pct, ROW_PERCENT)
    np.testing.assert_allclose(pct.sum(1), 100)  # each clean class's pixels split over the noisy labels
    with_empty = row_percent([[0, 0], [1, 3]])  # a clean class without pixels: a blank row, not 0 %
    assert np.isnan(with_empty[0]).all() and with_empty[1].tolist() == [25.0, 75.0]


def test_cli_writes_csv_png_json_with_the_hand_counts(tmp_path, capsys):
    out = tmp_path / "report"
    code = cli(["data", "noise-report", "--config", str(write_config(tmp_path)), "--out", str(out)])
    assert code == 0
    with open(out / "confusion.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["clean \\ noisy", "ground", "road", "roof", "ignored in noisy"]  # the dataset's names
    assert [r[0] for r in rows[1:]] == ["ground", "road", "roof"]
    assert [[int(x) for x in r[1:]] for r in rows[1:]] == [c + [n] for c, n in zip(CONFUSION, NOISY_IGNORED_BY_CLASS)]

    summary = json.loads((out / "noise_report.json").read_text())
    assert summary["split"] == "train" and summary["dataset"] == "KnownPairs"
    assert summary["confusion"] == CONFUSION and summary["clean_ignored"] == CLEAN_IGNORED
    assert summary["noisy_ignored_by_class"] == NOISY_IGNORED_BY_CLASS
    assert summary["agreement"] == pytest.approx(7 / 12)
    assert summary["recall"] == pytest.approx([3 / 5, 2 / 4, 2 / 3])  # diagonal / row sums
    assert summary["precision"] == pytest.approx([3 / 5, 2 / 4, 2 / 3])  # diagonal / column sums 5, 4, 3
    np.testing.assert_allclose(summary["row_percent"], ROW_PERCENT)

    with Image.open(out / "confusion.png") as im:
        assert im.format == "PNG" and min(im.size) > 100
    printed = capsys.readouterr()
    assert format_agreement(summary, ["ground", "road", "roof"]) in printed.out
    assert "2 pixels ignored in the clean mask" in printed.out
    assert "2/2" in printed.err  # the progress bar, shown for any number of samples


def test_cli_class_names_from_the_model_and_samples(tmp_path):
    out = tmp_path / "report"
    path = write_config(tmp_path, model_names=["bg", "street", "building"])
    assert cli(["data", "noise-report", "--config", str(path), "--out", str(out), "--samples", "1"]) == 0
    summary = json.loads((out / "noise_report.json").read_text())
    assert summary["class_names"] == ["bg", "street", "building"]  # the model's, before the dataset's
    assert summary["samples"] == 1 and summary["confusion"] == [[1, 1, 0], [1, 1, 0], [1, 0, 1]]
    assert not math.isnan(summary["agreement"])


def test_cli_exit_2_without_clean_mask_names_config_and_split(tmp_path, capsys):
    path = write_config(tmp_path)
    out = tmp_path / "report"
    assert cli(["data", "noise-report", "--config", str(path), "--split", "val", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{path} split 'val'" in err and "no 'clean_mask'" in err and "KnownPairs" in err
    assert not out.exists()
    assert cli(["data", "noise-report", "--config", str(path), "--split", "test", "--out", str(out)]) == 2
    assert "has no split 'test'; it configures ['train', 'val']" in capsys.readouterr().err
    assert cli(["data", "noise-report", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_cli_builds_the_datasets_under_the_configs_seed(tmp_path, monkeypatch):
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    SEEDS_SEEN.clear()
    path = write_config(tmp_path, seed=7)
    assert cli(["data", "noise-report", "--config", str(path), "--out", str(tmp_path / "report")]) == 0
    assert SEEDS_SEEN == [7, 7]  # train and val, as `fit` with seed_everything: 7 builds them
    assert default_seed() == 0  # and the environment is left as it was
