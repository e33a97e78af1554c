"""xBD loaders against the label JSONs (Gupta et al. 2019, CC BY-NC-SA 4.0), the split manifest,
class weights, the xView2 score and bad inputs."""

from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np
import pytest
from datareal_fixtures import make_xbd, shared_data, write_label
from skimage.draw import polygon

from noisyseg.data.loading import IGNORE_INDEX
from noisyseg.data.stats import class_weights
from noisyseg.data.xbd import XBDPairs, XBDSegmentation, make_split, parse_wkt
from noisyseg.metrics.xview2 import XView2Score, xview2_score

CLASSES = {"no-damage": 1, "minor-damage": 2, "major-damage": 3, "destroyed": 4, "un-classified": IGNORE_INDEX}
IDS = [f"joplin-tornado_0000000{n}" for n in range(3)]


def expected_post(path) -> tuple[np.ndarray, list[np.ndarray], Counter]:
    """Independent rasterisation: skimage polygon fill at pixel centres, features in JSON order."""
    feats = json.loads(path.read_text())["features"]["xy"]
    mask = np.zeros((1024, 1024), np.uint8)
    rings = []
    for f in feats:
        body = re.search(r"\(\((.*?)\)", f["wkt"]).group(1)  # outer ring (xBD has no holes here)
        pts = np.array([[float(v) for v in p.split()] for p in body.split(",")])  # [n, 2] x, y
        rr, cc = polygon(pts[:, 1] - 0.5, pts[:, 0] - 0.5, shape=mask.shape)  # centres at +0.5
        mask[rr, cc] = CLASSES[f["properties"]["subtype"]]
        rings.append(pts)
    return mask, rings, Counter(f["properties"]["subtype"] for f in feats)


@pytest.mark.real_data
def test_post_tiles_match_label_json():
    root = shared_data() / "xbd"
    ds = XBDSegmentation(str(root), splits=["tier3"], phase="post")
    assert len(ds) == 12 and ds.stats["ids"] == 3
    n_json = 0
    for n, image_id in enumerate(IDS):
        exp, rings, subtypes = expected_post(root / "tier3" / "labels" / f"{image_id}_post_disaster.json")
        n_json += len(rings)
        present = set()
        for k in range(4):
            s = ds[4 * n + k]
            r, c, t = s["meta"]["tile"]
            assert s["meta"]["id"] == image_id and t == 512 and s["image"].shape == (3, 512, 512)
            got, want = s["mask"].numpy(), exp[r:r + 512, c:c + 512]
            for v in (1, 2, 3, 4, IGNORE_INDEX):  # building pixels per class, boundary tolerance 0.5 %
                assert abs(int((got == v).sum()) - int((want == v).sum())) <= 0.005 * (want == v).sum() + 2
            bbox_hits = sum(1 for p in rings if p[:, 0].max() > c and p[:, 0].min() < c + 512
                            and p[:, 1].max() > r and p[:, 1].min() < r + 512)
            assert s["meta"]["polygons"] == bbox_hits
            present |= set(np.unique(got).tolist())
        assert present - {0} == {CLASSES[s] for s in subtypes}  # damage classes as in the JSON
    assert ds.stats["polygons"] == 2 * n_json  # pre and post files list the same buildings


@pytest.mark.real_data
def test_pre_mask_and_pairs():
    root = str(shared_data() / "xbd")
    pre = XBDSegmentation(root, splits=["tier3"], phase="pre")
    assert set(np.unique(pre[0]["mask"].numpy())) <= {0, 1}
    pairs = XBDPairs(root, splits=["tier3"], binarize_post=True)
    s = pairs[2]
    assert s["meta"]["source"].endswith("pre_disaster.png") and s["meta"]["source2"].endswith("post_disaster.png")
    assert set(np.unique(s["mask2"].numpy())) <= {0, 1, IGNORE_INDEX}
    assert bool(s["noisy_pair"])  # joplin tiles all show damaged buildings
    assert not np.allclose(s["image"], s["image2"])
    with pytest.raises(ValueError, match="12 noisy and 0 clean"):
        XBDPairs(root, splits=["tier3"], noisy_pair_rate=0.5)
    assert len(XBDPairs(root, splits=["tier3"], noisy_pair_rate=1.0)) == 12


def test_split_manifest_is_stratified_seeded_and_atomic(tmp_path):
    ids = {f"train/alpha-fire_{i:08d}": 1 for i in range(10)}
    ids |= {f"tier3/beta-flood_{i:08d}": 2 for i in range(4)}
    root = make_xbd(tmp_path / "xbd", ids, size=32)
    out = tmp_path / "split" / "m.json"
    m = make_split(str(root), str(out), seed=3)
    assert m["sites"] == {"alpha-fire": {"train": 7, "val": 3}, "beta-flood": {"train": 3, "val": 1}}
    assert not set(m["train"]) & set(m["val"]) and len(m["train"]) + len(m["val"]) == 14
    assert json.loads(out.read_text()) == m
    assert [p.name for p in out.parent.iterdir()] == ["m.json"]  # no temp file left behind
    assert make_split(str(root), str(tmp_path / "again.json"), seed=3)["val"] == m["val"]
    assert make_split(str(root), str(tmp_path / "other.json"), seed=4)["val"] != m["val"]
    val = XBDSegmentation(str(root), manifest=str(out), subset="val", tile_size=16)
    assert val.stats["ids"] == 4 and len(val) == 16


def test_class_weights_inverse_frequency(tmp_path):
    root = make_xbd(tmp_path / "xbd", {"tier3/a-b_00000000": 2, "tier3/a-b_00000001": 4}, size=32)
    ds = XBDSegmentation(str(root), splits=["tier3"], tile_size=0)
    counts = np.bincount(np.concatenate([ds.label_mask(i).ravel() for i in range(len(ds))]), minlength=5)
    assert counts[2] == counts[4] == 256  # one 16x16 building each
    with pytest.warns(UserWarning, match="never occur"):
        w = class_weights(ds, 5)
    total = counts.sum()
    assert w == pytest.approx([total / (5 * counts[0]), 0, total / (5 * 256), 0, total / (5 * 256)])


def test_bad_inputs(tmp_path):
    root = make_xbd(tmp_path / "xbd", {"tier3/s-x_00000000": 1, "tier3/s-x_00000001": 3}, size=32)
    # missing partner
    (root / "tier3" / "images" / "s-x_00000001_post_disaster.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"s-x_00000001.*s-x_00000001_post_disaster.png"):
        XBDSegmentation(str(root), splits=["tier3"])
    with pytest.warns(UserWarning, match="incomplete"):
        ds = XBDSegmentation(str(root), splits=["tier3"], skip_incomplete=True)
    assert ds.stats["incomplete_skipped"] == 1 and ds.stats["ids"] == 1
    # malformed WKT in feature 1, and a polygon partly outside the 32x32 image
    lab = root / "tier3" / "labels" / "s-x_00000000_post_disaster.json"
    feats = [{"properties": {"subtype": "destroyed"}, "wkt": "POLYGON ((20 20, 40 20, 40 40, 20 40, 20 20))"},
             {"properties": {"subtype": "destroyed"}, "wkt": "POLYGON ((1 1, 2 nope))"},
             {"properties": {}, "wkt": "POLYGON EMPTY"}]  # burns nothing: skipped before its subtype is read
    write_label(lab, feats, 32)
    with pytest.raises(ValueError, match=r"s-x_00000000_post_disaster.json: feature 1"):
        XBDSegmentation(str(root), splits=["tier3"], skip_incomplete=True)
    with pytest.warns(UserWarning):
        ds = XBDSegmentation(str(root), splits=["tier3"], skip_incomplete=True, skip_malformed=True, tile_size=0)
    assert ds.stats["malformed_features_skipped"] == 1 and ds.stats["polygons_clipped"] == 1
    assert (ds[0]["mask"].numpy() == 4).sum() == 12 * 12  # clipped to pixels 20..31
    # unknown subtype and malformed JSON
    write_label(lab, [{"properties": {"subtype": "flooded"}, "wkt": feats[0]["wkt"]}], 32)
    with pytest.raises(ValueError, match=r"feature 0.*'flooded'"):
        XBDSegmentation(str(root), splits=["tier3"], skip_incomplete=True)
    lab.write_text("{not json")
    with pytest.raises(ValueError, match="malformed xBD label file .*s-x_00000000_post_disaster.json"):
        XBDSegmentation(str(root), splits=["tier3"], skip_incomplete=True)
    with pytest.warns(UserWarning):
        ds = XBDSegmentation(str(root), splits=["tier3"], skip_incomplete=True, skip_malformed=True)
    assert ds.stats["malformed_files_skipped"] == 1 and len(ds) == 0
    with pytest.raises(FileNotFoundError, match="hold"):
        XBDSegmentation(str(root), splits=["hold"])


def test_parse_wkt_multipolygon_with_hole():
    g = parse_wkt("MULTIPOLYGON (((0 0, 10 0, 10 10, 0 10, 0 0), (2 2, 4 2, 4 4, 2 2)), ((20 20, 21 20, 21 21, 20 20)))")
    assert len(g.geoms) == 2 and len(g.geoms[0].interiors) == 1 and g.area == 100 - 2 + 0.5
    assert parse_wkt("POLYGON ((0 0, 4 0, 4 4))").area == 8  # an unclosed ring is closed
    assert parse_wkt("POLYGON Z ((0 0 5, 4 0 5, 4 4 5, 0 0 5))").has_z is False
    assert parse_wkt("POLYGON EMPTY").is_empty
    for bad in ("POLYGON ((1 1, 2 nope))", "LINESTRING (0 0, 1 1)", "POLYGON ((0 0, nan 0, 1 1, 0 0))", None):
        with pytest.raises(ValueError):
            parse_wkt(bad)
    with pytest.raises(ValueError, match="LINESTRING"):
        parse_wkt("LINESTRING (0 0, 1 1)")


def test_xview2_score_against_hand_counts():
    lt = np.array([[0, 1, 1, 0], [1, 1, 0, IGNORE_INDEX]])
    lp = np.array([[0, 1, 0, 1], [1, 1, 0, 1]])
    dt = np.array([[0, 1, 2, 0], [3, 4, 0, IGNORE_INDEX]])
    dp = np.array([[0, 1, 2, 2], [3, 3, 0, 4]])
    # loc (ignore pixel dropped): tp 3, fp 1, fn 1 -> f1 = 6/8
    # damage on target buildings (1,2,3,4) with dp zeroed where lp == 0: dp -> (1, 0, 3, 3)
    # class1: tp1 -> 1; class2: fn1 -> 0; class3: tp1 fp1 -> 2/3; class4: fn1 -> 0
    f1s = [1.0, 0.0, 2 / 3, 0.0]
    hm = 4 / sum(1 / (f + 1e-6) for f in f1s)
    out = xview2_score(lp, lt, dp, dt)
    assert out["loc_f1"] == pytest.approx(0.75) and out["damage_f1"] == pytest.approx(hm)
    assert out["score"] == pytest.approx(0.3 * 0.75 + 0.7 * hm)
    acc = XView2Score()  # accumulating two halves equals one pass
    acc.update(lp[:1], lt[:1], dp[:1], dt[:1])
    acc.update(lp[1:], lt[1:], dp[1:], dt[1:])
    assert acc.compute() == pytest.approx(out)
