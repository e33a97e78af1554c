"""A/B of the building study's fine-tuning stage: how a pretrained encoder should meet 6 clean crops.

The study fine-tunes a pretrained encoder with a fresh decoder at the same learning rate as a
network trained from scratch (AdamW 1e-3, 300 steps on 6 crops). There the MoCo encoder and the
noisy-label encoder scored at or below random initialisation. This harness takes the study's
encoder files (``runs/studies/buildings_noisy_labels-quick/method-<m>_seed-<s>/encoder.safetensors``)
into the plain loop (torch + smp, ``buildings_plain_loop.py``) and changes one thing of the
fine-tuning recipe at a time, seeds paired:

* ``random``       random init, the whole network trained (the study's yardstick);
* ``baseline``     pretrained encoder + fresh decoder, every parameter at lr 1e-3 (the study's recipe);
* ``encoder_lr``   the same with the encoder at lr 1e-4 (a tenth);
* ``lp_ft``        decoder alone for the first half of the steps, then everything (Kumar et al. 2022,
                   "Fine-Tuning can Distort Pretrained Features");
* ``frozen``       encoder frozen, decoder alone for every step.

    python benchmarks/ab_finetune.py --method moco --arms random baseline encoder_lr lp_ft frozen --seeds 0 1 2
    # -> runs/ab/finetune-<method>/results.csv, paired differences to `baseline` and to `random` printed
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import buildings_plain_loop as plain  # noqa: E402

from noisyseg.experiments.spec import load_spec, plan_runs  # noqa: E402
from noisyseg.report.tables import paired  # noqa: E402
from noisyseg.runfiles import read_encoder  # noqa: E402

ARMS = ("random", "baseline", "encoder_lr", "lp_ft", "frozen")
STUDY = "runs/studies/buildings_noisy_labels-quick"


def finetune(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, g: torch.Generator, arm: str) -> None:
    """300 steps of the plain loop's recipe with ``arm``'s change (per-parameter-group lr, staged freezing)."""
    enc, rest = list(model.encoder.parameters()), [p for n, p in model.named_parameters() if not n.startswith("encoder.")]
    steps = plain.FINETUNE_STEPS
    if arm == "frozen":
        for p in enc:
            p.requires_grad_(False)
        plain.train(model, x, y, steps, g, params=rest, frozen=model.encoder)
    elif arm == "lp_ft":
        for p in enc:
            p.requires_grad_(False)
        plain.train(model, x, y, steps // 2, g, params=rest)
        for p in enc:
            p.requires_grad_(True)
        plain.train(model, x, y, steps - steps // 2, g)
    elif arm == "encoder_lr":
        plain.train(model, x, y, steps, g, params=[{"params": enc, "lr": plain.LR / 10}, {"params": rest}])
    else:
        plain.train(model, x, y, steps, g)


def score(arm: str, method: str, spec, seed: int) -> float:
    plan = next(p for p in plan_runs(spec) if p.seed == seed and p.params["method"] == "supervised")
    os.environ["PL_GLOBAL_SEED"] = str(seed)  # the tile split follows the run's seed
    down = dict(plan.downstream)["finetune"]
    xf, _, yf = plain.tensors(down["data"], "train")
    xt, _, yt = plain.tensors(down["data"], "test")
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = plain.unet()
    if arm != "random":
        state, _ = read_encoder(f"{STUDY}/method-{method}_seed-{seed}/encoder.safetensors")
        model.encoder.load_state_dict(state)
    finetune(model, xf, yf, g, arm)
    return plain.scores(model, xt, yt)["miou"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="moco", help="whose encoder files: moco or supervised")
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", help="default runs/ab/finetune-<method>")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    spec = dataclasses.replace(load_spec(plain.SPEC, "quick"), seeds=list(args.seeds))
    out = Path(args.out or f"runs/ab/finetune-{args.method}")
    out.mkdir(parents=True, exist_ok=True)
    table = out / "results.csv"
    rows = list(csv.DictReader(table.open())) if table.is_file() else []
    done = {(r["arm"], int(r["seed"])) for r in rows}
    for seed in args.seeds:
        for arm in args.arms:
            if (arm, seed) in done:
                continue
            t0 = time.perf_counter()
            rows.append({"arm": arm, "seed": seed, "miou": score(arm, args.method, spec, seed),
                         "seconds": round(time.perf_counter() - t0)})
            print(f"{arm:10s} seed {seed}: mIoU {100 * float(rows[-1]['miou']):.1f} ({rows[-1]['seconds']} s)", flush=True)
            with table.open("w", newline="") as f:  # rewritten after every run: a killed run resumes
                w = csv.DictWriter(f, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerows(rows)
    by = {(r["arm"], int(r["seed"])): float(r["miou"]) for r in rows}
    for ref in ("baseline", "random"):
        for arm in args.arms:
            seeds = [s for s in args.seeds if (arm, s) in by and (ref, s) in by]
            if arm != ref and seeds:
                print(f"{arm} - {ref}: {paired([by[(arm, s)] - by[(ref, s)] for s in seeds]).pct()} points over seeds {seeds}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
