"""Configs that name a function or a foreign class by ``class_path`` are refused before anything runs.

``noisyseg fit`` goes through LightningCLI, whose type checks refuse ``class_path: os.system``.
``noisyseg data preview`` builds datasets with :func:`noisyseg.config.instantiate`, and
``noisyseg sweep`` (its study configs) and :func:`run_config` check every class path with
:func:`noisyseg.config.check_classes`, nested ones too, before calling anything. Each case puts
the class path where a dataset, a task or a callback belongs, with arguments that would create a
marker file if it were called.
"""

from __future__ import annotations

import sys

import pytest
import yaml

from conftest import tiny_config, vts, write_config
from noisyseg.cli import run_config
from noisyseg.config import check_class, instantiate


def evil_node(class_path: str, marker) -> dict:
    """A ``{class_path, init_args}`` node that creates ``marker`` if its class path is called."""
    args = {
        "os.system": {"command": f"touch {marker}"},
        "builtins.eval": {"source": f"open({str(marker)!r}, 'w')"},
        "subprocess.Popen": {"args": ["touch", str(marker)]},
    }[class_path]
    return {"class_path": class_path, "init_args": args}


EVIL = ["os.system", "builtins.eval", "subprocess.Popen"]


@pytest.mark.parametrize("class_path", EVIL)
def test_check_class_refuses_functions_and_foreign_classes(class_path):
    with pytest.raises(ValueError, match=rf"class_path '{class_path}' is refused"):
        check_class(class_path)


def test_check_class_accepts_the_allowed_kinds_and_judges_the_defining_module():
    import torch

    from noisyseg.data import VTSSegmentation

    assert check_class("noisyseg.data.VTSSegmentation") is VTSSegmentation
    assert check_class("torch.nn.Conv2d") is torch.nn.Conv2d  # an nn.Module from outside noisyseg
    with pytest.raises(ValueError, match="class pathlib.Path"):  # re-exported by a noisyseg module
        check_class("noisyseg.data.raster.Path")
    with pytest.raises(ValueError, match="function noisyseg.config.load_config"):  # noisyseg, not a class
        check_class("noisyseg.config.load_config")
    with pytest.raises(ValueError, match="not a subclass of LightningModule"):  # root narrowed by expected
        import lightning as L

        check_class("noisyseg.data.VTSSegmentation", (L.LightningModule,))


def test_instantiate_checks_nested_nodes_before_building_any(tmp_path, monkeypatch):
    built = []
    import noisyseg.data.vts as vts_mod

    real_init = vts_mod.VTSSegmentation.__init__
    monkeypatch.setattr(vts_mod.VTSSegmentation, "__init__",
                        lambda self, *a, **k: (built.append(1), real_init(self, *a, **k))[1])
    marker = tmp_path / "ran"
    node = {"class_path": "noisyseg.data.DataModule",
            "init_args": {"train": vts(), "val": evil_node("subprocess.Popen", marker)}}
    with pytest.raises(ValueError, match="'subprocess.Popen' is refused"):
        instantiate(node)
    assert built == [] and not marker.exists()  # the valid sibling was not built either


@pytest.mark.parametrize("class_path", EVIL)
@pytest.mark.parametrize("where", ["root", "nested"])
def test_preview_refuses(run_cli, tmp_path, class_path, where):
    marker = tmp_path / "ran"
    node = evil_node(class_path, marker)
    data = node if where == "root" else {"class_path": "noisyseg.data.DataModule", "init_args": {"train": node}}
    cfg = write_config(tmp_path / "data.yaml", {"data": data})
    code, err = run_cli(["data", "preview", "--config", cfg, "--out", tmp_path / "out"])
    assert code == 2, err
    assert f"class_path '{class_path}' is refused" in err and len(err.strip().splitlines()) == 1, err
    assert not marker.exists(), f"{class_path} was called"
    assert not (tmp_path / "out" / "summary.json").exists()


@pytest.mark.parametrize("class_path", EVIL)
@pytest.mark.parametrize("where", ["pretrain dataset", "downstream callback"])
def test_sweep_refuses_before_any_run(run_cli, tmp_path, class_path, where):
    marker = tmp_path / "ran"
    pre = tiny_config(tmp_path / "unused", task="SegmentationTask")
    down = tiny_config(tmp_path / "unused")
    if where == "pretrain dataset":
        pre["data"]["init_args"]["train"] = {"class_path": "noisyseg.data.NoisyLabels",
                                             "init_args": {"dataset": evil_node(class_path, marker)}}
    else:
        down["trainer"]["callbacks"] = [evil_node(class_path, marker)]
    spec = {"pretrain": {"pre": str(write_config(tmp_path / "pre.yaml", pre))},
            "downstream": [{"name": "down", "config": str(write_config(tmp_path / "down.yaml", down))}],
            "seeds": [0]}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    code, err = run_cli(["sweep", tmp_path / "spec.yaml", "--out", tmp_path / "study", "--no-report"])
    assert code == 2, err
    assert f"class_path '{class_path}' is refused" in err and len(err.strip().splitlines()) == 1, err
    bad = "pre.yaml" if where == "pretrain dataset" else "down.yaml"
    assert f"config {tmp_path / bad}:" in err, err
    assert not marker.exists(), f"{class_path} was called"
    assert not (tmp_path / "study").exists()  # refused at planning: no run folder, no sweep.yaml


@pytest.mark.parametrize("section", ["trainer", "model", "data"])
def test_run_config_refuses_before_building_the_trainer(tmp_path, monkeypatch, section):
    import noisyseg.cli as cli

    trainers = []
    monkeypatch.setattr(cli, "_start", lambda *a, **k: trainers.append(1))
    marker = tmp_path / "ran"
    cfg = tiny_config(tmp_path / "run")
    if section == "trainer":
        cfg["trainer"]["logger"] = evil_node("subprocess.Popen", marker)
    elif section == "model":
        cfg["model"] = evil_node("os.system", marker)
    else:
        cfg["data"]["init_args"]["train"] = evil_node("builtins.eval", marker)
    with pytest.raises(ValueError, match="is refused"):
        run_config(cfg, quiet=True)
    assert not marker.exists()
    assert trainers == []  # refused before the trainer (or anything else) was built
    assert not (tmp_path / "run" / "config.yaml").exists()  # nor written


def test_check_passes_a_user_dataset_class(tmp_path):
    """The check passes a user's own Dataset subclass (tests/reliability/bad_datasets.py)."""
    cfg = tiny_config(tmp_path / "run", train={"class_path": "bad_datasets.Broken",
                                               "init_args": {"kind": "ok"}})
    from noisyseg.config import check_classes

    check_classes(cfg["data"])  # no error
    assert "bad_datasets" in sys.modules
