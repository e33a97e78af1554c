"""One training step of the toolkit against the same step done by hand: is the Lightning loop the plain loop's math?

The building study's toolkit pretraining (``SegmentationTask`` through ``run_config``, the entry point
of ``noisyseg fit``, and the study's resolved config) runs two steps; a callback records the weights and optimiser state before
each step, the augmented batch the task trained on and the weights after. Each step is then
repeated by hand from the recorded weights on the recorded batch: bf16 autocast forward, the task's
loss, ``AdamW(lr 1e-3, weight decay 0.01)``, as ``buildings_plain_loop.py`` does. With the task's
own network and fused AdamW the two must agree bit for bit; with the plain loop's network (smp
UNet without the matmul convolutions) and unfused AdamW they differ only by bf16 rounding, which
flips the sign of Adam's first update (lr x sign(gradient)) for the few weights whose gradient is
near zero.

    python benchmarks/step_parity_buildings.py                 # task's network, fused AdamW
    python benchmarks/step_parity_buildings.py --plain-model --unfused
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).parent))
import buildings_plain_loop as plain  # noqa: E402

from noisyseg.cli import run_config  # noqa: E402
from noisyseg.experiments.spec import load_spec, plan_runs  # noqa: E402

STEPS = 2


class Record(L.Callback):
    """Weights and optimiser state before, weights, loss and lr after each of the first steps, and
    the batches the task trained on (after its augmentation)."""

    def __init__(self) -> None:
        self.before, self.opt_state, self.after, self.loss, self.lr = [], [], [], [], []
        self.batches: list[tuple[torch.Tensor, torch.Tensor]] = []

    def on_fit_start(self, trainer, pl_module):
        augment = pl_module.augment

        def recorded(x, y, generator=None):
            xa, ya = augment(x, y)
            self.batches.append((xa.clone(), ya.clone()))
            return xa, ya

        pl_module.augment = recorded

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.before.append({k: v.detach().clone() for k, v in pl_module.model.state_dict().items()})
        self.opt_state.append(copy.deepcopy(trainer.optimizers[0].state_dict()))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after.append({k: v.detach().clone() for k, v in pl_module.model.state_dict().items()})
        self.loss.append(float(outputs["loss"]))
        self.lr.append(trainer.optimizers[0].param_groups[0]["lr"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plain-model", action="store_true", help="repeat the step with the plain loop's smp UNet")
    ap.add_argument("--unfused", action="store_true", help="repeat the step with torch's default (unfused) AdamW")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    spec = load_spec(plain.SPEC, "quick")
    plan = next(p for p in plan_runs(spec) if p.seed == args.seed and p.params["method"] == "supervised")
    os.environ["PL_GLOBAL_SEED"] = str(args.seed)
    cfg = copy.deepcopy(plan.pretrain)
    cfg["model"]["init_args"]["encoder_out"] = None
    cfg["trainer"].update(max_steps=STEPS, logger=False, enable_checkpointing=False,
                          default_root_dir="runs/ab/step_parity")
    rec = Record()
    task = run_config(cfg, quiet=True, callbacks=(rec,))["model"]
    trainer, batches = task.trainer, rec.batches
    print(f"toolkit: precision {trainer.precision}, {type(trainer.optimizers[0]).__name__} "
          f"fused={trainer.optimizers[0].defaults['fused']}; by hand: "
          f"{'plain smp UNet' if args.plain_model else 'the task network'}, {'unfused' if args.unfused else 'fused'} AdamW")
    for step in range(STEPS):
        ref = plain.unet() if args.plain_model else copy.deepcopy(task.model)
        ref.load_state_dict(rec.before[step])
        ref.train()
        opt = torch.optim.AdamW(ref.parameters(), lr=plain.LR, weight_decay=0.01, fused=not args.unfused)
        if step:
            opt.load_state_dict(rec.opt_state[step])  # Adam's moments as Lightning's optimiser had them
        x, y = batches[step]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = ref(x.contiguous(memory_format=torch.channels_last))
        loss = task.loss_fn(out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        names = [n for n, _ in ref.named_parameters()]
        up_t = torch.cat([(rec.after[step][n] - rec.before[step][n]).flatten() for n in names])
        up_h = torch.cat([(ref.state_dict()[n] - rec.before[step][n]).flatten() for n in names])
        same_sign = float((torch.sign(up_t) == torch.sign(up_h)).float().mean())
        rel = float((up_t - up_h).norm() / up_h.norm())
        bn = max(float((ref.state_dict()[k] - rec.after[step][k]).abs().max()) for k in rec.after[step] if "running" in k)
        print(f"step {step}: loss toolkit {rec.loss[step]:.6f} by hand {loss.item():.6f}; updates: relative "
              f"difference {rel:.3f}, same sign {100 * same_sign:.1f} %; BatchNorm statistics differ by {bn:.1e}; "
              f"lr {rec.lr[step]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
