"""Sweep specs: which configs a study runs, what it varies, and the runs that come out of it.

A spec is a YAML mapping (see ``configs/studies/``)::

    name: vts_noisy_pairs                     # optional; default: the file's stem
    pretrain:                                 # a config path, null (random init), or named configs
      moco: configs/pretrain/moco_vts.yaml
      moco_clean: {config: configs/pretrain/moco_vts.yaml,      # a config with its own overrides
                   overrides: {data.init_args.train.init_args.r: 0.0}}
      random: null                            # an arm without pretraining
    downstream:                               # every run fine-tunes each of these on its encoder
      - {name: unet, config: configs/finetune/vts_unet.yaml}
      - {name: probe, config: configs/finetune/vts_unet.yaml,
         overrides: {model.init_args.freeze_encoder: true}}
    seeds: [0, 1]                             # seed_everything of every config of a run
    seed_keys:                                # dataset seeds that follow the run's seed (+ offset)
      pretrain.data.init_args.train.init_args.seed: 0
    overrides:                                # applied to every run, before the grid
      pretrain.trainer.max_epochs: 5          # pretrain.<key>       the pretraining config
      downstream.*.trainer.max_epochs: 3      # downstream.*.<key>   every downstream config
      downstream.unet.model.init_args.lr: 1e-3  # downstream.<name>.<key> one of them
      "*.trainer.accelerator": cpu            # *.<key>             every config of the run
    grid:                                     # a mapping, or a list of mappings (union of grids)
      pretrain: [moco, random]                # the pretraining config itself (names above)
      pretrain.data.init_args.train.init_args.r: [0, 0.5, 1]   # a key: a list of values
      r=pretrain.data.init_args.train.init_args.noisy_pair_rate: [0, 1]  # column=key: names the column
      classes:                                # a label: named bundles of overrides
        matched: {pretrain.model.init_args.num_classes: 3}
        merged: {pretrain.model.init_args.num_classes: 2}
    variants:                                 # --variant quick: merged over the spec
      quick: {seeds: [0], overrides: {...}, grid: {...}}

The results table names each grid axis by a short column: ``method`` for ``pretrain``, the last
component of a dotted key (``r``), the name before ``=`` in ``column=key``, or the label of a
bundle axis. The report reads the columns ``method``, ``r``, ``p``, ``mere_exposure``, ``alpha``,
``false_negative``, ``flip_rate``, ``drop_rate`` and ``loss`` (a bundle axis named ``loss`` with a
``ce_dice`` arm: configs/studies/robust_losses.yaml). Keys of the pretraining config
are left out for a ``null`` (random-init) arm, so such an arm is run once, not once per value.

Every grid point is built and checked before any run starts: a key that a config lacks is an
error naming the key and the config file (a typo must not silently add an unused key). A missing
key is accepted only where a ``class_path`` node's ``init_args`` lacks an argument that the class
takes, or the ``trainer`` section lacks a ``Trainer`` argument (configs leave defaults out).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import inspect
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from noisyseg.config import check_classes, import_class, load_config


class SpecError(ValueError):
    """A sweep spec is malformed or names something that does not exist."""


@dataclass
class Downstream:
    """One downstream config of every run.

    Attributes:
        name: its column value in the results table and its folder in the run dir.
        config: path of the config file.
        overrides: dotted keys of this config only.
    """

    name: str
    config: str
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunPlan:
    """One run: the resolved configs of a grid point and seed (everything it will run).

    Attributes:
        run_id: readable slug of its parameters and seed (its folder name).
        seed: ``seed_everything`` of every config.
        params: grid column -> value (None where it does not apply); ``method`` always present.
        pretrain: resolved pretraining config, or None (random init).
        downstream: ``(name, resolved config)`` pairs.
        sources: config name -> file it was read from (for error messages and the record).
    """

    run_id: str
    seed: int
    params: dict[str, Any]
    pretrain: dict[str, Any] | None
    downstream: list[tuple[str, dict[str, Any]]]
    sources: dict[str, str | None] = field(default_factory=dict)


@dataclass
class SweepSpec:
    """A parsed spec (variant already merged in)."""

    path: Path
    name: str
    pretrain: dict[str, str | None]
    downstream: list[Downstream]
    seeds: list[int]
    overrides: dict[str, Any]
    grid: list[dict[str, Any]]
    seed_keys: dict[str, int]
    variant: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)
    pretrain_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)


TOP_KEYS = {"name", "pretrain", "downstream", "seeds", "seed_keys", "overrides", "grid", "variants", "description"}


def _merge_variant(raw: dict[str, Any], variant: str | None, path: Path) -> dict[str, Any]:
    variants = raw.get("variants") or {}
    merged = {k: copy.deepcopy(v) for k, v in raw.items() if k != "variants"}
    if variant is None:
        return merged
    if variant not in variants:
        raise SpecError(f"spec {path} has no variant {variant!r}; valid: {sorted(variants) or 'none'}")
    for key, value in (variants[variant] or {}).items():
        if key not in TOP_KEYS - {"variants"}:
            raise SpecError(f"spec {path}: variant {variant!r} sets unknown key {key!r}; valid: {sorted(TOP_KEYS)}")
        base = merged.get(key)
        if key in ("overrides", "seed_keys") and isinstance(base, dict) and isinstance(value, dict):
            merged[key] = {**base, **value}
        elif key == "grid" and isinstance(base, dict) and isinstance(value, dict):
            merged[key] = {**base, **value}  # a variant's axis replaces the base's axis of that name
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def resolve_path(p: str, spec_path: Path) -> str:
    """A config path as given (relative to the working directory), else relative to the spec.

    Raises:
        FileNotFoundError: naming both places tried.
    """
    if Path(p).is_file():
        return str(p)
    alt = spec_path.parent / p
    if alt.is_file():
        return str(alt)
    raise FileNotFoundError(f"spec {spec_path}: config file {p} does not exist (also tried {alt})")


def load_spec(path: str | Path, variant: str | None = None) -> SweepSpec:
    """Read and check a spec file.

    Raises:
        FileNotFoundError: the spec or a config it names is missing.
        SpecError: unknown top-level keys, an empty grid axis, no downstream, bad seeds.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sweep spec {path} does not exist")
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict):
        raise SpecError(f"sweep spec {path} must hold a mapping")
    unknown = set(raw) - TOP_KEYS
    if unknown:
        raise SpecError(f"spec {path}: unknown keys {sorted(unknown)}; valid: {sorted(TOP_KEYS)}")
    spec = _merge_variant(raw, variant, path)

    pre = spec.get("pretrain")
    if pre is None:
        pretrain: dict[str, str | None] = {"random": None}
    elif isinstance(pre, str):
        pretrain = {Path(pre).stem: pre}
    elif isinstance(pre, dict) and pre:
        pretrain = {str(k): v for k, v in pre.items()}
    else:
        raise SpecError(f"spec {path}: pretrain must be a config path, null, or a mapping name -> path|null")
    pretrain_overrides: dict[str, dict[str, Any]] = {}
    for k, v in list(pretrain.items()):
        if isinstance(v, dict):
            extra = set(v) - {"config", "overrides"}
            if "config" not in v or extra:
                raise SpecError(f"spec {path}: pretrain {k!r} must be a path, null, or {{config, overrides}}")
            pretrain_overrides[k] = dict(v.get("overrides") or {})
            v = v["config"]
        pretrain[k] = None if v is None else resolve_path(v, path)

    downstream = []
    for i, d in enumerate(spec.get("downstream") or []):
        if isinstance(d, str):
            d = {"config": d}
        if not isinstance(d, dict) or "config" not in d:
            raise SpecError(f"spec {path}: downstream[{i}] needs a 'config' path")
        extra = set(d) - {"name", "config", "overrides"}
        if extra:
            raise SpecError(f"spec {path}: downstream[{i}] has unknown keys {sorted(extra)}; valid: name, config, overrides")
        name = str(d.get("name") or Path(d["config"]).stem)
        downstream.append(Downstream(name, resolve_path(d["config"], path), dict(d.get("overrides") or {})))
    if not downstream:
        raise SpecError(f"spec {path}: 'downstream' must list at least one config")
    names = [d.name for d in downstream]
    if len(set(names)) != len(names):
        raise SpecError(f"spec {path}: downstream names {names} must be unique (give each a 'name')")

    seeds = spec.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise SpecError(f"spec {path}: seeds must be a non-empty list of integers, got {seeds!r}")
    seed_keys = spec.get("seed_keys") or {}
    if isinstance(seed_keys, list):
        seed_keys = dict.fromkeys(seed_keys, 0)

    grid = spec.get("grid") or {}
    grids = grid if isinstance(grid, list) else [grid]
    for g in grids:
        if not isinstance(g, dict):
            raise SpecError(f"spec {path}: grid must be a mapping or a list of mappings")
        for key, values in g.items():
            if isinstance(values, dict):
                if not values or not all(isinstance(b, dict) for b in values.values()):
                    raise SpecError(f"spec {path}: grid axis {key!r} must map labels to mappings of dotted keys")
            elif not isinstance(values, list) or not values:
                raise SpecError(f"spec {path}: grid axis {key!r} needs a non-empty list of values, got {values!r}")
            if key == "pretrain":
                bad = [v for v in values if v not in pretrain]
                if bad:
                    raise SpecError(f"spec {path}: grid pretrain names {bad} are not in pretrain: {sorted(pretrain)}")
    return SweepSpec(
        path=path,
        name=str(spec.get("name") or path.stem),
        pretrain=pretrain,
        pretrain_overrides=pretrain_overrides,
        downstream=downstream,
        seeds=seeds,
        overrides=dict(spec.get("overrides") or {}),
        grid=grids,
        seed_keys={str(k): int(v) for k, v in seed_keys.items()},
        variant=variant,
        raw=spec,
    )


# ------------------------------------------------------------------------------------- setting keys
def _class_accepts(node: dict, name: str) -> bool:
    """Whether the class of a ``{class_path, init_args}`` node takes argument ``name``."""
    try:
        params = inspect.signature(import_class(node["class_path"])).parameters
    except (ValueError, TypeError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


@functools.lru_cache(maxsize=1)
def _trainer_args() -> frozenset[str]:
    import lightning as L

    return frozenset(inspect.signature(L.Trainer).parameters)


def set_key(cfg: dict, dotted: str, value: Any) -> None:
    """Set a dotted key that must exist, or that is an argument the enclosing class takes.

    Raises:
        KeyError: naming the key (and the first missing part).
    """
    parts = dotted.split(".")
    node, parent = cfg, None
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if not isinstance(node, dict):
            raise KeyError(f"{'.'.join(parts[:i])!r} is not a mapping (while setting {dotted!r})")
        if part not in node:
            # configs leave class defaults out: allow an argument the class takes, nothing else
            if i > 0 and parts[i - 1] == "init_args" and isinstance(parent, dict) and "class_path" in parent \
                    and _class_accepts(parent, part):
                node[part] = value if last else {}
            elif i == 1 and parts[0] == "trainer" and part in _trainer_args():
                node[part] = value if last else {}
            else:
                raise KeyError(f"no key {'.'.join(parts[: i + 1])!r} (while setting {dotted!r})")
        if last:
            node[part] = copy.deepcopy(value)
            return
        parent, node = node, node[part]


def _targets(dotted: str, pretrain: dict | None, downstream: dict[str, dict]) -> tuple[list[tuple[str, dict]], str]:
    """Route ``pretrain.k`` / ``downstream.<name|*>.k`` / ``*.k`` to ``[(config name, cfg)], k``."""
    head, _, rest = dotted.partition(".")
    if not rest:
        raise SpecError(f"key {dotted!r} must start with 'pretrain.', 'downstream.<name>.', 'downstream.*.' or '*.'")
    if head == "pretrain":
        return ([("pretrain", pretrain)] if pretrain is not None else []), rest
    if head == "downstream":
        name, _, key = rest.partition(".")
        if not key:
            raise SpecError(f"key {dotted!r}: write downstream.<name>.<key> or downstream.*.<key>")
        if name == "*":
            return list(downstream.items()), key
        if name not in downstream:
            raise SpecError(f"key {dotted!r} names downstream {name!r}; valid: {sorted(downstream)} or '*'")
        return [(name, downstream[name])], key
    if head == "*":
        both = ([("pretrain", pretrain)] if pretrain is not None else []) + list(downstream.items())
        return both, rest
    raise SpecError(f"key {dotted!r} must start with 'pretrain.', 'downstream.<name>.', 'downstream.*.' or '*.'")


# ------------------------------------------------------------------------------------- the runs
def split_axis(axis: str) -> tuple[str | None, str]:
    """``"r=pretrain.x.y"`` -> ``("r", "pretrain.x.y")``; ``"pretrain.x.y"`` -> ``(None, "pretrain.x.y")``."""
    col, eq, key = axis.partition("=")
    return (col.strip(), key.strip()) if eq else (None, axis)


def column_names(spec: SweepSpec) -> dict[str, str]:
    """Grid axis -> results-table column (``method``, last key component, or the bundle label)."""
    axes = list(dict.fromkeys(k for g in spec.grid for k in g))
    short = {}
    for axis in axes:
        col, key = split_axis(axis)
        short[axis] = col or ("method" if key == "pretrain" else key.rsplit(".", 1)[-1])
    counts: dict[str, int] = {}
    for col in short.values():
        counts[col] = counts.get(col, 0) + 1
    return {k: (c if counts[c] == 1 else k) for k, c in short.items()}


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:g}"
    return re.sub(r"[^A-Za-z0-9_.+-]+", "", str(v))[:24] or "x"


def run_slug(params: dict[str, Any], seed: int) -> str:
    """``method-moco_r-0.5_seed-0``: the parameters that apply, then the seed."""
    parts = [f"{re.sub(r'[^A-Za-z0-9_]+', '', k)}-{_fmt(v)}" for k, v in params.items() if v is not None]
    return "_".join(parts + [f"seed-{seed}"])


def plan_runs(spec: SweepSpec) -> list[RunPlan]:
    """Every run of the spec, each config built and checked (no run starts before all pass).

    Raises:
        SpecError: a key that a config lacks (naming the key and the config file), a bad route.
        FileNotFoundError / ValueError: from reading a config.
    """
    configs = {p: load_config(p) for p in {*filter(None, spec.pretrain.values()), *(d.config for d in spec.downstream)}}
    cols = column_names(spec)
    default_method = next(iter(spec.pretrain))
    runs: dict[str, RunPlan] = {}
    for g in spec.grid:
        axes = list(g.items())
        value_lists = [list(v) if isinstance(v, dict) else v for _, v in axes]
        for combo in itertools.product(*value_lists):
            point = dict(zip([k for k, _ in axes], combo))
            for seed in spec.seeds:
                plan = _build_run(spec, configs, cols, point, seed, default_method)
                same = runs.get(plan.run_id)
                if same is not None and same.params != plan.params:  # slugs cut long values short
                    digest = hashlib.sha1(repr(sorted(plan.params.items())).encode()).hexdigest()[:6]
                    plan.run_id = f"{plan.run_id}-{digest}"
                runs.setdefault(plan.run_id, plan)
    return list(runs.values())


def _build_run(spec, configs, cols, point, seed, default_method) -> RunPlan:
    method = point.get("pretrain", default_method)
    pre_src = spec.pretrain[method]
    pretrain = copy.deepcopy(configs[pre_src]) if pre_src else None
    downstream = {d.name: copy.deepcopy(configs[d.config]) for d in spec.downstream}
    sources = {"pretrain": pre_src, **{d.name: d.config for d in spec.downstream}}

    def apply(dotted: str, value: Any, origin: str) -> bool:
        targets, key = _targets(dotted, pretrain, downstream)
        for name, cfg in targets:
            try:
                set_key(cfg, key, value)
            except KeyError as e:
                raise SpecError(
                    f"spec {spec.path}: {origin} key {dotted!r} does not exist in config {sources[name]} "
                    f"({e.args[0]})"
                ) from None
        return bool(targets)

    params: dict[str, Any] = {"method": method}
    for dotted, value in spec.overrides.items():
        apply(dotted, value, "overrides")
    for dotted, value in spec.pretrain_overrides.get(method, {}).items():
        apply(f"pretrain.{dotted}", value, f"pretrain {method!r} overrides")
    for d in spec.downstream:
        for dotted, value in d.overrides.items():
            apply(f"downstream.{d.name}.{dotted}", value, f"downstream {d.name!r} overrides")
    for axis, value in point.items():
        if axis == "pretrain":
            continue
        bundles = next(g[axis] for g in spec.grid if axis in g)
        if isinstance(bundles, dict):  # a labelled bundle of keys
            used = [apply(k, v, f"grid {axis}={value}") for k, v in bundles[value].items()]
            params[cols[axis]] = value if any(used) else None
        else:
            params[cols[axis]] = value if apply(split_axis(axis)[1], value, "grid") else None
    for dotted, offset in spec.seed_keys.items():
        apply(dotted, seed + offset, "seed_keys")
    for name, cfg in [("pretrain", pretrain), *downstream.items()]:
        if cfg is not None:
            cfg["seed_everything"] = seed
            try:  # no run starts with a class path run_config would refuse (os.system, ...)
                check_classes(cfg)
            except ValueError as e:
                raise SpecError(f"spec {spec.path}: config {sources[name]}: {e}") from None
    return RunPlan(run_slug(params, seed), seed, params, pretrain, list(downstream.items()), sources)
