"""One run of a study: optional pretraining, then each downstream config on its encoder.

The chain (all paths inside the run's folder)::

    <run>/run.yaml                    everything the run runs, resolved (written first)
    <run>/pretrain/                   trainer.default_root_dir of the pretraining config; when that
                                      config has a test set, the pretrained network is also tested
                                      there (rows with downstream ``pretrained``: no fine-tuning)
    <run>/encoder.safetensors         its model.init_args.encoder_out
    <run>/downstream-<name>/          each downstream's default_root_dir; encoder_path -> the file
                                      above (null for a random-init arm)
    <run>/done.json                   rows and timings, written atomically last: the completion mark

Each stage is one :func:`noisyseg.cli.run_config`: its folder holds the ``config.yaml``
that ``noisyseg fit --config`` repeats it from, and the ``results.json`` its rows are read from.
A stage whose output exists (the encoder file plus ``pretrain/results.json``, or a downstream's
``results.json``) under an unchanged ``run.yaml`` is not run again, so a run killed half-way
resumes at its first unfinished stage.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import yaml

from noisyseg.cli import run_config
from noisyseg.experiments.spec import RunPlan
from noisyseg.runfiles import atomic_write, read_decoder, read_results

ENCODER_FILE = "encoder.safetensors"
DONE_FILE = "done.json"
RUN_FILE = "run.yaml"


def resolve_run(plan: RunPlan, run_dir: Path) -> dict[str, Any]:
    """The configs of ``plan`` chained into ``run_dir``: ``{"pretrain": cfg|None, "downstream": {name: cfg}}``."""
    run_dir = Path(run_dir)
    encoder = str(run_dir / ENCODER_FILE) if plan.pretrain is not None else None
    pre = None
    if plan.pretrain is not None:
        pre = copy.deepcopy(plan.pretrain)
        pre.setdefault("trainer", {})["default_root_dir"] = str(run_dir / "pretrain")
        pre["model"].setdefault("init_args", {})["encoder_out"] = encoder
        # the pretrained network itself is scored where the pretraining config has a test set
        pre["test_after_fit"] = (pre["data"].get("init_args") or {}).get("test") is not None
    downstream = {}
    for name, cfg in plan.downstream:
        cfg = copy.deepcopy(cfg)
        cfg.setdefault("trainer", {})["default_root_dir"] = str(run_dir / f"downstream-{name}")
        cfg["model"].setdefault("init_args", {})["encoder_path"] = encoder
        cfg["test_after_fit"] = True
        downstream[name] = cfg
    return {"pretrain": pre, "downstream": downstream}


def config_record(plan: RunPlan, resolved: dict[str, Any]) -> str:
    """The text of ``run.yaml``: run id, seed, parameters, sources and every resolved config."""
    record = {
        "run": plan.run_id,
        "seed": plan.seed,
        "params": plan.params,
        "sources": plan.sources,
        "pretrain": resolved["pretrain"],
        "downstream": resolved["downstream"],
    }
    return yaml.safe_dump(record, sort_keys=False)


def _decoder(cfg: dict[str, Any]) -> tuple[Any, Any]:
    args = cfg.get("model", {}).get("init_args", {}) or {}
    return args.get("decoder"), args.get("freeze_encoder")


def same_run_key(cfg: dict[str, Any]) -> str | None:
    """What decides a downstream's result, for spotting two downstreams of a run that are one training.

    The config without its output folder, and with ``transfer`` replaced by what it does: nothing
    for a random start (no ``encoder_path``), ``encoder`` for ``auto`` when the file holds no decoder
    (a contrastive encoder file). ``None`` (never merged) when the file cannot be read: only runs
    known to be identical are merged.
    """
    cfg = copy.deepcopy(cfg)
    cfg.get("trainer", {}).pop("default_root_dir", None)
    args = (cfg.get("model") or {}).get("init_args") or {}
    if args.get("encoder_path") is None:
        args.pop("transfer", None)
    elif args.get("transfer", "auto") == "auto":
        try:
            if read_decoder(args["encoder_path"]) is not None:
                return json.dumps(cfg, sort_keys=True, default=str)  # auto may mean full: keep as written
        except Exception:  # noqa: BLE001 - an unreadable file is never merged; its own run will say why
            return None
        args["transfer"] = "encoder"
    return json.dumps(cfg, sort_keys=True, default=str)


def _run(cfg: dict[str, Any], quiet: bool) -> dict[str, Any]:
    """One stage through the fit entry point; its results record without the live task and data."""
    res = run_config(cfg, quiet=quiet)
    return {k: v for k, v in res.items() if k not in ("model", "datamodule")}


def run_pipeline(plan: RunPlan, run_dir: str | Path, quiet: bool = True) -> dict[str, Any]:
    """Run one planned run; write ``run.yaml`` first and ``done.json`` last.

    Args:
        plan: from :func:`noisyseg.experiments.spec.plan_runs`.
        run_dir: the run's folder.
        quiet: no progress bars from Lightning.

    Returns:
        ``{"run": id, "rows": [...], "seconds": total, "pretrain_seconds": s}``; a row per
        downstream x split (val/test, where scored) x metric, with the run's parameters.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    resolved = resolve_run(plan, run_dir)
    text = config_record(plan, resolved)
    cfg_path = run_dir / RUN_FILE
    # stages of an interrupted run are reused only when they were made by this same config
    reuse = cfg_path.is_file() and cfg_path.read_text() == text
    atomic_write(cfg_path, lambda tmp: Path(tmp).write_text(text))

    # -- pretraining ---------------------------------------------------------------------------
    pre_seconds = 0.0
    scored: list[tuple[str, dict[str, Any], dict[str, Any]]] = []  # (downstream name, config, its scores)
    pre = resolved["pretrain"]
    if pre is not None:
        tested = pre["test_after_fit"]
        stored = read_results(run_dir / "pretrain") if reuse else None
        if stored is None or not (run_dir / ENCODER_FILE).is_file() or (tested and not stored.get("test")):
            stored = _run(pre, quiet)
        pre_seconds = float(sum(stored["seconds"].values()))
        if tested:
            scored = [("pretrained", pre, stored)]

    # -- downstream ----------------------------------------------------------------------------
    rows: list[dict[str, Any]] = []
    trained: dict[str, dict[str, Any]] = {}  # same_run_key -> scores: identical trainings run once
    for name, cfg in resolved["downstream"].items():
        key = same_run_key(cfg)
        if key is not None and key in trained:  # e.g. finetune_encoder of a MoCo file == its finetune
            scored.append((name, cfg, trained[key]))
            continue
        root = Path(cfg["trainer"]["default_root_dir"])
        stored = read_results(root) if reuse else None
        if stored is None or not stored.get("test"):
            stored = _run(cfg, quiet)
        scored.append((name, cfg, stored))
        if key is not None:
            trained[key] = stored
    for name, cfg, stored in scored:
        seconds = float(sum(stored["seconds"].values())) if name != "pretrained" else 0.0
        decoder, frozen = _decoder(cfg)
        for split in ("val", "test"):
            for metric, value in (stored.get(split) or {}).items():
                rows.append({
                    "run": plan.run_id,
                    "seed": plan.seed,
                    **plan.params,
                    "downstream": name,
                    "decoder": decoder,
                    "frozen": frozen,
                    "split": split,
                    "metric": metric,
                    "value": float(value),
                    "seconds": round(seconds, 2),
                    "pretrain_seconds": round(pre_seconds, 2),
                })
    result = {"run": plan.run_id, "rows": rows, "seconds": time.perf_counter() - t0, "pretrain_seconds": pre_seconds}
    done = json.dumps(result, indent=1, default=str)
    atomic_write(run_dir / DONE_FILE, lambda tmp: Path(tmp).write_text(done))
    return result


def read_done(run_dir: str | Path) -> dict[str, Any] | None:
    """The ``done.json`` of a finished run, or None when the run has not finished."""
    path = Path(run_dir) / DONE_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
