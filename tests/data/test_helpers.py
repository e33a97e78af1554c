"""The helpers every dataset shares: patch grids, normalisation and padding, class counts, pair
under-sampling, and the package's one atomic writer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from noisyseg.data.grid import patch_grid
from noisyseg.data.pairing import undersample
from noisyseg.data.loading import IGNORE_INDEX, MASK, normalize, pad_to
from noisyseg.data.stats import class_counts, class_weights, inverse_frequency
from noisyseg.losses.segmentation import inverse_frequency_weights
from noisyseg.runfiles import write_json


def test_patch_grid_covers_the_raster_row_by_row_with_the_last_patch_snapped_to_the_edge():
    assert patch_grid(5, 7, 4) == [(0, 0, 4, 4), (0, 3, 4, 4), (1, 0, 4, 4), (1, 3, 4, 4)]
    assert patch_grid(3, 9, 4, overlap=1) == [(0, 0, 3, 4), (0, 3, 3, 4), (0, 5, 3, 4)]  # short axis: one patch


def test_normalize_is_per_band_and_names_the_image_on_a_band_mismatch():
    image = np.arange(8, dtype=np.uint16).reshape(2, 2, 2)  # [C=2, 2, 2]
    out = normalize(image, {"mean": [1.0, 2.0], "std": [2.0, 4.0]})
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out[0], (np.arange(4).reshape(2, 2) - 1) / 2)
    np.testing.assert_array_equal(out[1], (np.arange(4, 8).reshape(2, 2) - 2) / 4)
    raw = np.ones((1, 2, 2), np.float32)
    plain = normalize(raw, None)
    assert plain is not raw and plain.dtype == np.float32  # a copy: callers write no-data into it
    with pytest.raises(ValueError, match="normalization has 2 bands but a.tif has 1"):
        normalize(raw, {"mean": [0, 0], "std": [1, 1]}, "a.tif")


def test_pad_to_pads_images_with_zero_and_masks_with_ignore_at_the_bottom_right():
    image, mask = np.ones((2, 2, 3), np.float32), np.zeros((2, 3), np.int64)
    pi, pm, none = pad_to(4, image, mask, None)
    assert pi.shape == (2, 4, 4) and pm.shape == (4, 4) and none is None
    assert pi[:, :2, :3].min() == 1 and pi[:, 2:].max() == 0 and pi[:, :, 3:].max() == 0
    assert (pm[:2, :3] == 0).all() and (pm[2:] == IGNORE_INDEX).all() and (pm[:, 3:] == IGNORE_INDEX).all()
    assert pad_to(None, image, mask) == (image, mask) and pad_to(2, mask)[0] is mask
    assert pad_to((3, 3), mask)[0].shape == (3, 3)


class _Masks(torch.utils.data.Dataset):
    def __init__(self, masks):
        self.masks = masks

    def __len__(self):
        return len(self.masks)

    def __getitem__(self, i):
        return {MASK: torch.as_tensor(self.masks[i])}


def test_class_counts_and_inverse_frequency_against_hand_counts():
    ds = _Masks([[[0, 0, 1], [IGNORE_INDEX, 0, 0]], [[1, 1, 0], [0, 0, 0]]])
    counts = class_counts(ds, 3)
    assert counts.tolist() == [8, 3, 0]  # the ignored pixel is not counted
    assert inverse_frequency(counts).tolist() == pytest.approx([11 / (3 * 8), 11 / (3 * 3), 0.0])
    assert torch.equal(inverse_frequency_weights(counts), torch.tensor([11 / 24, 11 / 9, 0.0]))
    with pytest.warns(UserWarning, match=r"classes \[2\] never occur"):
        assert class_weights(ds, 3) == pytest.approx([11 / 24, 11 / 9, 0.0])
    with pytest.raises(ValueError, match="mask 1 holds class 1 but num_classes=1"):
        class_counts(_Masks([[[0]], [[1]]]), 1)


def test_undersample_keeps_items_in_order_and_reports_the_realised_rate():
    items = list("abcdefgh")
    noisy = [True, False, True, False, True, False, False, False]  # 3 noisy, 5 clean
    kept, rate = undersample(items, noisy, 0.5, seed=0)
    assert sorted(kept) == kept and len([k for k in kept if noisy[items.index(k)]]) == 3
    assert len(kept) == 6 and rate == 0.5  # all 3 noisy, 3 of 5 clean


def test_write_json_replaces_the_file_whole_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "sub" / "m.json"
    write_json(path, {"a": 1})
    assert path.read_text() == "{\n \"a\": 1\n}"  # indent 1 by default
    write_json(path, {"b": [1, 2]}, indent=None)
    assert path.read_text() == '{"b": [1, 2]}' and json.loads(path.read_text()) == {"b": [1, 2]}
    with pytest.raises(TypeError):
        write_json(path, {"c": object()})
    assert [p.name for p in path.parent.iterdir()] == ["m.json"] and json.loads(path.read_text()) == {"b": [1, 2]}
