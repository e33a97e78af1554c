"""Configs as plain data: YAML files of ``class_path`` / ``init_args`` nodes, dotted keys.

The one place that reads configs and builds objects from them, shared by the in-process runner,
the sweeps and ``noisyseg data preview`` (LightningCLI parses the same files for ``noisyseg fit``).
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Any

import yaml


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML config.

    Raises:
        FileNotFoundError: naming the missing file.
        ValueError: when the file is not a YAML mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        cfg = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"config file {path} is not valid YAML: {e}") from e
    if not isinstance(cfg, dict):
        raise ValueError(f"config file {path} must hold a mapping, got {type(cfg).__name__}")
    return cfg


def get_by_path(cfg: dict, dotted: str) -> Any:
    """``cfg["a"]["b"]`` for ``"a.b"``; raises KeyError naming the first missing key."""
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(f"config has no key {dotted!r} (missing {part!r})")
        node = node[part]
    return node


def set_by_path(cfg: dict, dotted: str, value: Any, create: bool = False) -> None:
    """Set ``cfg["a"]["b"] = value`` for ``"a.b"``.

    Raises:
        KeyError: naming the key when it does not exist and ``create`` is False (a typo in a sweep
            spec must not silently add an unused key).
    """
    parts = dotted.split(".")
    node = cfg
    for i, part in enumerate(parts[:-1]):
        if part not in node or not isinstance(node[part], dict):
            if not create:
                raise KeyError(f"config has no key {'.'.join(parts[: i + 1])!r} (while setting {dotted!r})")
            node[part] = {}
        node = node[part]
    if parts[-1] not in node and not create:
        raise KeyError(f"config has no key {dotted!r}")
    node[parts[-1]] = value


def import_class(class_path: str):
    """Import ``package.module.Class``; a package that does not re-export the name is searched.

    Raises:
        ValueError: naming the class path when it cannot be imported.
    """
    if not isinstance(class_path, str) or "." not in class_path:
        raise ValueError(f"class_path {class_path!r} is not a dotted 'module.Class' path")
    module, _, name = class_path.rpartition(".")
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise ValueError(f"cannot import module {module!r} of class_path {class_path!r}: {e}") from e
    if hasattr(mod, name):
        return getattr(mod, name)
    for info in pkgutil.iter_modules(getattr(mod, "__path__", [])):  # package without the re-export
        sub = importlib.import_module(f"{module}.{info.name}")
        if hasattr(sub, name):
            return getattr(sub, name)
    raise ValueError(f"class_path {class_path!r}: module {module!r} has no {name!r}")


def instantiate(node: Any) -> Any:
    """Build objects from ``{class_path, init_args}`` nodes, recursively (as LightningCLI does)."""
    if isinstance(node, dict) and "class_path" in node:
        cls = import_class(node["class_path"])
        kwargs = {k: instantiate(v) for k, v in (node.get("init_args") or {}).items()}
        try:
            return cls(**kwargs)
        except TypeError as e:
            raise ValueError(f"{node['class_path']}: {e}") from e
    if isinstance(node, dict):
        return {k: instantiate(v) for k, v in node.items()}
    if isinstance(node, list):
        return [instantiate(v) for v in node]
    return node
