"""The results record ``results.json`` is strict JSON: an undefined score (NaN) is written as ``null``.

Also: an in-process run frees its task and data module once the caller drops the record."""

from __future__ import annotations

import json
import math

from conftest import tiny_config
from noisyseg.cli import run_config


def strict_json(text: str) -> dict:
    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)  # Python's json would accept NaN / Infinity


def test_undefined_scores_are_null(tmp_path, one_thread):
    # a test set whose pixels are all ignore_index: no truth, no counted prediction -> IoU/F1 NaN
    empty = {"class_path": "bad_datasets.Broken", "init_args": {"kind": "empty", "length": 2, "size": 32}}
    cfg = tiny_config(tmp_path / "run", test=empty, batch_size=2)
    res = run_config(cfg, subcommand="test", quiet=True)
    assert math.isnan(res["test"]["miou"]) and math.isnan(res["test"]["iou/1"])  # the scores themselves
    scores = strict_json((tmp_path / "run" / "results.json").read_text())["test"]
    assert scores["miou"] is None and scores["iou/0"] is None and scores["f1/1"] is None
    assert scores["accuracy"] == 0.0  # finite scores are kept as numbers
    assert set(scores) == set(res["test"])


def test_an_in_process_run_leaves_nothing_alive(tmp_path, one_thread):
    # the demo and sweeps run many configs in one process: a finished run's task and data module
    # (and through the task its trainer) must be freed once the caller drops the results record
    import gc
    import weakref

    res = run_config(tiny_config(tmp_path / "run"), quiet=True)
    task, data = weakref.ref(res["model"]), weakref.ref(res["datamodule"])
    del res
    gc.collect()
    assert task() is None and data() is None
