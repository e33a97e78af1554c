"""Liu et al.'s encoder-vs-decoder analysis of a UNet trained on clean and on noisy labels.

Liu et al. (arXiv 2402.16164) compare two UNets trained from the same initialisation, one on
clean and one on noisy labels, layer by layer: the encoder's features stay discriminative and its
weights move little under label noise, while the decoder absorbs the noise. This module measures,
for every encoder stage (``conv1``, ``layer1``..``layer4``) and every decoder block of smp's UNet:

* Fisher ratio and linear-probe accuracy of the layer's pixel features on the **clean** labels
  (:mod:`noisyseg.analysis.fisher`), for both models at the same pixels;
* relative change from initialisation, weight mean/std, and the clean-vs-noisy weight distance
  (:mod:`noisyseg.analysis.weights`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from noisyseg.analysis.fisher import fisher_ratio, linear_probe_accuracy, sample_pixels  # noqa: E402
from noisyseg.analysis.weights import weight_stats  # noqa: E402
from noisyseg.data.loading import CLEAN_MASK, IMAGE, MASK  # noqa: E402
from noisyseg.runfiles import atomic_write  # noqa: E402

COLUMNS = ["layer", "part", "channels", "stride", "fisher_clean", "fisher_noisy", "probe_clean", "probe_noisy",
           "change_clean", "change_noisy", "mean_clean", "std_clean", "mean_noisy", "std_noisy", "clean_noisy_distance"]


def unet_of(model: nn.Module) -> nn.Module:
    """The smp UNet inside a SegmentationTask (or the UNet itself).

    Raises:
        ValueError: when the model has no smp UNet decoder blocks.
    """
    net = getattr(model, "model", model)
    if not hasattr(getattr(net, "decoder", None), "blocks") or not hasattr(net, "encoder"):
        raise ValueError(f"{type(model).__name__} is not an smp UNet (decoder with blocks); the analysis needs one")
    return net


def layers(net: nn.Module) -> dict[str, tuple[str, nn.Module, str]]:
    """Layer name -> (part, module whose output is the layer's features, weight-key prefix)."""
    enc = net.encoder
    out = {"conv1": ("encoder", enc.relu, "encoder.conv1.")}  # stem: conv1 -> bn1 -> relu (relu used only here)
    for k in range(1, 5):
        out[f"layer{k}"] = ("encoder", getattr(enc, f"layer{k}"), f"encoder.layer{k}.")
    for i, block in enumerate(net.decoder.blocks):
        out[f"decoder{i}"] = ("decoder", block, f"decoder.blocks.{i}.")
    return out


@torch.no_grad()
def layer_features(net: nn.Module, images: torch.Tensor, batch_size: int = 8) -> dict[str, torch.Tensor]:
    """Every layer's output for ``images`` ``[N, C, H, W]`` (eval mode): name -> ``[N, C_l, h, w]``."""
    spec = layers(net)
    grabbed: dict[str, list[torch.Tensor]] = {k: [] for k in spec}
    hooks = [m.register_forward_hook(lambda _m, _i, o, k=k: grabbed[k].append(o.detach().float().contiguous()))
             for k, (_, m, _) in spec.items()]
    was_training = net.training
    net.eval()
    try:
        for s in range(0, len(images), batch_size):
            net(images[s: s + batch_size])
    finally:
        for h in hooks:
            h.remove()
        net.train(was_training)
    return {k: torch.cat(v) for k, v in grabbed.items()}


def _strip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accept a SegmentationTask state dict too (``model.`` prefix; drop the ``encoder.`` alias)."""
    if any(k.startswith("model.") for k in state):
        return {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    return state


def analyze_models(
    clean_model: nn.Module,
    noisy_model: nn.Module,
    init_state: dict[str, torch.Tensor],
    dataset,
    images: int = 16,
    pixels_per_image: int = 64,
    probe_steps: int = 300,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Per-layer discriminability and weight statistics of a clean- and a noisy-label UNet.

    Args:
        clean_model: UNet (or SegmentationTask) trained on clean labels.
        noisy_model: the same architecture trained from the same initialisation on noisy labels.
        init_state: the UNet's state dict at initialisation (keys as ``unet.state_dict()``).
        dataset: samples with ``image`` and ``clean_mask`` (else ``mask``) — the clean labels.
        images: images read (the first half trains the probes, the second half tests them).
        pixels_per_image: pixels sampled per image and layer.
        probe_steps: Adam steps of each linear probe.
        seed: pixel sampling and probe initialisation.

    Returns:
        One row per layer with the keys of :data:`COLUMNS`.

    Raises:
        ValueError: fewer than 2 images, or a model that is not an smp UNet.
    """
    n = min(images, len(dataset))
    if n < 2:
        raise ValueError(f"the analysis needs at least 2 images (probe train/test), got {n}")
    samples = [dataset[i] for i in range(n)]
    x = torch.stack([s[IMAGE] for s in samples])  # N x C x H x W
    y = torch.stack([s.get(CLEAN_MASK, s[MASK]) for s in samples])  # N x H x W
    nets = {"clean": unet_of(clean_model), "noisy": unet_of(noisy_model)}
    device = next(nets["clean"].parameters()).device
    feats = {k: layer_features(net, x.to(device)) for k, net in nets.items()}
    states = {k: {n_: t.detach().cpu() for n_, t in net.state_dict().items()} for k, net in nets.items()}
    init = {k: v.detach().cpu() for k, v in _strip(init_state).items()}
    spec = layers(nets["clean"])
    prefixes = {k: p for k, (_, _, p) in spec.items()}
    w = {"clean": weight_stats(states["clean"], init, prefixes, states["noisy"]),
         "noisy": weight_stats(states["noisy"], init, prefixes)}
    rows = []
    half = n // 2
    for name, (part, _, _) in spec.items():
        row: dict[str, Any] = {"layer": name, "part": part}
        for k in ("clean", "noisy"):
            f = feats[k][name].cpu()  # N x C_l x h x w
            g = torch.Generator().manual_seed(seed)  # same pixels for both models
            px, py, img = sample_pixels(f, y, pixels_per_image, g)
            train, test = img < half, img >= half  # probe pixels from different images
            row[f"fisher_{k}"] = fisher_ratio(px, py)
            row[f"probe_{k}"] = linear_probe_accuracy(px[train], py[train], px[test], py[test], probe_steps, seed=seed)
            row[f"change_{k}"] = w[k][name]["change"]
            row[f"mean_{k}"], row[f"std_{k}"] = w[k][name]["mean"], w[k][name]["std"]
        row["channels"] = int(feats["clean"][name].shape[1])
        row["stride"] = x.shape[-1] // feats["clean"][name].shape[-1]
        row["clean_noisy_distance"] = w["clean"][name]["distance"]
        rows.append({c: row[c] for c in COLUMNS})
    return rows


def _mean(vals: list[float]) -> float:
    vals = [v for v in vals if v is not None and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else float("nan")


def part_summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Encoder and decoder means of: relative Fisher drop, probe drop, weight change, distance."""
    out = {}
    for part in ("encoder", "decoder"):
        rs = [r for r in rows if r["part"] == part]
        out[part] = {
            "fisher_drop": _mean([(r["fisher_clean"] - r["fisher_noisy"]) / r["fisher_clean"] for r in rs
                                  if r["fisher_clean"] and math.isfinite(r["fisher_clean"])]),
            "probe_drop": _mean([r["probe_clean"] - r["probe_noisy"] for r in rs]),
            "change_extra": _mean([r["change_noisy"] - r["change_clean"] for r in rs]),
            "distance": _mean([r["clean_noisy_distance"] for r in rs]),
        }
    return out


def summary_markdown(rows: list[dict[str, Any]], setting: str) -> str:
    """The finding as measured, in plain numbers, and the per-layer table."""
    s = part_summary(rows)
    e, d = s["encoder"], s["decoder"]
    less_disc = e["fisher_drop"] < d["fisher_drop"] and e["probe_drop"] <= d["probe_drop"]
    less_move = e["distance"] < d["distance"]
    verdict = ("reproduced" if less_disc and less_move else
               "not reproduced at this scale" if not less_disc and not less_move else
               "partly reproduced (" + ("discriminability" if less_disc else "weights") + " only)")
    lines = [
        "# Encoder vs decoder under label noise (Liu et al.)", "", setting, "",
        "Finding tested: under noisy labels the encoder's features lose less discriminability than the "
        "decoder's, and its weights move less (clean- vs noisy-trained weights differ less).", "",
        f"- Fisher ratio drop (clean → noisy, relative, mean over layers): encoder {100 * e['fisher_drop']:+.1f} %, "
        f"decoder {100 * d['fisher_drop']:+.1f} %.",
        f"- Linear-probe accuracy drop (points): encoder {100 * e['probe_drop']:+.1f}, decoder {100 * d['probe_drop']:+.1f}.",
        f"- ‖W_clean − W_noisy‖ / ‖W_clean‖: encoder {e['distance']:.3f}, decoder {d['distance']:.3f}.",
        f"- Extra change from init under noise (‖W−W₀‖/‖W₀‖, noisy − clean): encoder {e['change_extra']:+.3f}, "
        f"decoder {d['change_extra']:+.3f}.",
        "",
        f"Encoder discriminability dropped {'less' if less_disc else 'not less'} than the decoder's and its weights "
        f"moved {'less' if less_move else 'not less'}: **{verdict}** (one pair of trainings: no spread over seeds).",
        "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS),
    ]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def analysis_figure(rows: list[dict[str, Any]], path: Path) -> Path:
    """Per-layer bars, clean vs noisy: Fisher ratio, probe accuracy, change from init; and the distance."""
    names = [r["layer"] for r in rows]
    xs = np.arange(len(names))
    fig, axes = plt.subplots(1, 4, figsize=(18, 3.8), layout="constrained")
    for ax, (key, title) in zip(axes, (("fisher", "Fisher ratio (clean labels)"), ("probe", "linear-probe accuracy"),
                                       ("change", "‖W−W₀‖/‖W₀‖"))):
        for j, k in enumerate(("clean", "noisy")):
            ax.bar(xs + (j - 0.5) * 0.4, [r[f"{key}_{k}"] for r in rows], 0.4, label=f"{k} labels")
        ax.set_title(title)
        ax.set_xticks(xs, names, rotation=45, ha="right", fontsize=8)
        ax.legend(fontsize=8)
    axes[3].bar(xs, [r["clean_noisy_distance"] for r in rows],
                color=["C0" if r["part"] == "encoder" else "C3" for r in rows])
    axes[3].set_title("‖W_clean−W_noisy‖/‖W_clean‖ (blue: encoder)")
    axes[3].set_xticks(xs, names, rotation=45, ha="right", fontsize=8)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return path
