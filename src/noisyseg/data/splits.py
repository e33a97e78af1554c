"""Tile-disjoint splits and concatenations of any datasets.

Patches cut from one tile share its scene, date and sensor, and neighbouring patches may overlap,
so a split that sends some patches of a tile to training and others to testing measures
memorisation, not transfer. :class:`TileSplit` groups the samples of any dataset by the tile they
were cut from (``meta["source"]`` by default) and gives whole tiles to named splits by a seeded
permutation -- the grouped split of scikit-learn's ``GroupShuffleSplit``, with any number of named
splits, exact counts or fractions, and a JSON manifest that freezes the assignment across runs.
:class:`ConcatSources` joins several datasets (SpaceNet + Open Cities + xBD) into one that a
``TileSplit`` can split, after checking that they agree on bands and normalisation.

From YAML, nest the datasets as :class:`~noisyseg.data.NoisyLabels` does::

    train:
      class_path: noisyseg.data.splits.TileSplit
      init_args:
        split: train
        counts: {test: 4, few: 2, train: rest}
        manifest: runs/data/opencities_split.json
        dataset:
          class_path: noisyseg.data.raster.RasterSegmentation
          init_args: {root: ../shared/data/opencities, images: images/*.tif, ...}

Put label noise outside the split (``NoisyLabels(TileSplit(...))``): the split then reads tile
names from the source dataset without loading pixels.
"""

from __future__ import annotations

import bisect
import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from noisyseg.data.loading import IMAGE, EpochIndex, Sample, default_seed, groups_of
from noisyseg.runfiles import write_json

REST = "rest"
"""Split size meaning "every group the other splits leave"."""


def split_sizes(fractions: dict[str, Any] | None, counts: dict[str, Any] | None, n_groups: int) -> dict[str, int]:
    """Groups per split, by name.

    ``counts`` are taken as they are. ``fractions`` are rounded by the largest-remainder rule:
    each split gets ``floor(f * n_groups)``, and the ``round(sum(f) * n_groups) - sum(floors)``
    groups left go one each to the splits with the largest remainders (ties: split name order);
    fractions that sum to 1 therefore place every group. One split may be ``"rest"``: it gets the
    groups the others leave. Without one, groups may be left out of every split (sizes summing to
    less than ``n_groups``).

    Raises:
        ValueError: neither or both of ``fractions`` / ``counts``, an empty spec, more than one
            ``"rest"``, a negative or non-integer count, a fraction outside ``[0, 1]``, or sizes
            that need more groups than there are (all named).
    """
    if (fractions is None) == (counts is None):
        raise ValueError(f"give fractions or counts, not both or neither (fractions={fractions!r}, counts={counts!r})")
    spec, kind = (fractions, "fractions") if fractions is not None else (counts, "counts")
    if not isinstance(spec, dict) or not spec:
        raise ValueError(f"{kind}={spec!r} must be a non-empty mapping of split name -> size")
    rest = [name for name, v in spec.items() if isinstance(v, str)]
    if len(rest) > 1 or any(spec[name] != REST for name in rest):
        raise ValueError(f"{kind}={spec!r}: at most one split may be {REST!r}, other sizes must be numbers")
    sized = {str(k): v for k, v in spec.items() if not isinstance(v, str)}
    for name, v in sized.items():
        if kind == "counts" and (isinstance(v, bool) or not float(v).is_integer() or v < 0):
            raise ValueError(f"counts[{name!r}]={v!r} must be an integer >= 0 (or {REST!r})")
        if kind == "fractions" and (isinstance(v, bool) or not 0 <= float(v) <= 1):
            raise ValueError(f"fractions[{name!r}]={v!r} must be a number in [0, 1] (or {REST!r})")
    if kind == "counts":
        sizes = {name: int(v) for name, v in sized.items()}
    else:
        total = sum(float(v) for v in sized.values())
        if total > 1 + 1e-9:
            raise ValueError(f"fractions={spec!r} sum to {total:g} > 1")
        raw = {name: float(v) * n_groups for name, v in sized.items()}
        sizes = {name: math.floor(x + 1e-9) for name, x in raw.items()}
        left = min(n_groups, math.floor(total * n_groups + 0.5)) - sum(sizes.values())
        by_remainder = sorted(sorted(raw), key=lambda name: -(raw[name] - sizes[name]))  # stable: names break ties
        for name in by_remainder[:max(left, 0)]:
            sizes[name] += 1
    used = sum(sizes.values())
    if used > n_groups:
        raise ValueError(f"{kind}={spec!r} need {used} groups (tiles) but the dataset has {n_groups}")
    if rest:
        sizes[str(rest[0])] = n_groups - used
    return sizes


def assign_groups(groups: list[str], sizes: dict[str, int], seed: int) -> dict[str, list[str]]:
    """Split name -> its groups (sorted): a seeded permutation of the sorted groups, cut in split-name order.

    A function of ``(seed, sorted groups, sizes)`` only: the order the samples or the split names
    come in changes nothing.
    """
    ordered = sorted(set(groups))
    perm = np.random.default_rng(seed).permutation(len(ordered))  # [G]
    out, start = {}, 0
    for name in sorted(sizes):
        out[name] = sorted(ordered[j] for j in perm[start:start + sizes[name]])
        start += sizes[name]
    return out


class TileSplit(Dataset):
    """One named split of a dataset in which no tile has samples in two splits.

    Samples are grouped by ``meta[group_key]`` (read without pixels where the dataset has
    ``sources()``, see :func:`~noisyseg.data.loading.groups_of`); whole groups are given to splits by
    :func:`assign_groups` with the sizes of :func:`split_sizes`. Every ``TileSplit`` built with the
    same dataset, sizes and seed agrees on the assignment, so ``train``, ``few`` and ``test`` can
    be built independently (three YAML entries) and stay disjoint.

    Args:
        dataset: any dataset returning the sample contract (YAML: a nested ``class_path``).
        split: the split to serve (any name used in ``fractions`` / ``counts``).
        fractions: split name -> share of the groups, e.g. ``{train: .6, few: .1, test: .3}``
            (rounding: :func:`split_sizes`); one value may be ``"rest"``.
        counts: split name -> number of groups, e.g. ``{test: 4, few: 2, train: rest}``.
        seed: seed of the permutation of the sorted group names (``None``: the run's
            ``seed_everything``, so each seed of a study splits the tiles anew).
        manifest: JSON file holding the assignment. Written (atomically) when missing; reused when
            it exists and lists the same groups, whatever ``seed`` / sizes say now (warned when
            they differ); an error when the groups differ.
        group_key: the ``meta`` key naming a sample's tile.
        limit: keep only this many samples of the split, drawn uniformly without replacement
            (e.g. 6 clean crops for fine-tuning); kept in dataset order.
        limit_seed: seed of that draw (default ``seed``).

    Raises:
        ValueError: bad sizes (:func:`split_sizes`), ``split`` not among the split names, the
            split gets no group, ``limit`` not in ``[1, samples of the split]``, or a manifest
            written for other groups (names the file and the differing groups).

    Attributes:
        indices: ``[n]`` int64 indices of the wrapped dataset served, ascending.
        assignment: split name -> its groups (every split, not only this one).
        groups: the groups of this split.
    """

    def __init__(
        self,
        dataset: Dataset,
        split: str,
        fractions: dict[str, float | str] | None = None,
        counts: dict[str, int | str] | None = None,
        seed: int | None = 0,
        manifest: str | None = None,
        group_key: str = "source",
        limit: int | None = None,
        limit_seed: int | None = None,
    ) -> None:
        self.dataset, self.split, self.group_key = dataset, str(split), group_key
        self.seed = default_seed() if seed is None else int(seed)
        sample_groups = groups_of(dataset, group_key)  # [N] one name per sample
        self._sample_groups = sample_groups
        names = sorted(set(sample_groups))
        if manifest is not None and Path(manifest).is_file():
            self.assignment = self._reuse(Path(manifest), names, fractions, counts)
        else:
            sizes = split_sizes(fractions, counts, len(names))
            self.assignment = assign_groups(sample_groups, sizes, self.seed)
            if manifest is not None:
                write_json(manifest, {
                    "group_key": group_key, "seed": self.seed, "fractions": fractions, "counts": counts,
                    "sizes": sizes, "groups": len(names),
                    "unassigned": sorted(set(names) - {g for gs in self.assignment.values() for g in gs}),
                    "splits": self.assignment,
                })
        if self.split not in self.assignment:
            raise ValueError(f"split={split!r} is not one of the splits {sorted(self.assignment)}")
        self.groups = list(self.assignment[self.split])
        if not self.groups:
            raise ValueError(f"split {self.split!r} gets no tile of {len(names)} (sizes "
                             f"{ {k: len(v) for k, v in self.assignment.items()} }); give it a larger share")
        mine = set(self.groups)
        indices = np.asarray([k for k, g in enumerate(sample_groups) if g in mine], np.int64)  # [n]
        if limit is not None:
            if isinstance(limit, bool) or not 1 <= int(limit) <= len(indices) or int(limit) != limit:
                raise ValueError(f"limit={limit!r} must be an integer in [1, {len(indices)}] (the samples "
                                 f"of split {self.split!r})")
            rng = np.random.default_rng(self.seed if limit_seed is None else int(limit_seed))
            indices = indices[np.sort(rng.choice(len(indices), size=int(limit), replace=False))]
        self.indices = indices

    def _reuse(self, path: Path, names: list[str], fractions: Any, counts: Any) -> dict[str, list[str]]:
        """The assignment stored in ``path``, checked against this dataset's groups."""
        try:
            obj = json.loads(path.read_text())
            splits = {str(k): [str(g) for g in v] for k, v in obj["splits"].items()}
            stored = {g for gs in splits.values() for g in gs} | set(obj.get("unassigned", []))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"split manifest {path} is not a TileSplit manifest ({err}); delete it to "
                             f"re-split") from err
        here = set(names)
        if stored != here:
            new, gone = sorted(here - stored), sorted(stored - here)
            raise ValueError(
                f"split manifest {path} was written for other tiles: {len(new)} tile(s) of this dataset "
                f"are not in it {new[:5]}, {len(gone)} tile(s) in it are not in this dataset {gone[:5]}; "
                f"delete the file to re-split, or point manifest at a new file"
            )
        if (obj.get("seed"), obj.get("fractions"), obj.get("counts")) != (self.seed, fractions, counts):
            warnings.warn(
                f"reusing the split in {path} (seed {obj.get('seed')}, fractions {obj.get('fractions')}, "
                f"counts {obj.get('counts')}), not seed {self.seed}, fractions {fractions}, counts {counts}; "
                f"delete the file to re-split", stacklevel=3,
            )
        return splits

    @property
    def normalization(self) -> dict[str, Any] | None:
        """The wrapped dataset's per-band statistics."""
        return getattr(self.dataset, "normalization", None)

    @property
    def num_classes(self) -> int:
        """The wrapped dataset's class count (``AttributeError`` when it states none)."""
        return self.dataset.num_classes  # type: ignore[attr-defined]

    @property
    def stats(self) -> dict[str, Any]:
        """The wrapped dataset's indexing counts."""
        return getattr(self.dataset, "stats", {})

    def sources(self) -> list[str]:
        """Per sample, its ``meta["source"]`` (from the wrapped dataset, without pixels where it can)."""
        inner = self._sample_groups if self.group_key == "source" else groups_of(self.dataset, "source")
        return [inner[k] for k in self.indices.tolist()]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Sample:
        """Sample ``index`` of the split: the wrapped dataset's sample ``indices[index]``."""
        return self.dataset[EpochIndex.carry(index, int(self.indices[int(index)]))]


class ConcatSources(Dataset):
    """Several datasets as one, each sample's ``meta`` (and so its tile) kept.

    Every part must give the same band count and the same normalisation: a network sees one
    input distribution, so give each part the same ``mean`` / ``std`` (or one part's statistics
    file through ``normalization_from``). Indices carry their epoch into the parts (:meth:`~noisyseg.data.loading.EpochIndex.carry`).

    Args:
        datasets: the parts, in order (YAML: a list of nested ``class_path`` entries).

    Raises:
        ValueError: no part, two parts with different band counts or normalisation (names both
            parts and their values).

    Attributes:
        offsets: ``[len(datasets) + 1]`` first index of each part, then the total length.
    """

    def __init__(self, datasets: list[Dataset]) -> None:
        if not datasets:
            raise ValueError("ConcatSources needs at least one dataset")
        self.datasets = list(datasets)
        names = [f"part {k} ({type(d).__name__})" for k, d in enumerate(self.datasets)]
        norms = [getattr(d, "normalization", None) for d in self.datasets]
        bands = [_band_count(d, n) for d, n in zip(self.datasets, norms)]
        for k in range(1, len(self.datasets)):
            if bands[k] != bands[0]:
                raise ValueError(f"{names[0]} has {bands[0]} bands but {names[k]} has {bands[k]}")
            if not _same_normalization(norms[0], norms[k]):
                raise ValueError(f"{names[0]} has normalization {norms[0]} but {names[k]} has {norms[k]}; "
                                 f"give every part the same mean/std")
        self.offsets = np.cumsum([0] + [len(d) for d in self.datasets])  # type: ignore[arg-type]
        classes = {d.num_classes for d in self.datasets if hasattr(d, "num_classes")}
        self._num_classes = classes.pop() if len(classes) == 1 else None

    @property
    def normalization(self) -> dict[str, Any] | None:
        """The parts' common per-band statistics."""
        return getattr(self.datasets[0], "normalization", None)

    @property
    def num_classes(self) -> int:
        """The parts' class count when they state one and agree (``AttributeError`` otherwise)."""
        if self._num_classes is None:
            raise AttributeError("the parts of this ConcatSources state no common num_classes")
        return self._num_classes

    @property
    def stats(self) -> dict[str, Any]:
        """Per part, its indexing counts, and the samples of each part."""
        return {"parts": [getattr(d, "stats", {}) for d in self.datasets],
                "samples": np.diff(self.offsets).tolist()}

    def sources(self) -> list[str]:
        """Per sample, its ``meta["source"]`` (each part's ``sources()`` where it has one)."""
        return [g for d in self.datasets for g in groups_of(d, "source")]

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int) -> Sample:
        """Sample ``index``: sample ``index - offsets[p]`` of part ``p``."""
        k = int(index)
        if k < 0:
            k += len(self)
        if not 0 <= k < len(self):
            raise IndexError(f"index {int(index)} is out of range for {len(self)} samples")
        part = bisect.bisect_right(self.offsets.tolist(), k) - 1
        return self.datasets[part][EpochIndex.carry(index, k - int(self.offsets[part]))]


def _band_count(dataset: Dataset, norm: dict[str, Any] | None) -> int:
    """Bands of a dataset: from its normalisation when it has one, else from its first image."""
    if norm is not None:
        return len(norm["mean"])
    return int(dataset[0][IMAGE].shape[0])


def _same_normalization(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    if a is None or b is None:
        return a is b
    return all(len(a[k]) == len(b[k]) and np.allclose(a[k], b[k], rtol=1e-7, atol=0) for k in ("mean", "std"))
