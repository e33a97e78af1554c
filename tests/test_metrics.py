"""Segmentation metrics from one confusion matrix, against a hand-computed example."""

import math

import torch

from noisyseg.metrics.segmentation import ConfusionMatrix, scores_from_confusion


def test_scores_hand_computed():
    # truth rows, prediction columns
    cm = torch.tensor([[5, 1, 0], [2, 3, 0], [0, 0, 0]])
    s = scores_from_confusion(cm, ["a", "b", "c"])
    assert math.isclose(s["iou/a"], 5 / (5 + 2 + 1))
    assert math.isclose(s["iou/b"], 3 / (3 + 1 + 2))
    assert math.isnan(s["iou/c"])  # never present nor predicted: left out of the mean
    assert math.isclose(s["miou"], (5 / 8 + 3 / 6) / 2)
    assert math.isclose(s["f1/a"], 2 * 5 / (2 * 5 + 2 + 1))
    assert math.isclose(s["f1"], (10 / 13 + 6 / 9) / 2)
    assert math.isclose(s["accuracy"], 8 / 11)


def test_confusion_accumulates_over_batches_and_skips_ignore():
    cm = ConfusionMatrix(2, ignore_index=255)
    cm.update(torch.tensor([[0, 1]]), torch.tensor([[0, 0]]))
    cm.update(torch.tensor([[1, 1]]), torch.tensor([[1, 255]]))
    assert cm.compute().tolist() == [[1, 1], [0, 1]]
    # accumulated, not averaged per batch: batch-wise mIoU would be (0.5/2... ) different
    s = scores_from_confusion(cm.compute())
    assert math.isclose(s["miou"], (1 / 2 + 1 / 2) / 2)
