"""Noisy labels "from products": any segmentation dataset's masks corrupted on the fly.

:class:`NoisyLabels` wraps a dataset and returns ``mask`` = noisy, ``clean_mask`` = the truth, with
the realised pixel noise rate in ``meta["noise_rate"]``. The corruption is
:func:`noisyseg.data.label_noise.apply_noise`, seeded per ``(seed, index)`` so a sample is the
same in every epoch and every worker (the noisy product is a fixed dataset, as in the
noisy-label segmentation benchmarks of Rolnick et al. 2017 and Song et al. 2022, not fresh noise
per epoch). :func:`noisyseg.data.label_noise.dataset_agreement` measures the realised noise per class.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch.utils.data import Dataset

from noisyseg.data.label_noise import LabelNoise, NoiseOp, apply_noise, legacy_noise, noise_rate, parse_noise
from noisyseg.data.loading import CLEAN_MASK, IMAGE, MASK, META, Sample, groups_of, make_sample


class NoisyLabels(Dataset):
    """Pair a dataset's imagery with seeded noisy versions of its masks.

    The noise acts on the wrapped sample's ``mask``; ``clean_mask`` is the wrapped sample's
    ``clean_mask`` when it has one (a wrapped ``NoisyLabels`` or a noisy-label dataset: the noise
    compounds), else its ``mask``. Prefer one operation list to nested wrappers: nested ones with
    the same ``seed`` draw from the same per-sample stream.

    Args:
        dataset: any dataset returning the sample contract with a ``mask`` (from YAML: a nested
            ``class_path`` / ``init_args``).
        noise: a list of operations applied in the order given, each to the previous one's output,
            e.g. ``[{op: coarsen, factor: 16}, {op: flip, rate: 0.2, unit: blocks, block: 16}]``
            (ops: :data:`~noisyseg.data.label_noise.OPS`); or the
            :class:`~noisyseg.data.label_noise.LabelNoise` fields in their fixed order, e.g.
            ``{flip_rate: 0.2, boundary_shift: 2, coarse_factor: 8, merge: {2: 1}}``.
        num_classes: classes that flips draw from.
        seed: base seed; sample ``i`` uses ``np.random.default_rng([seed, i])``, one stream that the
            operations draw from in order.

    Raises:
        ValueError: an unknown noise field or op (lists the valid ones) or a bad value.
    """

    def __init__(self, dataset: Dataset, noise: dict[str, Any] | list[dict[str, Any]] | None = None,
                 num_classes: int = 2, seed: int = 0) -> None:
        # the dict form stays a LabelNoise (``self.noise``) for code that reads its fields
        self.noise: LabelNoise | list[NoiseOp] = (
            legacy_noise(noise) if isinstance(noise, dict) and "op" not in noise else parse_noise(noise))
        self.ops: list[NoiseOp] = parse_noise(self.noise)
        self.dataset, self.num_classes, self.seed = dataset, num_classes, seed

    @property
    def normalization(self) -> dict[str, Any] | None:
        """The wrapped dataset's per-band statistics."""
        return getattr(self.dataset, "normalization", None)

    @property
    def stats(self) -> dict[str, Any]:
        """The wrapped dataset's indexing counts."""
        return getattr(self.dataset, "stats", {})

    def sources(self) -> list[str]:
        """Per sample, the tile it was cut from: the wrapped dataset's (without pixels where it can)."""
        return groups_of(self.dataset, "source")

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Sample:
        """Sample ``index`` with ``mask`` noisy ``[H, W]`` and ``clean_mask`` clean ``[H, W]``."""
        s = self.dataset[index]
        if MASK not in s:
            raise ValueError(f"{type(self.dataset).__name__}[{index}] has no mask to corrupt")
        labels = s[MASK].numpy()  # [H, W] what the noise acts on (already noisy when wrapped twice)
        clean = s[CLEAN_MASK].numpy() if CLEAN_MASK in s else labels  # [H, W] the truth
        rng = np.random.default_rng([self.seed, int(index)])  # deterministic per (seed, index)
        noisy = apply_noise(labels, self.ops, self.num_classes, rng)
        meta = dict(s.get(META, {}), noise_rate=noise_rate(noisy, clean))
        extra = {k: v for k, v in s.items() if k not in (IMAGE, MASK, CLEAN_MASK, META)}
        return make_sample(s[IMAGE], noisy, clean_mask=clean, meta=meta, **extra)
