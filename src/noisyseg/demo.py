"""``noisyseg demo``: noisy supervision pretrains a better encoder, end to end, on this CPU.

Every training is an ordinary config under ``configs/demo/``, run with the demo's folders and seed
through :func:`noisyseg.cli.run_config`, the entry point of ``noisyseg fit``; each run
folder keeps the ``config.yaml`` it ran (``noisyseg fit --config <out>/<run>/config.yaml``
repeats it) and the ``results.json`` its scores are read from. Stages:

1. **data** — VTS (Gerard & Sullivan): two texture classes, 20 Voronoi cells per image; the
   pretraining labels have 30 % of their cells flipped to the wrong class.
2. **pretraining arms** — ``supervised`` (``supervised_pretrain.yaml``): UNet-ResNet18 on the noisy
   labels with CE + Dice (Liu et al.); ``moco-clean`` / ``moco-noisy`` (``moco_pretrain.yaml``):
   MoCo v2 with clean pairs and with noisy pairs (r = 0.5, p = 0.5). Each writes an encoder file.
3. **downstream** — a *different* class set (3 classes: the noise texture becomes a labelled
   class) with few clean labels; for random initialisation and every encoder file: a frozen-encoder
   FCN probe (``downstream_probe.yaml``) and UNet fine-tuning (``downstream_finetune.yaml``), same seeds.
4. **report** — ``report.md`` (arm, mIoU, F1, per-class IoU), ``results.csv`` (tidy rows),
   ``demo.png`` (images, clean and noisy masks, predictions).
"""

from __future__ import annotations

import argparse
import csv
import io
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from noisyseg.cli import run_config
from noisyseg.config import get_by_path, load_config, set_by_path
from noisyseg.runfiles import atomic_write
from noisyseg.runtime import set_threads

CLASS_NAMES = ["stratified", "veined", "matted"]
CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "demo"

# pretraining arm -> (config file, run folder, overrides)
PRETRAIN_ARMS = {
    "supervised (noisy labels)": ("supervised_pretrain.yaml", "pretrain-supervised", {}),
    "moco (clean pairs)": ("moco_pretrain.yaml", "pretrain-moco-clean",
                           {"data.init_args.train.init_args.r": 0.0, "data.init_args.train.init_args.p": 0.5}),
    "moco (noisy pairs r=.5 p=.5)": ("moco_pretrain.yaml", "pretrain-moco-noisy",
                                     {"data.init_args.train.init_args.r": 0.5, "data.init_args.train.init_args.p": 0.5}),
}
DOWNSTREAM = {"probe": "downstream_probe.yaml", "finetune": "downstream_finetune.yaml"}

# ``--quick``: sizes for tests and smoke checks (seconds per training; not a result)
_QUICK_RUN = {"trainer.max_epochs": 1, "data.init_args.batch_size": 8, "data.init_args.train.init_args.size": 32}
_QUICK_DOWN = {**_QUICK_RUN, "data.init_args.train.init_args.length": 8, "data.init_args.test.init_args.length": 8,
               "data.init_args.test.init_args.size": 32}
QUICK = {
    "supervised_pretrain.yaml": {**_QUICK_RUN, "data.init_args.train.init_args.length": 16},
    "moco_pretrain.yaml": {**_QUICK_RUN, "data.init_args.train.init_args.length": 16},
    "downstream_probe.yaml": _QUICK_DOWN,
    "downstream_finetune.yaml": _QUICK_DOWN,
}
SEED_KEYS = ("data.init_args.train.init_args.seed", "data.init_args.test.init_args.seed")


def demo_config(file: str, root: Path, seed: int, precision: str, quick: bool,
                overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """A ``configs/demo`` file set up for one demo run.

    Args:
        file: the file's name in ``configs/demo``.
        root: the run's folder (``trainer.default_root_dir``; a pretraining's encoder file goes there).
        seed: ``seed_everything``; added to the files' dataset seeds (written for seed 0).
        precision: ``auto`` keeps the CLI's choice for this machine; else the Trainer's precision.
        quick: apply :data:`QUICK`'s sizes.
        overrides: dotted keys of the file to set last.

    Raises:
        FileNotFoundError: ``configs/demo`` is not beside the package (a source checkout is needed).
        KeyError: an override naming a key the file does not have.
    """
    cfg = load_config(CONFIGS / file)
    changes = {**(QUICK[file] if quick else {}), **(overrides or {}),
               "seed_everything": seed, "trainer.default_root_dir": str(root)}
    for key in SEED_KEYS:
        try:
            changes[key] = get_by_path(cfg, key) + seed
        except KeyError:
            continue  # a pretraining config has no test split
    if "encoder_out" in cfg["model"]["init_args"]:
        changes["model.init_args.encoder_out"] = str(root / "encoder.safetensors")
    for key, value in changes.items():
        set_by_path(cfg, key, value)
    if precision != "auto":
        cfg["trainer"]["precision"] = precision
    return cfg


def _setting(pre: dict[str, Any], down: dict[str, Any]) -> SimpleNamespace:
    """The sizes the report states, read from the configs that ran."""
    train = pre["data"]["init_args"]["train"]["init_args"]
    return SimpleNamespace(image_size=train["size"], pretrain_images=train["length"],
                           flip_rate=train["label_noise"]["flip_rate"],
                           downstream_train=down["data"]["init_args"]["train"]["init_args"]["length"],
                           downstream_test=down["data"]["init_args"]["test"]["init_args"]["length"])


def run_demo(out: Path, quick: bool = False, seed: int = 0, precision: str = "auto", moco: bool = True) -> dict[str, Any]:
    """Run every stage; return ``{"rows": [...], "seconds": float, "paths": {...}, "timings": {...}}``."""
    t_start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)

    # -- pretraining arms -------------------------------------------------------------------
    arms: dict[str, str | None] = {"random init": None}
    timings: dict[str, float] = {}
    pretrain_example, pre_cfg = None, None
    for name, (file, folder, overrides) in PRETRAIN_ARMS.items():
        if not moco and file == "moco_pretrain.yaml":
            continue
        cfg = demo_config(file, out / folder, seed, precision, quick, overrides)
        print(f"[demo] pretraining: {name}", flush=True)
        res = run_config(cfg)
        timings[f"pretrain {name}"] = res["seconds"]["fit"]
        arms[name] = res["encoder"]
        if pretrain_example is None:  # the figure's pretraining image, clean and noisy mask
            pretrain_example, pre_cfg = [res["datamodule"].train_set[0]], cfg
        del res  # the encoder file is all that passes on; free the model and cached data

    # -- downstream ---------------------------------------------------------------------------
    rows: list[dict[str, Any]] = []
    finetuned = {}
    for arm, enc in arms.items():
        for mode, file in DOWNSTREAM.items():
            slug = f"downstream-{_slug(arm)}-{mode}"
            cfg = demo_config(file, out / slug, seed, precision, quick, {"model.init_args.encoder_path": enc})
            print(f"[demo] downstream: {arm} / {mode}", flush=True)
            res = run_config(cfg)
            timings[f"{mode} {arm}"] = res["seconds"]["fit"] + res["seconds"]["test"]
            for metric, value in res["test"].items():
                rows.append({"arm": arm, "mode": mode, "metric": metric, "value": value})
            if mode == "finetune":  # kept for the figure: the network and its test set only, not the
                # task, whose trainer would keep optimiser state, loaders and cached data alive
                finetuned[arm] = {"model": res["model"].model, "test_set": res["datamodule"].test_set}
            del res
    seconds = time.perf_counter() - t_start
    paths = _write_outputs(out, rows, timings, seconds, _setting(pre_cfg, cfg), pretrain_example, finetuned)
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
    res = run_demo(Path(args.out), args.quick, args.seed, args.precision, moco=not args.no_moco)
    print(Path(res["paths"]["report"]).read_text())
    print(f"[demo] finished in {res['seconds']:.0f} s; report: {res['paths']['report']}, figure: {res['paths']['figure']}")
    return 0
