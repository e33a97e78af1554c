"""Feature discriminability of a layer: Fisher ratio and a linear probe on pixel features.

Both read per-pixel features of a layer against the clean labels, nearest-downsampled to the
feature map's resolution (Liu et al., arXiv 2402.16164, §4: the encoder's features stay
discriminative under label noise while the decoder's degrade).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from noisyseg.data.loading import IGNORE_INDEX


def fisher_ratio(features: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> float:
    """tr(S_B) / tr(S_W) of labelled feature vectors.

    ``S_B = Σ_c n_c (μ_c − μ)(μ_c − μ)ᵀ`` and ``S_W = Σ_c Σ_{i∈c} (x_i − μ_c)(x_i − μ_c)ᵀ``; only the
    traces are needed, so nothing D×D is formed.

    Args:
        features: ``[N, D]``.
        labels: ``[N]`` class ids; ``ignore_index`` entries are skipped.
        ignore_index: label to skip.

    Returns:
        The ratio (``inf`` when every class is a single point; ``nan`` with fewer than 2 classes).

    Raises:
        ValueError: when the shapes do not match.
    """
    if features.dim() != 2 or labels.shape != features.shape[:1]:
        raise ValueError(f"features {tuple(features.shape)} must be [N, D] and labels {tuple(labels.shape)} [N]")
    keep = labels != ignore_index
    x, y = features[keep].double(), labels[keep]  # M x D, M
    classes = torch.unique(y)
    if len(classes) < 2:
        return float("nan")
    mu = x.mean(0)  # D
    between = within = 0.0
    for c in classes:
        xc = x[y == c]  # n_c x D
        mc = xc.mean(0)
        between += len(xc) * float(((mc - mu) ** 2).sum())
        within += float(((xc - mc) ** 2).sum())
    return between / within if within > 0 else float("inf")


def downsample_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of ``[B, H, W]`` labels to ``[B, h, w]`` (no class mixing)."""
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()


def sample_pixels(
    feature_map: torch.Tensor,
    labels: torch.Tensor,
    per_image: int,
    generator: torch.Generator,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Up to ``per_image`` labelled pixels of each image.

    Args:
        feature_map: ``[B, C, h, w]``.
        labels: ``[B, H, W]`` at input resolution (downsampled here).
        per_image: pixels drawn per image, without replacement, from the non-ignored ones.
        generator: fixes the draw, so two models are read at the same pixels.

    Returns:
        ``(x [M, C], y [M], image [M])`` — features, labels and the image index of each pixel.
    """
    b, c, h, w = feature_map.shape
    lab = downsample_labels(labels, (h, w)).reshape(b, -1)  # B x hw
    feats = feature_map.reshape(b, c, -1)  # B x C x hw
    xs, ys, idx = [], [], []
    for i in range(b):
        valid = torch.nonzero(lab[i] != ignore_index).flatten()
        pick = valid[torch.randperm(len(valid), generator=generator)[:per_image]]
        xs.append(feats[i][:, pick].T)  # k x C
        ys.append(lab[i][pick])
        idx.append(torch.full((len(pick),), i))
    return torch.cat(xs).float(), torch.cat(ys), torch.cat(idx)


def linear_probe_accuracy(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    steps: int = 300,
    lr: float = 0.05,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> float:
    """Accuracy of a logistic regression fit on ``(x_train, y_train)``, scored on the test pixels.

    Features are standardised with the training statistics; the probe is fit full-batch with Adam
    (``steps`` steps, a little weight decay). Train and test pixels should come from different
    images, so the probe cannot memorise an image's texture.

    Raises:
        ValueError: for empty splits.
    """
    if len(x_train) == 0 or len(x_test) == 0:
        raise ValueError(f"linear probe needs pixels in both splits (train {len(x_train)}, test {len(x_test)})")
    mean, std = x_train.mean(0), x_train.std(0).clamp_min(1e-6)
    xtr, xte = (x_train - mean) / std, (x_test - mean) / std  # N x D
    k = int(max(y_train.max(), y_test.max())) + 1
    g = torch.Generator().manual_seed(seed)
    probe = torch.nn.Linear(xtr.shape[1], k)
    with torch.no_grad():
        probe.weight.copy_(torch.randn(probe.weight.shape, generator=g) * 0.01)
        probe.bias.zero_()
    opt = torch.optim.Adam(probe.parameters(), lr=lr, weight_decay=weight_decay)
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(probe(xtr), y_train).backward()
            opt.step()
    with torch.no_grad():
        return float((probe(xte).argmax(1) == y_test).float().mean())
