"""tools/call_footprint.py, the measure of issue 16's line goal: which package functions a run calls."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import yaml

import noisyseg

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(noisyseg.__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("call_footprint", ROOT / "tools" / "call_footprint.py")
tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tool)


def test_count_lines_counts_a_nested_function_inside_a_called_parent_once() -> None:
    assert tool.count_lines({"outer": (10, 29), "outer.<locals>.inner": (12, 15), "other": (40, 41)}) == 22


def test_the_hook_records_called_functions_not_module_or_class_bodies(tmp_path) -> None:
    hook, seen = tool.recorder(tmp_path)
    source = "class A:\n    def f(self):\n        return [i for i in range(2)]\n\n\ndef g():\n    pass\n\n\nA().f()\n"
    inside, outside = compile(source, str(tmp_path / "m.py"), "exec"), compile(source, "/elsewhere/m.py", "exec")
    sys.setprofile(hook)
    try:
        exec(inside, {})
        exec(outside, {})
    finally:
        sys.setprofile(None)
    assert sorted(c.co_qualname for c in seen) == ["A.f", "A.f.<locals>.<listcomp>"]  # g never ran


def test_footprint_records_called_functions_and_the_switch_decides_the_matmul_route(tmp_path, one_thread) -> None:
    cfg = {
        "seed_everything": 0,
        "trainer": {"max_epochs": 1, "precision": "bf16-mixed", "logger": False, "enable_progress_bar": False,
                    "default_root_dir": str(tmp_path / "run")},
        "model": {"class_path": "noisyseg.tasks.MoCoTask", "init_args": {"queue_size": 8}},
        "data": {"class_path": "noisyseg.data.DataModule", "init_args": {
            "batch_size": 4, "drop_last": True,
            "train": {"class_path": "noisyseg.data.VTSPairs", "init_args": {"split": "train", "length": 8, "size": 32}}}},
    }
    path = tmp_path / "moco.yaml"
    path.write_text(yaml.safe_dump(cfg))
    for mode, matmul in (("on", True), ("off", False)):
        switch = f'trainer.callbacks=[{{class_path: noisyseg.runtime.Acceleration, init_args: {{mode: "{mode}"}}}}]'
        calls = tool.footprint(["fit", "--config", str(path), "--trainer.fast_dev_run", "true", f"--{switch}"], PACKAGE)
        assert set(calls) <= {str(p) for p in PACKAGE.rglob("*.py")}  # package files only
        assert "MoCoTask.training_step" in calls[str(PACKAGE / "tasks" / "moco.py")]
        assert "InfoNCELoss.forward" in calls[str(PACKAGE / "losses" / "infonce.py")]
        # 32 px: layer 4 maps are 1x1, so "on" takes the matmul route in forward and backward
        runtime = calls[str(PACKAGE / "runtime.py")]
        assert ("_MatmulConv.forward" in runtime and "_MatmulConv.backward" in runtime) is matmul, mode
        first, last = calls[str(PACKAGE / "tasks" / "moco.py")]["MoCoTask.training_step"]
        assert 0 < first < last
