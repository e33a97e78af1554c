"""Positive pairs: which pairs are noisy, and sampling a set to a chosen noisy-pair rate.

Two images of one place at two dates (temporal pairs, xBD pre / post) are a free positive pair,
but a pair across real change is a *noisy* positive. :func:`change_from_masks` and
:func:`changed_fraction` measure the change of a pair from its change labels;
:func:`undersample_pairs` (and :func:`undersample`, which applies it to a list of items) keeps as
many pairs as possible at a requested fraction of noisy ones, as the noisy-pair experiments of
Gerard & Sullivan (arXiv 2211.13756) vary it.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np

from noisyseg.data.loading import IGNORE_INDEX

T = TypeVar("T")


def undersample_pairs(noisy: list[bool], rate: float, seed: int = 0) -> list[int]:
    """Indices that keep as many pairs as possible with a ``rate`` fraction of noisy ones.

    Only the over-represented group is under-sampled (seeded, without replacement); the result is
    sorted. The realised rate is ``floor``-rounded towards ``rate``.

    Args:
        noisy: per pair, whether it is a noisy positive.
        rate: requested fraction of noisy pairs in ``[0, 1]``.
        seed: seed of the draw.

    Raises:
        ValueError: ``rate`` is outside ``[0, 1]``, or cannot be met (e.g. a rate above 0 with no
            noisy pairs at all), naming the counts.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"noisy_pair_rate={rate} is outside [0, 1]")
    flags = np.asarray(noisy, dtype=bool)
    idx_noisy, idx_clean = np.flatnonzero(flags), np.flatnonzero(~flags)
    n_noisy, n_clean = len(idx_noisy), len(idx_clean)
    if (rate > 0 and n_noisy == 0) or (rate < 1 and n_clean == 0):
        raise ValueError(
            f"cannot reach noisy_pair_rate={rate}: there are {n_noisy} noisy and {n_clean} clean "
            f"pairs (a rate in (0, 1) needs both kinds, 0 needs clean ones, 1 noisy ones)"
        )
    rng = np.random.default_rng(seed)
    if rate == 1.0:
        keep_noisy, keep_clean = n_noisy, 0
    elif n_noisy / (n_noisy + n_clean) > rate:
        keep_noisy, keep_clean = int(np.floor(rate * n_clean / (1 - rate) + 1e-9)), n_clean
    else:
        keep_noisy, keep_clean = n_noisy, int(np.floor(n_noisy * (1 - rate) / rate + 1e-9)) if rate else n_clean
    if rate > 0 and keep_noisy == 0:
        raise ValueError(
            f"cannot reach noisy_pair_rate={rate} with {n_clean} clean pairs: not one noisy pair fits"
        )
    kept = np.concatenate([
        rng.choice(idx_noisy, keep_noisy, replace=False),
        rng.choice(idx_clean, keep_clean, replace=False),
    ])
    return sorted(int(i) for i in kept)


def change_from_masks(
    change: np.ndarray | None, unchanged: np.ndarray | None
) -> tuple[np.ndarray, int]:
    """Change label ``[H, W]``: 1 changed, 0 unchanged, IGNORE_INDEX unlabelled; and conflicts.

    With only ``change`` the mask is complete (``> 0`` -> 1, else 0). With both, pixels marked in
    neither are unlabelled and pixels marked in both are conflicts (ignored and counted).
    """
    if change is None:
        raise ValueError("a change mask is needed to build the change label")
    if unchanged is None:
        return (change > 0).astype(np.int64), 0
    out = np.full(change.shape, IGNORE_INDEX, dtype=np.int64)
    out[unchanged > 0] = 0
    out[change > 0] = 1
    both = (change > 0) & (unchanged > 0)
    out[both] = IGNORE_INDEX
    return out, int(both.sum())


def changed_fraction(change: np.ndarray) -> float | None:
    """Fraction of labelled pixels that changed; ``None`` when no pixel is labelled."""
    labelled = change != IGNORE_INDEX
    return float((change[labelled] == 1).mean()) if labelled.any() else None


def undersample(items: list[T], noisy: list[bool], rate: float, seed: int = 0) -> tuple[list[T], float]:
    """The ``items`` that :func:`undersample_pairs` keeps (in order), and their realised noisy rate.

    Args:
        items: one entry per pair.
        noisy: per item, whether it is a noisy pair.
        rate: requested fraction of noisy pairs in ``[0, 1]``.
        seed: seed of the draw.

    Raises:
        ValueError: as :func:`undersample_pairs`.
    """
    keep = undersample_pairs(noisy, rate, seed)
    return [items[i] for i in keep], float(np.mean([noisy[i] for i in keep]))
