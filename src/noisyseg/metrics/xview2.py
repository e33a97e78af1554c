"""The xView2 challenge score: ``0.3 * localisation F1 + 0.7 * damage F1``.

Gupta et al. 2019 (xBD, CVPR-W) and the official scorer ``xview2_metrics.py``
(github.com/DIUx-xView/xView2_scoring). Counts are accumulated over all images and the F1s are
computed once from the totals, as the official scorer does:

* localisation: building (``> 0``) vs background over the pre / localisation mask;
* damage: per damage class 1..4, only on pixels that are buildings in the target post mask, with
  predicted damage zeroed where no building is predicted (``dp = dp * lp_b`` in the scorer);
* damage F1 = harmonic mean of the four class F1s, ``4 / sum(1 / (f1_c + 1e-6))``.

Deviation: target pixels equal to IGNORE_INDEX (``un-classified``, no-data) are left out of both
terms; the official masks have no ignore value.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from noisyseg.data.loading import IGNORE_INDEX

DAMAGE_NAMES = ("no_damage", "minor_damage", "major_damage", "destroyed")


def _np(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _f1(tp: int, fp: int, fn: int) -> float:
    denom = 2 * tp + fp + fn
    return float(2 * tp / denom) if denom else 0.0


class XView2Score:
    """Accumulates localisation and damage counts; :meth:`compute` gives the xView2 score.

    Example:
        >>> s = XView2Score(); s.update(loc_pred, loc_target, dmg_pred, dmg_target); s.compute()["score"]
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.loc = np.zeros(3, np.int64)  # tp, fp, fn of building vs background
        self.dmg = np.zeros((4, 3), np.int64)  # per damage class 1..4: tp, fp, fn

    def update(self, loc_pred: Any, loc_target: Any, dmg_pred: Any, dmg_target: Any) -> None:
        """Add one batch of integer label maps, any equal shapes ``[..., H, W]``.

        Args:
            loc_pred: predicted localisation (``> 0`` = building).
            loc_target: target pre mask (``> 0`` building, IGNORE_INDEX not counted).
            dmg_pred: predicted damage classes 0..4.
            dmg_target: target post mask 0..4 (IGNORE_INDEX not counted).

        Raises:
            ValueError: the four inputs differ in shape.
        """
        lp, lt, dp, dt = map(_np, (loc_pred, loc_target, dmg_pred, dmg_target))
        if not lp.shape == lt.shape == dp.shape == dt.shape:
            raise ValueError(f"shapes differ: loc_pred {lp.shape}, loc_target {lt.shape}, "
                             f"dmg_pred {dp.shape}, dmg_target {dt.shape}")
        valid = lt != IGNORE_INDEX
        lp_b, lt_b = (lp > 0)[valid], (lt > 0)[valid]
        self.loc += [(lp_b & lt_b).sum(), (lp_b & ~lt_b).sum(), (~lp_b & lt_b).sum()]
        dp = np.where(lp > 0, dp, 0)  # no damage credit where no building is predicted
        scored = (dt > 0) & (dt != IGNORE_INDEX)  # target buildings only
        dp, dt = dp[scored], dt[scored]
        for k, c in enumerate(range(1, 5)):
            self.dmg[k] += [((dp == c) & (dt == c)).sum(), ((dp == c) & (dt != c)).sum(),
                            ((dp != c) & (dt == c)).sum()]

    def compute(self) -> dict[str, float]:
        """``score``, ``loc_f1``, ``damage_f1`` and the four per-class F1s (``f1_<name>``)."""
        loc_f1 = _f1(*self.loc)
        f1s = [_f1(*row) for row in self.dmg]
        damage_f1 = float(len(f1s) / sum(1.0 / (f + 1e-6) for f in f1s))  # harmonic mean, as the scorer
        out = {"score": 0.3 * loc_f1 + 0.7 * damage_f1, "loc_f1": loc_f1, "damage_f1": damage_f1}
        out.update({f"f1_{n}": f for n, f in zip(DAMAGE_NAMES, f1s)})
        return out


def xview2_score(loc_pred: Any, loc_target: Any, dmg_pred: Any, dmg_target: Any) -> dict[str, float]:
    """One-shot :class:`XView2Score` over the given label maps."""
    s = XView2Score()
    s.update(loc_pred, loc_target, dmg_pred, dmg_target)
    return s.compute()
