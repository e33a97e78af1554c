"""Export: an encoder file loads strictly into smp, timm and torchvision with every tensor equal."""

from __future__ import annotations

import json

import pytest
import segmentation_models_pytorch as smp
import timm
import torch
import torchvision
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from noisyseg.interop import META_KEY, export_encoder, main
from noisyseg.models.networks import build_encoder, pooled_features
from noisyseg.runfiles import EncoderFileError, save_encoder


def _trained_like(arch: str, bands: int, seed: int = 0) -> nn.Module:
    """An encoder whose every tensor (BN statistics included) differs from a fresh initialisation."""
    torch.manual_seed(seed)
    enc = build_encoder(arch, bands)
    with torch.no_grad():
        for k, v in enc.state_dict().items():
            if v.is_floating_point():
                v.copy_(torch.rand_like(v) + 0.5 if "running_var" in k else torch.randn_like(v) * 0.05)
            else:
                v.fill_(7)  # num_batches_tracked
    return enc.eval()


def _encoder_file(tmp_path, arch="resnet18", bands=3):
    enc = _trained_like(arch, bands)
    path = save_encoder(tmp_path / f"{arch}_{bands}.safetensors", enc, arch, trained={"method": "test"})
    return path, enc


def _load(out):
    return load_file(str(out)) if str(out).endswith(".safetensors") else torch.load(out, weights_only=True)


def _torchvision(arch: str, bands: int) -> nn.Module:
    """The documented torchvision recipe: C-band conv1, fc = Identity."""
    model = getattr(torchvision.models, arch)(weights=None)
    if bands != 3:
        model.conv1 = nn.Conv2d(bands, 64, kernel_size=7, stride=2, padding=3, bias=False)
    model.fc = nn.Identity()
    return model


def _assert_equal(model: nn.Module, reference: nn.Module) -> None:
    got, want = model.state_dict(), reference.state_dict()
    assert set(got) == set(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k


@pytest.mark.parametrize("bands,suffix", [(3, ".safetensors"), (4, ".pt"), (5, ".pth")])
def test_export_loads_strictly_into_smp_timm_torchvision(tmp_path, bands, suffix):
    path, enc = _encoder_file(tmp_path, "resnet18", bands)
    x = torch.randn(2, bands, 64, 64)
    for to in ("smp", "timm", "torchvision"):
        state = _load(export_encoder(path, to, tmp_path / f"{to}{suffix}"))
        if to == "smp":
            for cls in (smp.Unet, smp.DeepLabV3Plus, smp.PSPNet):
                with torch.device("meta"):  # decoders are never run here: skip their init cost
                    model = cls(encoder_name="resnet18", encoder_weights=None, in_channels=bands)
                model.encoder.load_state_dict(state, strict=True, assign=True)  # strict keys and shapes
                _assert_equal(model.encoder, enc)
            continue
        if to == "timm":
            model = timm.create_model("resnet18", pretrained=False, in_chans=bands, num_classes=0)
        else:
            model = _torchvision("resnet18", bands)
        model.load_state_dict(state, strict=True)
        _assert_equal(model, enc)
        # same weights, same function: pooled stride-32 features agree with noisyseg's encoder
        with torch.no_grad():
            torch.testing.assert_close(model.eval()(x), pooled_features(enc, x), rtol=1e-5, atol=1e-5)


def _filled(arch: str, bands: int) -> nn.Module:
    """An encoder with a distinct constant in each tensor, without paying for random init."""
    with torch.device("meta"):
        enc = build_encoder(arch, bands)
    enc = enc.to_empty(device="cpu")
    with torch.no_grad():
        for i, v in enumerate(enc.state_dict().values()):
            v.fill_(i)
    return enc


def test_all_architectures_share_keys_across_targets(tmp_path):
    # models built on the meta device and loaded with assign=True: strict key *and* shape checks,
    # no initialisation cost (resnet101 three times would dominate the suite on 2 cores)
    for arch in ("resnet18", "resnet34", "resnet50", "resnet101"):
        enc = _filled(arch, 4)
        path = save_encoder(tmp_path / f"{arch}.safetensors", enc, arch)
        state = _load(export_encoder(path, "smp", tmp_path / f"{arch}_smp.safetensors"))
        with torch.device("meta"):
            models = (
                smp.Unet(encoder_name=arch, encoder_weights=None, in_channels=4).encoder,
                smp.DeepLabV3Plus(encoder_name=arch, encoder_weights=None, in_channels=4).encoder,
                smp.PSPNet(encoder_name=arch, encoder_weights=None, in_channels=4).encoder,
                timm.create_model(arch, pretrained=False, in_chans=4, num_classes=0),
                _torchvision(arch, 4),
            )
        for model in models:
            model.load_state_dict(state, strict=True, assign=True)
            # assign=True: the model now holds the file's tensors themselves
            assert all(v is state[k] or v.data_ptr() == state[k].data_ptr() for k, v in model.state_dict().items())
        assert set(state) == set(enc.state_dict())
        assert all(torch.equal(state[k], v) for k, v in enc.state_dict().items())


def test_export_records_provenance(tmp_path):
    path, _ = _encoder_file(tmp_path, "resnet18", 4)
    out = export_encoder(path, "timm", tmp_path / "t.safetensors")
    with safe_open(str(out), framework="pt") as f:
        info = json.loads(f.metadata()[META_KEY])
    assert info["target"] == "timm" and info["arch"] == "resnet18" and info["in_channels"] == 4
    assert info["from"] == str(path.resolve()) and info["trained"] == {"method": "test"}
    export_encoder(path, "torchvision", tmp_path / "tv.pt")
    sidecar = json.loads((tmp_path / "tv.pt.json").read_text())
    assert sidecar["target"] == "torchvision" and "nn.Identity" in sidecar["classifier"]


def test_export_errors_name_the_value(tmp_path):
    path, _ = _encoder_file(tmp_path)
    with pytest.raises(ValueError, match=r"unknown export target 'onnx'; valid: \['smp', 'timm', 'torchvision'\]"):
        export_encoder(path, "onnx", tmp_path / "x.pt")
    with pytest.raises(ValueError, match=r"x\.onnx must end in \.safetensors, \.pt or \.pth"):
        export_encoder(path, "smp", tmp_path / "x.onnx")
    with pytest.raises(EncoderFileError, match=r"nope\.safetensors does not exist"):
        export_encoder(tmp_path / "nope.safetensors", "smp", tmp_path / "x.pt")
    save_file({"a": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(EncoderFileError, match=r"plain\.safetensors is a safetensors file without noisyseg metadata"):
        export_encoder(tmp_path / "plain.safetensors", "smp", tmp_path / "x.pt")


def test_cli_export(tmp_path, capsys):
    path, enc = _encoder_file(tmp_path)
    out = tmp_path / "tv.safetensors"
    assert main([str(path), "--to", "torchvision", "--out", str(out)]) == 0
    model = _torchvision("resnet18", 3)
    model.load_state_dict(load_file(str(out)), strict=True)
    _assert_equal(model, enc)
    assert main([str(path), "--to", "keras", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("noisyseg export: error:") and "'keras'" in err[0]
    assert main([str(tmp_path / "missing.safetensors"), "--to", "smp", "--out", str(out)]) == 2
    assert "missing.safetensors does not exist" in capsys.readouterr().err
    assert main([str(path), "--out", str(out)]) == 2
    assert "needs --to" in capsys.readouterr().err
