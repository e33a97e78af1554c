"""TileSplit / ConcatSources: tile-disjoint seeded splits, exact sizes, manifest reuse, limits,
epoch-carrying indices and YAML nesting."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import rasterio
import torch
from jsonargparse import ArgumentParser
from torch.utils.data import Dataset

import noisyseg.data.splits as splits_mod
from noisyseg.data.loading import DataModule, EpochIndex
from noisyseg.data.raster import RasterSegmentation
from noisyseg.data.splits import ConcatSources, TileSplit, split_sizes


class Patches(Dataset):
    """Fake patches: sample k belongs to tile ``tiles[k]``; records the index objects it is given."""

    def __init__(self, tiles: list[str], bands: int = 3, normalization=None, with_sources: bool = True):
        self.tiles, self.bands, self.normalization, self.seen = list(tiles), bands, normalization, []
        if not with_sources:
            self.sources = None  # groups_of must fall back to meta

    def sources(self) -> list[str]:
        return list(self.tiles)

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, index):
        self.seen.append(index)
        return {"image": torch.full((self.bands, 2, 2), float(index)),
                "meta": {"source": self.tiles[index], "k": int(index)}}


def tiles_with_patches(n_tiles: int = 10, seed: int = 0) -> list[str]:
    """Per sample its tile: tile t has 1 + t % 4 patches, samples in a seeded order."""
    tiles = [f"tile{t:02d}" for t in range(n_tiles) for _ in range(1 + t % 4)]
    return [tiles[j] for j in np.random.default_rng(seed).permutation(len(tiles))]


def test_split_sizes_fractions_largest_remainder_and_counts_rest():
    spec = {"train": 0.6, "few": 0.1, "test": 0.3}
    assert split_sizes(spec, None, 10) == {"train": 6, "few": 1, "test": 3}
    # 7 groups: 4.2 / 0.7 / 2.1 -> floors 4 / 0 / 2; the one group left goes to the largest remainder (few)
    assert split_sizes(spec, None, 7) == {"train": 4, "few": 1, "test": 2}
    # a tie breaks by split name; rounding each share alone would ask for 2 + 2 of 3 groups
    assert split_sizes({"b": 0.5, "a": 0.5}, None, 3) == {"a": 2, "b": 1}
    assert split_sizes({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}, None, 10) == {"a": 4, "b": 3, "c": 3}
    assert split_sizes({"test": 0.25, "train": "rest"}, None, 10) == {"test": 3, "train": 7}  # 2.5 rounds up
    assert split_sizes(None, {"test": 4, "few": 2, "train": "rest"}, 10) == {"test": 4, "few": 2, "train": 4}
    assert split_sizes(None, {"test": 4, "few": 2}, 10) == {"test": 4, "few": 2}  # 4 groups in no split
    for fractions, counts, match in [
        (None, {"test": 8, "few": 3}, r"need 11 groups .* has 10"),
        ({"a": 0.5}, {"a": 1}, "not both"),
        (None, None, "not both or neither"),
        (None, {"a": "rest", "b": "rest"}, "at most one split"),
        ({"a": 1.2}, None, r"fractions\['a'\]=1.2"),
        ({"a": 0.7, "b": 0.4}, None, "sum to 1.1"),
        (None, {"a": 1.5}, r"counts\['a'\]=1.5"),
    ]:
        with pytest.raises(ValueError, match=match):
            split_sizes(fractions, counts, 10)


def test_no_tile_in_two_splits_and_sizes_exact():
    ds = Patches(tiles_with_patches(10))
    fractions = {"train": 0.6, "few": 0.1, "test": 0.3}
    parts = {name: TileSplit(ds, name, fractions=fractions, seed=3) for name in fractions}
    assert {name: len(p.groups) for name, p in parts.items()} == {"train": 6, "few": 1, "test": 3}
    served = np.concatenate([p.indices for p in parts.values()])
    assert sorted(served.tolist()) == list(range(len(ds)))  # every sample exactly once
    for p in parts.values():
        assert {ds.tiles[k] for k in p.indices} == set(p.groups)  # all patches of its tiles, no other
        assert len(p) == sum(ds.tiles.count(g) for g in p.groups)
        assert [s["meta"]["source"] for s in p] == [ds.tiles[k] for k in p.indices] == p.sources()
    groups = [set(p.groups) for p in parts.values()]
    assert all(not (a & b) for i, a in enumerate(groups) for b in groups[i + 1:])
    counts = {name: len(TileSplit(ds, name, counts={"test": 4, "few": 2, "train": "rest"}).groups)
              for name in ("train", "few", "test")}
    assert counts == {"train": 4, "few": 2, "test": 4}
    with pytest.raises(ValueError, match=r"split='val' is not one of the splits \['few', 'test', 'train'\]"):
        TileSplit(ds, "val", fractions=fractions)
    with pytest.raises(ValueError, match="split 'few' gets no tile of 10"):
        TileSplit(ds, "few", counts={"few": 0, "train": "rest"})


def test_assignment_is_a_function_of_seed_and_sorted_groups():
    ds = Patches(tiles_with_patches(10, seed=0))
    shuffled = Patches(tiles_with_patches(10, seed=1))  # the same tiles, samples in another order
    counts = {"train": "rest", "test": 3}
    a = TileSplit(ds, "test", counts=counts, seed=0)
    assert TileSplit(shuffled, "test", counts=counts, seed=0).groups == a.groups
    assert TileSplit(ds, "test", counts={"train": 7, "test": 3}, seed=0).groups == a.groups  # key order irrelevant
    order = np.random.default_rng(0).permutation(10)  # the rule: permute the sorted names, cut in name order
    assert a.groups == sorted(f"tile{j:02d}" for j in order[:3])  # 'test' < 'train': the first 3
    others = {tuple(TileSplit(ds, "test", counts=counts, seed=s).groups) for s in range(1, 6)}
    assert tuple(a.groups) not in others and len(others) > 1


def test_manifest_written_then_reused_and_other_tiles_rejected(tmp_path, monkeypatch):
    ds = Patches(tiles_with_patches(8))
    path = tmp_path / "splits" / "opencities.json"
    first = TileSplit(ds, "test", counts={"test": 2, "train": "rest"}, seed=5, manifest=str(path))
    obj = json.loads(path.read_text())
    assert obj["splits"]["test"] == first.groups and len(obj["splits"]["train"]) == 6
    assert obj["seed"] == 5 and obj["unassigned"] == [] and obj["groups"] == 8
    monkeypatch.setattr(splits_mod, "assign_groups", lambda *a, **k: pytest.fail("manifest not reused"))
    again = TileSplit(ds, "train", counts={"test": 2, "train": "rest"}, seed=5, manifest=str(path))
    assert again.groups == obj["splits"]["train"]
    with pytest.warns(UserWarning, match="reusing the split"):  # another seed: the file still decides
        reused = TileSplit(ds, "test", counts={"test": 2, "train": "rest"}, seed=6, manifest=str(path))
    assert reused.groups == first.groups
    dropped = first.groups[0]
    fewer = Patches([t for t in ds.tiles if t != dropped])
    with pytest.raises(ValueError, match=rf"{path}.*0 tile\(s\) of this dataset are not in it.*\['{dropped}'\]"):
        TileSplit(fewer, "test", counts={"test": 2, "train": "rest"}, seed=5, manifest=str(path))
    more = Patches(ds.tiles + ["tile99"])
    with pytest.raises(ValueError, match=r"1 tile\(s\) of this dataset are not in it \['tile99'\]"):
        TileSplit(more, "test", counts={"test": 2, "train": "rest"}, seed=5, manifest=str(path))


def test_limit_draws_distinct_samples_of_the_split():
    ds = Patches(tiles_with_patches(12))
    full = TileSplit(ds, "train", fractions={"train": 0.5, "test": 0.5}, seed=1)
    six = TileSplit(ds, "train", fractions={"train": 0.5, "test": 0.5}, seed=1, limit=6)
    assert six.groups == full.groups and len(six) == 6
    assert len(set(six.indices.tolist())) == 6 and set(six.indices.tolist()) <= set(full.indices.tolist())
    want = full.indices[np.sort(np.random.default_rng(1).choice(len(full), 6, replace=False))]  # limit_seed = seed
    np.testing.assert_array_equal(six.indices, want)
    again = TileSplit(ds, "train", fractions={"train": 0.5, "test": 0.5}, seed=1, limit=6, limit_seed=1)
    np.testing.assert_array_equal(again.indices, six.indices)
    picks = np.zeros(len(ds))
    for s in range(300):  # uniform: each sample of the split drawn 6 / len(full) of the time
        picks[TileSplit(ds, "train", fractions={"train": 0.5, "test": 0.5}, seed=1, limit=6, limit_seed=s).indices] += 1
    rate = picks[full.indices] / 300
    assert np.all(np.abs(rate - 6 / len(full)) < 0.12) and picks.sum() == 6 * 300
    with pytest.raises(ValueError, match=rf"limit={len(full) + 1} must be an integer in \[1, {len(full)}\]"):
        TileSplit(ds, "train", fractions={"train": 0.5, "test": 0.5}, seed=1, limit=len(full) + 1)


def test_index_keeps_its_epoch_through_split_and_concat():
    a, b = Patches(["a0", "a0", "a1"]), Patches(["b0", "b1", "b1", "b2"])
    cat = ConcatSources([a, b])
    split = TileSplit(cat, "x", counts={"x": 5}, seed=0)  # all 5 tiles
    sample = split[EpochIndex(4, epoch=9)]  # concat index 4 -> part b, inner index 1
    assert sample["meta"] == {"source": "b1", "k": 1}
    assert type(b.seen[-1]) is EpochIndex and int(b.seen[-1]) == 1 and b.seen[-1].epoch == 9
    split[2]
    assert type(a.seen[-1]) is int and a.seen[-1] == 2
    cat[EpochIndex(3, 2)]
    assert isinstance(b.seen[-1], EpochIndex) and int(b.seen[-1]) == 0 and b.seen[-1].epoch == 2


def test_seed_none_follows_the_run_seed(monkeypatch):
    ds = Patches(tiles_with_patches(12))
    monkeypatch.setenv("PL_GLOBAL_SEED", "5")  # what seed_everything(5) exports
    run = TileSplit(ds, "train", fractions={"train": 0.5, "test": 0.5}, seed=None)
    assert run.seed == 5 and run.groups == TileSplit(ds, "train", fractions={"train": 0.5, "test": 0.5}, seed=5).groups


def test_concat_sources_order_meta_and_mismatches():
    norm = {"mean": [1.0, 2.0, 3.0], "std": [4.0, 5.0, 6.0]}
    a, b = Patches(["a0", "a1"], normalization=norm), Patches(["b0", "b0", "b1"], normalization=dict(norm))
    cat = ConcatSources([a, b])
    assert len(cat) == 5 and cat.normalization == norm and cat.stats["samples"] == [2, 3]
    assert [cat[k]["meta"]["source"] for k in range(5)] == ["a0", "a1", "b0", "b0", "b1"] == cat.sources()
    assert [cat[k]["meta"]["k"] for k in range(5)] == [0, 1, 0, 1, 2] and cat[-1]["meta"]["source"] == "b1"
    with pytest.raises(IndexError):
        cat[5]
    with pytest.raises(ValueError, match=r"part 0 \(Patches\) has 3 bands but part 1 \(Patches\) has 4"):
        ConcatSources([Patches(["a"]), Patches(["b"], bands=4)])  # no normalisation: bands from the images
    other = {"mean": [1.0, 2.0, 3.5], "std": [4.0, 5.0, 6.0]}
    with pytest.raises(ValueError, match=r"part 0 .*'mean': \[1.0, 2.0, 3.0\].* part 2 \(Patches\) has .*3.5"):
        ConcatSources([a, b, Patches(["c"], normalization=other)])
    with pytest.raises(ValueError, match=r"but part 1 \(Patches\) has None"):
        ConcatSources([a, Patches(["c"])])


def test_groups_come_from_sources_without_pixels_else_from_meta(tmp_path, monkeypatch):
    ds = Patches(tiles_with_patches(6), with_sources=False)  # no sources(): every sample read once
    split = TileSplit(ds, "a", counts={"a": 3, "b": "rest"})
    assert len(ds.seen) == len(ds) and {ds.tiles[k] for k in split.indices} == set(split.groups)
    keyed = TileSplit(ds, "a", counts={"a": 2, "b": "rest"}, group_key="k")  # any meta key
    assert len(keyed.groups) == 2 and len(keyed) == 2
    with pytest.raises(ValueError, match=r"Patches\[0\] has no meta\['site'\] .*\['k', 'source'\]"):
        TileSplit(ds, "a", counts={"a": 1}, group_key="site")
    write_tiles(tmp_path, 3, 8)
    raster = RasterSegmentation("img/*.tif", "lab/*.tif", root=str(tmp_path), patch_size=4, normalize=False)
    monkeypatch.setattr(RasterSegmentation, "__getitem__", lambda *a: pytest.fail("pixels read"))
    split = TileSplit(raster, "test", counts={"test": 1, "train": "rest"})
    assert len(split) == 4 and split.groups[0].endswith(".tif") and split.sources() == split.groups * 4


def write_tiles(root, n: int, size: int) -> None:
    """``n`` 3-band uint8 tiles ``img/t<i>.tif`` with {0, 1} masks ``lab/t<i>.tif``."""
    rng = np.random.default_rng(0)
    for folder, bands in (("img", 3), ("lab", 1)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = rng.integers(0, 2 if bands == 1 else 255, (bands, size, size)).astype(np.uint8)
            with rasterio.open(root / folder / f"t{i}.tif", "w", driver="GTiff", width=size, height=size,
                               count=bands, dtype="uint8", crs="EPSG:32633",
                               transform=rasterio.Affine(10, 0, 500000, 0, -10, 4000000)) as dst:
                dst.write(arr)


def test_split_of_concatenated_rasters_from_yaml(tmp_path):
    """DataModule -> TileSplit -> ConcatSources -> two RasterSegmentation, through jsonargparse."""
    write_tiles(tmp_path / "a", 3, 8)
    write_tiles(tmp_path / "b", 2, 8)
    part = lambda root: {"class_path": "noisyseg.data.raster.RasterSegmentation", "init_args": {  # noqa: E731
        "root": str(tmp_path / root), "images": "img/*.tif", "masks": "lab/*.tif", "patch_size": 4,
        "mean": [0, 0, 0], "std": [255, 255, 255]}}
    def split(name: str) -> dict:
        return {"class_path": "noisyseg.data.TileSplit", "init_args": {
            "split": name, "counts": {"test": 2, "train": "rest"}, "seed": 1,
            "manifest": str(tmp_path / "split.json"), "limit": 6 if name == "train" else None,
            "dataset": {"class_path": "noisyseg.data.ConcatSources",
                        "init_args": {"datasets": [part("a"), part("b")]}}}}
    cfg = {"data": {"class_path": "noisyseg.data.DataModule",
                    "init_args": {"batch_size": 2, "train": split("train"), "test": split("test")}}}
    parser = ArgumentParser()
    parser.add_subclass_arguments(DataModule, "data")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm = parser.instantiate_classes(parser.parse_object(cfg)).data
    assert not [w for w in caught if "reusing" in str(w.message)]  # test reuses train's manifest, same spec
    train, test = dm.train_set, dm.test_set
    assert isinstance(train, TileSplit) and isinstance(train.dataset, ConcatSources)
    assert len(test.groups) == 2 and len(train.groups) == 3 and not set(train.groups) & set(test.groups)
    assert len(train) == 6 and len(test) == 8  # 4 patches a tile; train limited to 6 of its 12
    assert {s["meta"]["source"] for s in test} == set(test.groups)
    assert train.normalization == {"mean": [0.0] * 3, "std": [255.0] * 3}
    assert json.loads((tmp_path / "split.json").read_text())["splits"]["test"] == test.groups
