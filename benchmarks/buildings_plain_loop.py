"""The plain reference loop of the real-imagery building study: the yardstick for the toolkit.

Same crops, masks and seeds as ``configs/studies/buildings_noisy_labels.yaml``: the data come from
the study's own resolved configs (noisyseg's *data* code: tile split, resampling, noisy
footprints), everything after that is torch + smp only, no noisyseg training code. Recipe (the
calibration loop of ``../shared/calibration``): UNet-ResNet-18, CE + Dice, AdamW 1e-3 constant,
horizontal flip, batch 8 drawn with replacement, bf16 autocast, one thread; 600 steps on the
pool's noisy labels, 300 steps on the few clean crops.

Arms per seed (``downstream`` names match the study's): ``random/finetune`` (random init, few
clean crops); ``supervised/finetune`` (the whole noisy-label network fine-tuned: same classes);
``supervised/finetune_encoder`` (its encoder + a fresh decoder); ``supervised/pretrained`` (the
noisy-label network as it is). Scores: test crops of held-out tiles against clean masks.

    python benchmarks/buildings_plain_loop.py --variant quick --seeds 0 1 2
    # -> runs/plain/buildings-quick/results.csv (the sweep table's columns), summary printed

``benchmarks/compare_plain.py`` sets the toolkit's study table against this one.
"""

from __future__ import annotations

import argparse
import dataclasses
import csv
import os
import time
from pathlib import Path

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F

from noisyseg.config import instantiate
from noisyseg.experiments.spec import load_spec, plan_runs

SPEC = "configs/studies/buildings_noisy_labels.yaml"
K, IGNORE = 2, 255
PRETRAIN_STEPS, FINETUNE_STEPS, BATCH, LR = 600, 300, 8, 1e-3


def tensors(data_cfg: dict, split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images ``[N,C,H,W]``, training masks ``[N,H,W]`` and clean masks of one split of a config."""
    ds = instantiate(data_cfg["init_args"][split])
    samples = [ds[i] for i in range(len(ds))]
    x = torch.stack([s["image"] for s in samples])
    y = torch.stack([s["mask"] for s in samples])
    clean = torch.stack([s.get("clean_mask", s["mask"]) for s in samples])
    return x, y, clean


def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """CE + soft Dice (per class over the batch, smooth 1, mean over classes); 255 ignored."""
    logits = logits.float()
    valid = (y != IGNORE).unsqueeze(1)  # B x 1 x H x W
    p = logits.softmax(1) * valid
    oh = F.one_hot(y.where(y != IGNORE, 0), K).permute(0, 3, 1, 2).float() * valid
    dice = 1 - (2 * (p * oh).sum((0, 2, 3)) + 1) / (p.sum((0, 2, 3)) + oh.sum((0, 2, 3)) + 1)
    return F.cross_entropy(logits, y, ignore_index=IGNORE) + dice.mean()


def train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, g: torch.Generator,
          loss_fn=loss_fn, sample_flips: bool = False, params=None, frozen: torch.nn.Module | None = None) -> None:
    """AdamW at a constant lr, batches drawn with replacement, one horizontal flip per batch
    (``sample_flips``: one per sample; ``loss_fn`` and it are swapped by ``ab_buildings.py``; ``params``
    (parameters or groups, default all) and ``frozen`` (a part kept in eval mode) by ``ab_finetune.py``)."""
    model.train()
    if frozen is not None:
        frozen.eval()  # BatchNorm keeps its running statistics
    opt = torch.optim.AdamW(model.parameters() if params is None else params, lr=LR)
    for _ in range(steps):
        i = torch.randint(0, len(x), (BATCH,), generator=g)  # drawn with replacement
        xb, yb = x[i], y[i]
        if sample_flips:
            f = torch.rand(BATCH, generator=g) < 0.5  # B
            xb, yb = torch.where(f.view(-1, 1, 1, 1), xb.flip(-1), xb), torch.where(f.view(-1, 1, 1), yb.flip(-1), yb)
        elif torch.rand(1, generator=g) < 0.5:
            xb, yb = xb.flip(-1), yb.flip(-1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(xb.contiguous(memory_format=torch.channels_last))
        loss = loss_fn(out, yb)
        opt.zero_grad()
        loss.backward()
        opt.step()


@torch.no_grad()
def scores(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """mIoU, building IoU and mean F1 from one confusion matrix over the test crops."""
    model.eval()
    cm = torch.zeros(K, K, dtype=torch.long)
    for i in range(0, len(x), 8):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            pred = model(x[i : i + 8].contiguous(memory_format=torch.channels_last)).float().argmax(1)
        t, valid = y[i : i + 8], y[i : i + 8] != IGNORE
        cm += torch.bincount(t[valid] * K + pred[valid], minlength=K * K).view(K, K)
    tp = cm.diag().double()
    iou = tp / (cm.sum(0) + cm.sum(1) - cm.diag()).clamp(min=1)
    f1 = 2 * tp / (cm.sum(0) + cm.sum(1)).clamp(min=1)
    return {"miou": float(iou.mean()), "iou_1": float(iou[1]), "f1": float(f1.mean())}


def unet() -> torch.nn.Module:
    return smp.Unet("resnet18", encoder_weights=None, in_channels=3, classes=K).to(memory_format=torch.channels_last)


def run_seed(spec, seed: int) -> list[dict]:
    plan = next(p for p in plan_runs(spec) if p.seed == seed and p.params["method"] == "supervised")
    down = dict(plan.downstream)["finetune"]
    os.environ["PL_GLOBAL_SEED"] = str(seed)  # what seed_everything exports: the tile split follows it
    xp, yp, _ = tensors(plan.pretrain["data"], "train")  # pool crops, noisy footprints
    xf, _, yf = tensors(down["data"], "train")  # the few clean crops
    xt, _, yt = tensors(down["data"], "test")  # crops of held-out tiles
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    rows, t0 = [], time.perf_counter()

    def score(method: str, downstream: str, model: torch.nn.Module) -> None:
        for metric, value in scores(model, xt, yt).items():
            rows.append({"run": f"plain-seed-{seed}", "seed": seed, "method": method, "downstream": downstream,
                         "split": "test", "metric": metric, "value": value})

    model = unet()
    train(model, xf, yf, FINETUNE_STEPS, g)
    score("random", "finetune", model)
    pre = unet()
    train(pre, xp, yp, PRETRAIN_STEPS, g)
    score("supervised", "pretrained", pre)
    full = unet()
    full.load_state_dict(pre.state_dict())
    train(full, xf, yf, FINETUNE_STEPS, g)
    score("supervised", "finetune", full)
    enc = unet()
    enc.encoder.load_state_dict(pre.encoder.state_dict())
    train(enc, xf, yf, FINETUNE_STEPS, g)
    score("supervised", "finetune_encoder", enc)
    print(f"seed {seed}: pool {len(xp)}, few {len(xf)}, test {len(xt)} crops; "
          + ", ".join(f"{r['method']}/{r['downstream']} {100 * r['value']:.1f}" for r in rows if r["metric"] == "miou")
          + f" ({time.perf_counter() - t0:.0f} s)", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default=SPEC)
    ap.add_argument("--variant", default="quick")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", help="default runs/plain/buildings-<variant>")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    spec = dataclasses.replace(load_spec(args.spec, args.variant), seeds=list(args.seeds))  # any seed, not only the variant's
    out = Path(args.out or f"runs/plain/buildings-{args.variant}")
    out.mkdir(parents=True, exist_ok=True)
    table = out / "results.csv"
    done = {}
    if table.is_file():  # a killed run resumes at its first missing seed
        with table.open() as f:
            for r in csv.DictReader(f):
                done.setdefault(int(r["seed"]), []).append(r)
    rows = [r for s in args.seeds if s in done for r in done[s]]
    for seed in args.seeds:
        if seed in done:
            continue
        rows += run_seed(spec, seed)
        with table.open("w", newline="") as f:  # rewritten after every seed
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    print(f"[plain] {table}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
