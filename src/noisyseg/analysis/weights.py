"""Weight statistics per layer group: change from initialisation, mean/std, clean-vs-noisy distance.

Only conv and linear weights count (tensors named ``*.weight`` with two or more dimensions):
BatchNorm scales and biases are excluded, as in Liu et al.'s per-layer weight comparison.
"""

from __future__ import annotations

import math

import torch


def relative_change(w: torch.Tensor, w0: torch.Tensor) -> float:
    """‖W − W₀‖ / ‖W₀‖ (Frobenius norms)."""
    return float((w.double() - w0.double()).norm() / w0.double().norm().clamp_min(1e-12))


def is_layer_weight(name: str, t: torch.Tensor) -> bool:
    """A conv or linear weight (not a BatchNorm scale, bias or buffer)."""
    return name.endswith("weight") and t.dim() >= 2


def group_keys(state: dict[str, torch.Tensor], prefixes: dict[str, str]) -> dict[str, list[str]]:
    """Layer group -> the conv/linear weight keys under its prefix.

    Raises:
        ValueError: when a group has no weights (a wrong prefix), naming it.
    """
    out = {}
    for group, prefix in prefixes.items():
        keys = [k for k, t in state.items() if k.startswith(prefix) and is_layer_weight(k, t)]
        if not keys:
            raise ValueError(f"layer group {group!r}: no conv/linear weights under {prefix!r}")
        out[group] = keys
    return out


def _norm(state: dict[str, torch.Tensor], keys: list[str]) -> float:
    return math.sqrt(sum(float(state[k].double().pow(2).sum()) for k in keys))


def _diff_norm(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], keys: list[str]) -> float:
    return math.sqrt(sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in keys))


def weight_stats(
    state: dict[str, torch.Tensor],
    init_state: dict[str, torch.Tensor],
    prefixes: dict[str, str],
    other: dict[str, torch.Tensor] | None = None,
) -> dict[str, dict[str, float]]:
    """Per layer group: relative change from init, mean and std of the weights, distance to ``other``.

    The group's weights are taken together: ``change = sqrt(Σ‖W−W₀‖²) / sqrt(Σ‖W₀‖²)`` over its
    tensors, and ``distance = sqrt(Σ‖W−W_other‖²) / sqrt(Σ‖W‖²)``.

    Args:
        state: trained weights (state dict).
        init_state: the same model's weights at initialisation.
        prefixes: group name -> key prefix (e.g. ``{"layer1": "encoder.layer1."}``).
        other: weights of the other training (noisy vs clean), for ``distance``.

    Returns:
        ``{group: {"change", "mean", "std", "distance"?}}``.
    """
    out = {}
    for group, keys in group_keys(state, prefixes).items():
        flat = torch.cat([state[k].double().flatten() for k in keys])
        row = {
            "change": _diff_norm(state, init_state, keys) / max(_norm(init_state, keys), 1e-12),
            "mean": float(flat.mean()),
            "std": float(flat.std()),
        }
        if other is not None:
            row["distance"] = _diff_norm(state, other, keys) / max(_norm(state, keys), 1e-12)
        out[group] = row
    return out
