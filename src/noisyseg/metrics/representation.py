"""Representation health: is a contrastive encoder collapsing?

Silent collapse (every image mapped to nearly the same embedding) is the classic failure of
self-supervised pretraining; the loss can look fine while it happens. Two cheap statistics on a
batch of embeddings ``[N, D]``, both from the literature:

* :func:`embedding_std` — mean per-dimension std of L2-normalised embeddings times ``sqrt(D)``
  (SimSiam, Chen & He 2021, §4.1: ``1/sqrt(D)`` for well-spread embeddings, 0 when collapsed);
  ~1 healthy, -> 0 collapsed.
* :func:`effective_rank` — ``exp`` of the entropy of the normalised singular values (Roy & Vetterli
  2007; RankMe, Garrido et al. 2023): 1 for a rank-one (collapsed) batch, up to ``min(N, D)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def embedding_std(z: torch.Tensor) -> float:
    """``sqrt(D) * mean_d std_n(normalize(z))`` for ``z [N, D]``: ~1 spread out, 0 collapsed."""
    zn = F.normalize(z.detach().float(), dim=1)  # N x D on the unit sphere
    return float(zn.std(dim=0).mean() * zn.shape[1] ** 0.5)


def effective_rank(z: torch.Tensor, eps: float = 1e-7) -> float:
    """``exp(H(p))`` with ``p`` the normalised singular values of the centred ``z [N, D]``."""
    zc = z.detach().float()
    zc = zc - zc.mean(0, keepdim=True)
    s = torch.linalg.svdvals(zc)  # min(N, D)
    p = s / s.sum().clamp_min(eps)
    return float(torch.exp(-(p * torch.log(p + eps)).sum()))


def is_collapsed(std: float, rank: float, std_min: float = 0.1, rank_min: float = 1.5) -> bool:
    """The thresholds the training tasks warn at (both documented in the README)."""
    return std < std_min or rank < rank_min
