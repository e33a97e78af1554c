"""A/B of the building study's pretraining stage: swap one toolkit part into the plain loop at a time.

The plain reference loop (``buildings_plain_loop.py``) and the toolkit train the same network on
the same noisy crops; when their scores disagree, this finds the part that makes the difference.
Each arm pretrains 600 steps on the pool's noisy labels and scores the network on the clean test
crops (the study's ``pretrained`` row), seeds paired:

* ``plain``            the plain loop as it is;
* ``loss``             the toolkit's ``CEDiceLoss`` (smp Dice) instead of the plain CE + soft Dice;
* ``model``            the toolkit's ``build_segmentation_model`` (smp UNet + matmul small-map convs);
* ``flip``             per-sample horizontal flips (the toolkit's ``hflip`` preset) instead of one per batch;
* ``toolkit``          ``SegmentationTask`` through Lightning with the study's pretraining config;
* ``random``, ``toolkit_random``  the yardstick of both: random init fine-tuned on the few clean
                       crops (300 steps), by the plain loop and by the toolkit's fine-tuning config.

    python benchmarks/ab_buildings.py --arms plain loss model --seeds 0 1 2
    # -> runs/ab/buildings/results.csv, paired differences to `plain` printed
"""

from __future__ import annotations

import argparse
import dataclasses
import csv
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import buildings_plain_loop as plain  # noqa: E402

from noisyseg.experiments.spec import load_spec, plan_runs  # noqa: E402
from noisyseg.report.tables import paired  # noqa: E402

ARMS = ("plain", "loss", "model", "flip", "toolkit", "random", "toolkit_random")


def pretrain_score(arm: str, spec, seed: int) -> float:
    """mIoU on the test crops of the network pretrained 600 steps by ``arm``."""
    plan = next(p for p in plan_runs(spec) if p.seed == seed and p.params["method"] == "supervised")
    os.environ["PL_GLOBAL_SEED"] = str(seed)
    down = dict(plan.downstream)["finetune"]
    if arm == "toolkit_random":
        from noisyseg.cli import run_config

        cfg = dict(down)
        cfg["trainer"] = {**cfg["trainer"], "default_root_dir": f"runs/ab/buildings/toolkit_random-{seed}",
                          "enable_progress_bar": False}
        cfg["model"] = {**cfg["model"], "init_args": {**cfg["model"]["init_args"], "encoder_path": None}}
        return float(run_config({**cfg, "test_after_fit": True}, quiet=True)["test"]["miou"])
    if arm == "random":
        xf, _, yf = plain.tensors(down["data"], "train")
        xt, _, yt = plain.tensors(down["data"], "test")
        torch.manual_seed(seed)
        model = plain.unet()
        plain.train(model, xf, yf, plain.FINETUNE_STEPS, torch.Generator().manual_seed(seed))
        return plain.scores(model, xt, yt)["miou"]
    if arm == "toolkit":
        from noisyseg.cli import run_config

        cfg = dict(plan.pretrain)
        cfg["trainer"] = {**cfg["trainer"], "default_root_dir": f"runs/ab/buildings/toolkit-{seed}",
                          "enable_progress_bar": False}
        cfg["model"] = {**cfg["model"], "init_args": {**cfg["model"]["init_args"], "encoder_out": None}}
        return float(run_config({**cfg, "test_after_fit": True}, quiet=True)["test"]["miou"])
    xp, yp, _ = plain.tensors(plan.pretrain["data"], "train")
    xt, _, yt = plain.tensors(down["data"], "test")
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    if arm == "model":
        from noisyseg.models.networks import build_segmentation_model
        from noisyseg.runtime import use_matmul_convs

        model = build_segmentation_model("unet", "resnet18", 3, plain.K).to(memory_format=torch.channels_last)
        use_matmul_convs(model)  # as the toolkit's bf16 CPU training runs it
    else:
        model = plain.unet()
    loss = plain.loss_fn
    if arm == "loss":
        from noisyseg.losses.segmentation import CEDiceLoss

        loss = CEDiceLoss()
    plain.train(model, xp, yp, plain.PRETRAIN_STEPS, g, loss, sample_flips=arm == "flip")
    return plain.scores(model, xt, yt)["miou"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--spec", default=plain.SPEC)
    ap.add_argument("--variant", default="quick")
    ap.add_argument("--out", default="runs/ab/buildings")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    spec = dataclasses.replace(load_spec(args.spec, args.variant), seeds=list(args.seeds))  # any seed, not only the variant's
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = out / "results.csv"
    rows = list(csv.DictReader(table.open())) if table.is_file() else []
    done = {(r["arm"], int(r["seed"])) for r in rows}
    for seed in args.seeds:
        for arm in args.arms:
            if (arm, seed) in done:
                continue
            t0 = time.perf_counter()
            score = pretrain_score(arm, spec, seed)
            rows.append({"arm": arm, "seed": seed, "miou": score, "seconds": round(time.perf_counter() - t0)})
            print(f"{arm:8s} seed {seed}: mIoU {100 * score:.1f} ({rows[-1]['seconds']} s)", flush=True)
            with table.open("w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerows(rows)
    by = {(r["arm"], int(r["seed"])): float(r["miou"]) for r in rows}
    for arm in args.arms:
        seeds = [s for s in args.seeds if (arm, s) in by and ("plain", s) in by]
        if arm != "plain" and seeds:
            d = paired([by[(arm, s)] - by[("plain", s)] for s in seeds])
            print(f"{arm} - plain: {d.pct()} points over seeds {seeds}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
