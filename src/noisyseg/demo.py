"""``noisyseg demo``: noisy supervision pretrains a better encoder, end to end, on this CPU.

Stages (each a config dict of the same form as ``configs/``, written to ``<out>/configs``):

1. **data** — VTS (Gerard & Sullivan): two texture classes, 20 Voronoi cells per image; the
   pretraining labels have 30 % of their cells flipped to the wrong class.
2. **pretraining arms** — ``supervised``: UNet-ResNet18 on the noisy labels with CE + Dice
   (Liu et al.); ``moco-clean`` / ``moco-noisy``: MoCo v2 with clean pairs and with noisy pairs
   (r = 0.5, p = 0.5). Each writes an encoder file.
3. **downstream** — a *different* class set (3 classes: the noise texture becomes a labelled
   class) with few clean labels; for random initialisation and every encoder file: a frozen-encoder
   FCN probe and UNet fine-tuning, same seeds.
4. **report** — ``report.md`` (arm, mIoU, F1, per-class IoU), ``results.csv`` (tidy rows),
   ``demo.png`` (images, clean and noisy masks, predictions).
"""

from __future__ import annotations

import argparse
import copy
import csv
import io
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from noisyseg.checkpoints import atomic_write
from noisyseg.experiments.runner import instantiate, run_config
from noisyseg.runtime import set_threads

CLASS_NAMES = ["stratified", "veined", "matted"]


@dataclass
class DemoSize:
    """How big the demo is. ``FULL`` fits in 10 minutes on a 2-core CPU; ``QUICK`` is for tests."""

    image_size: int
    pretrain_images: int
    pretrain_epochs: int
    moco_images: int
    moco_epochs: int
    downstream_train: int
    downstream_test: int
    finetune_epochs: int
    probe_epochs: int
    batch_size: int
    moco_batch_size: int
    flip_rate: float = 0.3


FULL = DemoSize(96, 1200, 4, 1200, 3, 96, 300, 12, 12, 16, 32)
QUICK = DemoSize(32, 16, 1, 16, 1, 8, 8, 1, 1, 8, 8)


def _vts(split: str, length: int, size: int, seed: int, **kw: Any) -> dict:
    return {
        "class_path": "noisyseg.data.VTSSegmentation",
        "init_args": {"split": split, "length": length, "size": size, "seed": seed, "cache": True, **kw},
    }


def _trainer(root: Path, epochs: int, precision: str) -> dict:
    return {
        "max_epochs": epochs,
        "default_root_dir": str(root),
        "precision": precision,
        "log_every_n_steps": 10,
        "num_sanity_val_steps": 0,
    }


def supervised_pretrain_config(sz: DemoSize, root: Path, seed: int, precision: str) -> dict:
    """Liu et al.: UNet-ResNet18, CE + Dice, on VTS with ``flip_rate`` of the cells mislabelled."""
    return {
        "seed_everything": seed,
        "trainer": {**_trainer(root, sz.pretrain_epochs, precision), "limit_val_batches": 0},
        "model": {
            "class_path": "noisyseg.tasks.SegmentationTask",
            "init_args": {
                "decoder": "unet",
                "arch": "resnet18",
                "num_classes": 2,
                "lr": 2e-3,
                "encoder_out": str(root / "encoder.safetensors"),
            },
        },
        "data": {
            "class_path": "noisyseg.data.DataModule",
            "init_args": {
                "batch_size": sz.batch_size,
                "train": _vts("train", sz.pretrain_images, sz.image_size, seed, label_noise={"flip_rate": sz.flip_rate}),
            },
        },
    }


def moco_pretrain_config(sz: DemoSize, root: Path, seed: int, precision: str, r: float, p: float) -> dict:
    """MoCo v2 on VTS positive pairs with noisy-pairs rate ``r`` and per-image noise ``p``."""
    return {
        "seed_everything": seed,
        "trainer": {**_trainer(root, sz.moco_epochs, precision), "limit_val_batches": 0},
        "model": {
            "class_path": "noisyseg.tasks.MoCoTask",
            "init_args": {
                "arch": "resnet18",
                "queue_size": 1024,
                "lr": 0.015,  # lightly's small-batch MoCo rule, 0.06 x batch/128; 0.06 measured worse downstream
                "encoder_out": str(root / "encoder.safetensors"),
            },
        },
        "data": {
            "class_path": "noisyseg.data.DataModule",
            "init_args": {
                "batch_size": sz.moco_batch_size,
                "drop_last": True,
                "train": {
                    "class_path": "noisyseg.data.VTSPairs",
                    "init_args": {
                        "split": "train",
                        "length": sz.moco_images,
                        "size": sz.image_size,
                        "r": r,
                        "p": p,
                        "seed": seed,
                        "cache": True,
                    },
                },
            },
        },
    }


def downstream_config(
    sz: DemoSize, root: Path, seed: int, precision: str, encoder_path: str | None, mode: str
) -> dict:
    """3-class VTS with clean labels: ``probe`` (frozen encoder + FCN) or ``finetune`` (UNet)."""
    probe = mode == "probe"
    return {
        "seed_everything": seed,
        "trainer": {
            **_trainer(root, sz.probe_epochs if probe else sz.finetune_epochs, precision),
            "limit_val_batches": 0,
            "enable_checkpointing": False,
        },
        "model": {
            "class_path": "noisyseg.tasks.SegmentationTask",
            "init_args": {
                "decoder": "fcn" if probe else "unet",
                "arch": "resnet18",
                "num_classes": 3,
                "class_names": CLASS_NAMES,
                "encoder_path": encoder_path,
                "freeze_encoder": probe,
                "lr": 3e-3 if probe else 1e-3,
            },
        },
        "data": {
            "class_path": "noisyseg.data.DataModule",
            "init_args": {
                "batch_size": sz.batch_size,
                "eval_batch_size": 32,
                # downstream scenes use another seed: different images than pretraining
                "train": _vts("train", sz.downstream_train, sz.image_size, seed + 1000, third_class=True),
                "test": _vts("test", sz.downstream_test, sz.image_size, seed + 1000, third_class=True),
            },
        },
    }


def _save_yaml(path: Path, cfg: dict) -> None:
    text = yaml.safe_dump(cfg, sort_keys=False)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def run_demo(out: Path, sz: DemoSize, seed: int = 0, precision: str = "auto", moco: bool = True) -> dict[str, Any]:
    """Run every stage; return ``{"rows": [...], "seconds": float, "paths": {...}}``."""
    t_start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    (out / "configs").mkdir(exist_ok=True)
    _save_yaml(out / "configs" / "size.yaml", asdict(sz))

    # -- pretraining arms -------------------------------------------------------------------
    arms: dict[str, str | None] = {"random init": None}
    pre_cfgs = {"supervised (noisy labels)": supervised_pretrain_config(sz, out / "pretrain-supervised", seed, precision)}
    if moco:
        pre_cfgs["moco (clean pairs)"] = moco_pretrain_config(sz, out / "pretrain-moco-clean", seed, precision, 0.0, 0.5)
        pre_cfgs["moco (noisy pairs r=.5 p=.5)"] = moco_pretrain_config(
            sz, out / "pretrain-moco-noisy", seed, precision, 0.5, 0.5
        )
    timings: dict[str, float] = {}
    for name, cfg in pre_cfgs.items():
        slug = Path(cfg["trainer"]["default_root_dir"]).name
        _save_yaml(out / "configs" / f"{slug}.yaml", cfg)
        print(f"[demo] pretraining: {name}", flush=True)
        res = run_config(cfg, stages=("fit",))
        timings[f"pretrain {name}"] = res["seconds"]["fit"]
        arms[name] = cfg["model"]["init_args"]["encoder_out"]
        del res  # the encoder file is all that passes on; free the model and cached data

    # -- downstream ---------------------------------------------------------------------------
    rows: list[dict[str, Any]] = []
    finetuned = {}
    for arm, enc in arms.items():
        for mode in ("probe", "finetune"):
            slug = f"downstream-{_slug(arm)}-{mode}"
            cfg = downstream_config(sz, out / slug, seed, precision, enc, mode)
            _save_yaml(out / "configs" / f"{slug}.yaml", cfg)
            print(f"[demo] downstream: {arm} / {mode}", flush=True)
            res = run_config(cfg, stages=("fit", "test"))
            timings[f"{mode} {arm}"] = res["seconds"]["fit"] + res["seconds"]["test"]
            for metric, value in res["test"].items():
                rows.append({"arm": arm, "mode": mode, "metric": metric, "value": value})
            if mode == "finetune":  # kept for the figure: the network and its test set only, not the
                # task, whose trainer would keep optimiser state, loaders and cached data alive
                finetuned[arm] = {"model": res["model"].model, "test_set": res["datamodule"].test_set}
            del res
    seconds = time.perf_counter() - t_start
    pretrain_example = instantiate(pre_cfgs["supervised (noisy labels)"]["data"]["init_args"]["train"])
    paths = _write_outputs(out, rows, timings, seconds, sz, pretrain_example, finetuned)
    return {"rows": rows, "seconds": seconds, "paths": paths, "timings": timings}


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-").replace("--", "-")


def _write_outputs(out, rows, timings, seconds, sz, pretrain_set, finetuned) -> dict[str, str]:
    from noisyseg.report.demo import demo_figure, demo_markdown

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["arm", "mode", "metric", "value"])
    w.writeheader()
    w.writerows(rows)
    atomic_write(out / "results.csv", lambda tmp: Path(tmp).write_text(buf.getvalue()))
    md = demo_markdown(rows, timings, seconds, sz, CLASS_NAMES)
    atomic_write(out / "report.md", lambda tmp: Path(tmp).write_text(md))
    demo_figure(out / "demo.png", pretrain_set, finetuned, CLASS_NAMES)
    return {"report": str(out / "report.md"), "figure": str(out / "demo.png"), "results": str(out / "results.csv")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="noisyseg demo", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes for tests (about a minute)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precision", default="auto", help="auto (bf16 where fast) or 32-true")
    ap.add_argument("--no-moco", action="store_true", help="skip the MoCo arms")
    ap.add_argument("--threads", type=int, help="torch compute threads (default: OMP_NUM_THREADS, else the "
                    "physical cores available)")
    args = ap.parse_args(argv)
    set_threads(args.threads)  # ValueError (exit 2) for a count below 1
    sz = copy.deepcopy(QUICK if args.quick else FULL)
    res = run_demo(Path(args.out), sz, args.seed, args.precision, moco=not args.no_moco)
    print(Path(res["paths"]["report"]).read_text())
    print(f"[demo] finished in {res['seconds']:.0f} s; report: {res['paths']['report']}, figure: {res['paths']['figure']}")
    return 0
