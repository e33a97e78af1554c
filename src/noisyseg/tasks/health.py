"""Representation-health logging for the self-supervised tasks (MoCo, SimCLR, DINO, dense).

A collapsing embedding (every sample mapped to nearly one point) keeps the loss finite while the
encoder learns nothing; these statistics show it in the logs and warn once it happens.
"""

from __future__ import annotations

from typing import Callable

import torch
from lightning.pytorch.utilities import rank_zero_warn

from noisyseg.metrics.representation import effective_rank, embedding_std, is_collapsed


class RepresentationHealth:
    """Mixin for a LightningModule that trains embeddings: :meth:`log_health`."""

    global_step: int  # the LightningModule's
    log_dict: Callable[..., None]

    def log_health(self, z: torch.Tensor, every: int = 20) -> None:
        """Log collapse statistics of embeddings ``z [N, D]`` every ``every`` steps; warn on collapse."""
        if self.global_step % every or z.shape[0] < 2:
            return
        std, rank = embedding_std(z), effective_rank(z)
        self.log_dict({"health/embedding_std": std, "health/effective_rank": rank}, batch_size=z.shape[0])
        if is_collapsed(std, rank) and self.global_step > 0:
            rank_zero_warn(
                f"representation collapse at step {self.global_step}: normalised embedding std x sqrt(D) = "
                f"{std:.3f} (healthy ~1), effective rank = {rank:.2f} of {min(z.shape)}; lower the learning rate "
                "or check that the two views differ"
            )
