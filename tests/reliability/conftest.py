"""Shared helpers of the reliability tests: tiny configs run through the real CLI in-process.

``bad_datasets`` (beside this file) is put on ``sys.path`` so that YAML configs can name its
datasets by ``class_path``, exactly as a user's own dataset module would be named.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))


def vts(split: str = "train", length: int = 8, size: int = 32, **kw) -> dict:
    return {"class_path": "noisyseg.data.VTSSegmentation",
            "init_args": {"split": split, "length": length, "size": size, **kw}}


def tiny_config(root: Path, train: dict | None = None, model: dict | None = None, *, task: str = "SegmentationTask",
                max_steps: int = 2, every: int | None = None, test: dict | None = None, batch_size: int = 4,
                **trainer) -> dict:
    """A SegmentationTask (FCN, ResNet-18) config on 32 px VTS, fp32, run dir ``root``."""
    callbacks = []
    if every:
        callbacks = [{"class_path": "noisyseg.runfiles.RunCheckpoint", "init_args": {"every_n_train_steps": every}}]
    data = {"batch_size": batch_size, "train": train or vts()}
    if test:
        data["test"] = test
    return {
        "seed_everything": 0,
        "trainer": {"max_steps": max_steps, "max_epochs": 1000, "default_root_dir": str(root),
                    "enable_progress_bar": False, "logger": False, "precision": "32-true",
                    "limit_val_batches": 0, "num_sanity_val_steps": 0, "enable_model_summary": False,
                    **({"callbacks": callbacks} if callbacks else {}), **trainer},
        "model": {"class_path": f"noisyseg.tasks.{task}",
                  "init_args": {"decoder": "fcn", "num_classes": 2, "augment": False, **(model or {})}},
        "data": {"class_path": "noisyseg.data.DataModule", "init_args": data},
    }


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture
def run_cli(capsys):
    """``run_cli(args) -> (exit code, stderr)`` through :func:`noisyseg.cli.main`, in-process."""
    from noisyseg.cli import main

    def run(args: list[str]) -> tuple[int, str]:
        capsys.readouterr()
        code = main([str(a) for a in args])
        return code, capsys.readouterr().err

    return run


def subprocess_env() -> dict:
    """Environment for ``python -m noisyseg`` children: the helpers importable, 1-2 threads."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(ROOT / "src"), env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "2")
    return env
