"""The demo's report: a Markdown table of the arms and a figure of masks and predictions."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from noisyseg.data.loading import CLEAN_MASK, IMAGE, MASK
from noisyseg.runfiles import atomic_write


def _fmt(v: float | None) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def demo_markdown(rows, timings, seconds, sz, class_names) -> str:
    """Markdown: one row per pretraining arm, probe and fine-tune scores, per-class IoU, timings."""
    val = {(r["arm"], r["mode"], r["metric"]): r["value"] for r in rows}
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    head = ["arm", "probe mIoU", "probe F1", "fine-tune mIoU", "fine-tune F1"] + [f"IoU {c} (ft)" for c in class_names]
    lines = [
        "# noisyseg demo",
        "",
        f"Pretraining: VTS {sz.image_size} px, {sz.pretrain_images} images, {int(100 * sz.flip_rate)} % of the "
        "Voronoi cells labelled with the wrong class (2 classes). Downstream: a different class set (3 classes, the "
        f"noise texture labelled), {sz.downstream_train} clean training images, {sz.downstream_test} clean test "
        "images. Probe = frozen encoder + FCN head; fine-tune = UNet, all weights. Scores in %, test split, "
        "from one confusion matrix over the split.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for arm in arms:
        cells = [arm]
        for mode in ("probe", "finetune"):
            cells += [_fmt(val.get((arm, mode, "miou"))), _fmt(val.get((arm, mode, "f1")))]
        cells += [_fmt(val.get((arm, "finetune", f"iou/{c}"))) for c in class_names]
        lines.append("| " + " | ".join(cells) + " |")
    base = {m: val.get(("random init", m, "miou")) for m in ("probe", "finetune")}
    lines += ["", "Difference to random initialisation (mIoU points):", ""]
    for arm in arms:
        if arm == "random init":
            continue
        diffs = []
        for m in ("probe", "finetune"):
            a, b = val.get((arm, m, "miou")), base[m]
            if a is not None and b is not None:
                diffs.append(f"{m} {100 * (a - b):+.1f}")
        lines.append(f"- {arm}: " + ", ".join(diffs))
    lines += ["", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in timings.items()]
    lines += [f"| **total** | **{seconds:.0f}** |", "", "![demo](demo.png)", ""]
    return "\n".join(lines)


def _rgb(image: torch.Tensor) -> np.ndarray:
    x = image[:3].float().numpy().transpose(1, 2, 0)
    lo, hi = np.percentile(x, 2), np.percentile(x, 98)
    return np.clip((x - lo) / max(hi - lo, 1e-6), 0, 1)


def demo_figure(path: Path, pretrain_set, finetuned: dict[str, Any], class_names: list[str], n: int = 4) -> None:
    """Top row: a pretraining image with its clean and noisy mask; then ``n`` test images with
    their truth and each fine-tuned arm's prediction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(finetuned)
    cols = 2 + len(arms)
    test_set = finetuned[arms[0]]["test_set"] if arms else None
    n = min(n, len(test_set)) if test_set is not None else 0
    fig, axes = plt.subplots(n + 1, cols, figsize=(2.2 * cols, 2.2 * (n + 1)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    kw = {"cmap": "viridis", "vmin": 0, "vmax": len(class_names) - 1, "interpolation": "nearest"}
    if pretrain_set is not None:
        s = pretrain_set[0]
        axes[0, 0].imshow(_rgb(s[IMAGE]))
        axes[0, 0].set_title("pretrain image", fontsize=8)
        axes[0, 1].imshow(s[CLEAN_MASK], **kw)
        axes[0, 1].set_title("clean mask", fontsize=8)
        if cols > 2:
            axes[0, 2].imshow(s[MASK], **kw)
            axes[0, 2].set_title(f"noisy mask ({100 * s['meta']['noise_rate']:.0f} % wrong)", fontsize=8)
    for i in range(n):
        s = test_set[i]
        axes[i + 1, 0].imshow(_rgb(s[IMAGE]))
        axes[i + 1, 1].imshow(s[CLEAN_MASK], **kw)
        if i == 0:
            axes[1, 0].set_title("test image", fontsize=8)
            axes[1, 1].set_title("truth", fontsize=8)
        for j, arm in enumerate(arms):
            model = finetuned[arm]["model"].eval()
            with torch.no_grad():
                pred = model(s[IMAGE][None].float())[0].argmax(0)
            axes[i + 1, 2 + j].imshow(pred, **kw)
            if i == 0:
                axes[1, 2 + j].set_title(arm, fontsize=7)
    fig.suptitle("noisyseg demo: fine-tuned UNet predictions (colours: " + ", ".join(class_names) + ")", fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=80, format="png"))
    plt.close(fig)
