"""Noisy labels "from products": any segmentation dataset's clean masks corrupted on the fly.

:class:`NoisyLabels` wraps a dataset and returns ``mask`` = noisy, ``clean_mask`` = the wrapped
mask, with the realised pixel noise rate in ``meta["noise_rate"]``. The corruption is
:func:`noisyseg.data.label_noise.apply_noise`, seeded per ``(seed, index)`` so a sample is the
same in every epoch and every worker (the noisy product is a fixed dataset, as in the
noisy-label segmentation benchmarks of Rolnick et al. 2017 and Song et al. 2022, not fresh noise
per epoch).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from noisyseg.data.label_noise import LabelNoise, apply_noise, noise_rate
from noisyseg.data.sample import CLEAN_MASK, IMAGE, MASK, META, Sample, make_sample


class NoisyLabels(Dataset):
    """Pair a dataset's imagery with seeded noisy versions of its masks.

    Args:
        dataset: any dataset returning the sample contract with a ``mask`` (from YAML: a nested
            ``class_path`` / ``init_args``).
        noise: :class:`~noisyseg.data.label_noise.LabelNoise` fields, e.g.
            ``{flip_rate: 0.2, boundary_shift: 2, coarse_factor: 8, merge: {2: 1}}``.
        num_classes: classes that flips draw from.
        seed: base seed; sample ``i`` uses ``np.random.default_rng([seed, i])``.

    Raises:
        ValueError: an unknown noise field (lists the valid ones) or a bad value.
    """

    def __init__(self, dataset: Dataset, noise: dict[str, Any] | None = None, num_classes: int = 2,
                 seed: int = 0) -> None:
        fields = {f.name for f in dataclasses.fields(LabelNoise)}
        unknown = sorted(set(noise or {}) - fields)
        if unknown:
            raise ValueError(f"unknown noise field(s) {unknown}; valid: {sorted(fields)}")
        cfg = dict(noise or {})
        if "merge" in cfg:
            cfg["merge"] = {int(k): int(v) for k, v in cfg["merge"].items()}  # YAML keys may be str
        self.noise = LabelNoise(**cfg)
        self.dataset, self.num_classes, self.seed = dataset, num_classes, seed

    @property
    def normalization(self) -> dict[str, Any] | None:
        """The wrapped dataset's per-band statistics."""
        return getattr(self.dataset, "normalization", None)

    @property
    def stats(self) -> dict[str, Any]:
        """The wrapped dataset's indexing counts."""
        return getattr(self.dataset, "stats", {})

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Sample:
        """Sample ``index`` with ``mask`` noisy ``[H, W]`` and ``clean_mask`` clean ``[H, W]``."""
        s = self.dataset[index]
        if MASK not in s:
            raise ValueError(f"{type(self.dataset).__name__}[{index}] has no mask to corrupt")
        clean = s.get(CLEAN_MASK, s[MASK]).numpy()  # [H, W]; an already-noisy mask is not compounded
        rng = np.random.default_rng([self.seed, index])  # deterministic per (seed, index)
        noisy = apply_noise(clean, self.noise, self.num_classes, rng)
        meta = dict(s.get(META, {}), noise_rate=noise_rate(noisy, clean))
        extra = {k: v for k, v in s.items() if k not in (IMAGE, MASK, CLEAN_MASK, META)}
        return make_sample(s[IMAGE], noisy, clean_mask=clean, meta=meta, **extra)
