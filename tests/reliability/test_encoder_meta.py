"""Encoder files whose metadata is wrong: one EncoderFileError (a ValueError) naming the file and
the field, from :func:`read_encoder` / :func:`load_encoder`, and exit 2 from ``noisyseg fit``
with that one line (the CLI unwraps jsonargparse's Union error to the task's own message)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import tiny_config, write_config
from noisyseg.models.networks import build_encoder
from noisyseg.runfiles import EncoderFileError, load_encoder, read_encoder, save_encoder

GOOD = {"mean": [0.1, 0.2, 0.3], "std": [1.0, 2.0, 3.0]}


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return build_encoder("resnet18", 3)


def with_meta(path, encoder, meta) -> str:
    """An encoder file of ``encoder`` whose metadata header is replaced by ``meta``."""
    save_encoder(path, encoder, "resnet18", GOOD)
    save_file(load_file(str(path)), str(path), metadata={"noisyseg": json.dumps(meta)})
    return str(path)


def base(**change):
    meta = {"format": "noisyseg-encoder", "version": 1, "arch": "resnet18", "in_channels": 3,
            "normalization": GOOD, "trained": {}, "source": {"kind": "random"}}
    return {k: v for k, v in {**meta, **change}.items() if v != "DROP"}


BAD = {
    "a list": ([1, 2, 3], "a JSON list, expected an object"),
    "no arch": (base(arch="DROP"), "'arch' is None"),
    "no in_channels": (base(in_channels="DROP"), "'in_channels' is None"),
    "in_channels a string": (base(in_channels="3"), "'in_channels' is '3'"),
    "normalization of 4 bands": (base(normalization={"mean": [0] * 4, "std": [1] * 4}),
                                 "normalization mean has 4 values but in_channels is 3"),
    "std 0": (base(normalization={"mean": [0, 0, 0], "std": [1, 0, 1]}), "holds values <= 0"),
    "std negative": (base(normalization={"mean": [0, 0, 0], "std": [1, -2, 1]}), "holds values <= 0"),
    "NaN mean": (base(normalization={"mean": [0, float("nan"), 0], "std": [1, 1, 1]}), "list of finite numbers"),
    "normalization a list": (base(normalization=[0, 1]), "expected null or"),
    "normalization without std": (base(normalization={"mean": [0, 0, 0]}), "expected null or"),
    "trained a list": (base(trained=[1]), "'trained' is [1]; expected an object"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_metadata_is_one_error_naming_the_file(tmp_path, encoder, case):
    meta, needle = BAD[case]
    path = with_meta(tmp_path / "enc.safetensors", encoder, meta)
    for read in (lambda: read_encoder(path), lambda: load_encoder(build_encoder("resnet18", 3), path, "resnet18")):
        with pytest.raises(EncoderFileError) as err:
            read()
        assert isinstance(err.value, ValueError)
        assert f"encoder file {path} has invalid metadata: " in str(err.value) and needle in str(err.value), err.value


@pytest.mark.parametrize("norm", [GOOD, None])
def test_good_metadata_loads(tmp_path, encoder, norm):
    path = with_meta(tmp_path / "enc.safetensors", encoder, base(normalization=norm))
    target = build_encoder("resnet18", 3)
    assert load_encoder(target, path, "resnet18")["normalization"] == norm
    assert torch.equal(target.conv1.weight, encoder.conv1.weight)


def test_fit_with_bad_metadata_exits_2_naming_the_file(run_cli, tmp_path, encoder):
    path = with_meta(tmp_path / "enc.safetensors", encoder, base(normalization={"mean": [0] * 4, "std": [1] * 4}))
    cfg = write_config(tmp_path / "cfg.yaml", tiny_config(tmp_path / "run", model={"encoder_path": path}))
    code, err = run_cli(["fit", "--config", cfg])
    assert code == 2 and "Traceback" not in err and "Union" not in err, err
    assert f"encoder file {path} has invalid metadata: normalization mean has 4 values" in err, err
