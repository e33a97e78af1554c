"""Import: foreign ResNet state dicts on disk -> noisyseg encoder weights, band adaptation, refusals."""

from __future__ import annotations

import pickle

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

from noisyseg.interop import adapt_first_conv, encoder_file_from_state_dict, import_state_dict, main
from noisyseg.models.networks import build_encoder
from noisyseg.runfiles import EncoderFileError, read_encoder


def _timm_weights(arch: str = "resnet18", bands: int = 3, classes: int = 10) -> dict[str, torch.Tensor]:
    """A timm classifier's state dict with non-default values everywhere (fc included)."""
    torch.manual_seed(1)
    model = timm.create_model(arch, pretrained=False, in_chans=bands, num_classes=classes)
    return {k: (torch.randn_like(v) if v.is_floating_point() else v + 3) for k, v in model.state_dict().items()}


def _assert_encoder_equals(state: dict[str, torch.Tensor], source: dict[str, torch.Tensor], skip=("conv1.weight",)):
    for k, v in state.items():
        if k not in skip:
            assert torch.equal(v, source[k]), k


def test_timm_safetensors_with_classifier(tmp_path):
    src = _timm_weights()
    save_file(src, str(tmp_path / "timm.safetensors"), metadata={"origin": "hub"})
    state, meta = import_state_dict(tmp_path / "timm.safetensors", "resnet18", 3, fmt="timm")
    assert not any(k.startswith("fc.") for k in state)
    _assert_encoder_equals(state, src, skip=())
    build_encoder("resnet18", 3).load_state_dict(state, strict=True)
    assert meta == {
        "kind": "timm", "path": str((tmp_path / "timm.safetensors").resolve()), "prefix": "",
        "adapted_first_conv": False, "original_in_channels": 3, "file_metadata": {"origin": "hub"},
    }


@pytest.mark.parametrize(
    "name,wrap,fmt,prefix",
    [
        # torchvision's own save: bare state dict, fc included, half precision, no num_batches_tracked
        ("tv.pth", lambda sd: {k: v.half() for k, v in sd.items() if "num_batches" not in k}, "torchvision", ""),
        ("ddp.pt", lambda sd: {f"module.{k}": v for k, v in sd.items()}, "auto", "module."),
        # torchgeo MoCo/SimCLR Lightning checkpoint: timm backbone under model.backbone., extra entries
        (
            "torchgeo.ckpt",
            lambda sd: {
                "state_dict": {**{f"model.backbone.{k}": v for k, v in sd.items()},
                               "model.projection_head.0.weight": torch.ones(4, 4)},
                "epoch": 3, "global_step": 100, "hyper_parameters": {"lr": 0.1, "backbone": "resnet18"},
            },
            "torchgeo", "model.backbone.",
        ),
        # a noisyseg/torchgeo segmentation checkpoint: encoder twice (encoder., model.encoder.) + decoder
        (
            "seg.ckpt",
            lambda sd: {"state_dict": {**{f"encoder.{k}": v for k, v in sd.items()},
                                       **{f"model.encoder.{k}": v for k, v in sd.items()},
                                       "model.decoder.blocks.0.conv1.0.weight": torch.ones(2, 2)}},
            "auto", "encoder.",
        ),
    ],
    ids=["torchvision-half", "ddp", "torchgeo-lightning", "segmentation-checkpoint"],
)
def test_prefixes_and_nesting(tmp_path, name, wrap, fmt, prefix):
    torch.manual_seed(2)
    tv = torchvision.models.resnet18(weights=None)
    src = {k: (torch.randn_like(v) if v.is_floating_point() else v + 5) for k, v in tv.state_dict().items()}
    torch.save(wrap(src), tmp_path / name)
    state, meta = import_state_dict(tmp_path / name, "resnet18", 3, fmt=fmt)
    assert meta["prefix"] == prefix and meta["kind"] == fmt
    build_encoder("resnet18", 3).load_state_dict(state, strict=True)
    for k, v in state.items():
        if name == "tv.pth":  # kept in half precision (the encoder casts on load); counters filled with 0
            want = torch.tensor(0) if k.endswith("num_batches_tracked") else src[k].half()
        else:
            want = src[k]
        assert torch.equal(v, want), k


def test_into_segmentation_task_with_band_adaptation(tmp_path):
    from noisyseg.tasks.segmentation import SegmentationTask

    src = _timm_weights(bands=3)
    save_file(src, str(tmp_path / "timm.safetensors"))
    out = encoder_file_from_state_dict(tmp_path / "timm.safetensors", "resnet18", 4, tmp_path / "enc.safetensors")
    _, meta = read_encoder(out)
    assert meta["arch"] == "resnet18" and meta["in_channels"] == 4
    assert meta["source"]["kind"] == "auto" and meta["source"]["adapted_first_conv"] is True
    assert meta["source"]["original_in_channels"] == 3
    for decoder in ("deeplabv3plus", "fcn"):
        task = SegmentationTask(decoder=decoder, arch="resnet18", in_channels=4, encoder_path=str(out))
        got = task.model.encoder.state_dict()
        _assert_encoder_equals(got, src)
        torch.testing.assert_close(got["conv1.weight"], adapt_first_conv(src["conv1.weight"], 4), rtol=0, atol=0)


def test_first_conv_rule_numerically():
    torch.manual_seed(3)
    w3 = torch.randn(8, 3, 7, 7)
    # 3 -> 4: channels repeat cyclically (0, 1, 2, 0), scaled by 3/4
    torch.testing.assert_close(adapt_first_conv(w3, 4), torch.cat([w3, w3[:, :1]], 1) * (3 / 4))
    # 3 -> 1: sum over the input channels
    torch.testing.assert_close(adapt_first_conv(w3, 1), w3[:, 0:1] + w3[:, 1:2] + w3[:, 2:3])
    # 13 -> 4: the first 4 channels, scaled by 13/4
    w13 = torch.randn(8, 13, 7, 7)
    torch.testing.assert_close(adapt_first_conv(w13, 4), w13[:, :4] * (13 / 4))
    # 3 -> 3: unchanged, and never the same tensor (callers may modify the result)
    same = adapt_first_conv(w3, 3)
    assert torch.equal(same, w3) and same.data_ptr() != w3.data_ptr()
    # exact for equal bands when C == 1 or C is a multiple of Cin (3 -> 6: each channel twice, x 1/2)
    x = torch.randn(1, 1, 7, 7)
    for c in (1, 6):
        before = torch.nn.functional.conv2d(x.expand(1, 3, 7, 7), w3)  # 1 x 8 x 1 x 1
        after = torch.nn.functional.conv2d(x.expand(1, c, 7, 7), adapt_first_conv(w3, c))
        torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match=r"in_channels=0 must be >= 1"):
        adapt_first_conv(w3, 0)
    with pytest.raises(ValueError, match=r"got shape \(8, 3\)"):
        adapt_first_conv(torch.zeros(8, 3), 4)


def test_thirteen_band_torchgeo_weights_to_four(tmp_path):
    src = _timm_weights(bands=13)
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in src.items()}}, tmp_path / "s2.pth")
    state, meta = import_state_dict(tmp_path / "s2.pth", "resnet18", 4, fmt="torchgeo")
    assert meta["adapted_first_conv"] and meta["original_in_channels"] == 13 and meta["prefix"] == "backbone."
    torch.testing.assert_close(state["conv1.weight"], src["conv1.weight"][:, :4] * (13 / 4))
    kept, _ = import_state_dict(tmp_path / "s2.pth", "resnet18", None)  # None keeps the file's 13 bands
    assert torch.equal(kept["conv1.weight"], src["conv1.weight"])


class _Evil:
    """Unpickling this would create the marker file: a stand-in for arbitrary code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("how", ["torch.save", "pickle.dump"])
def test_crafted_pickle_is_refused_without_running(tmp_path, how):
    marker, path = tmp_path / "ran.txt", tmp_path / "evil.pt"
    if how == "torch.save":  # a checkpoint with real tensors and a payload beside them
        torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "x": _Evil(marker)}, path)
    else:  # a bare pickle (plain pickle would store tensors via another global, so none here)
        path.write_bytes(pickle.dumps({"x": _Evil(marker)}, protocol=2))
    with pytest.raises(EncoderFileError, match=r"refused to load .*evil\.pt: it holds objects other than tensors"):
        import_state_dict(path, "resnet18", 3)
    with pytest.raises(EncoderFileError, match=r"\(WeightsUnpickler error: Unsupported global: GLOBAL .*exec\)"):
        import_state_dict(path, "resnet18", 3)
    assert not marker.exists()


def test_bad_inputs_name_the_value(tmp_path):
    with pytest.raises(EncoderFileError, match=r"state dict file .*missing\.pt does not exist"):
        import_state_dict(tmp_path / "missing.pt", "resnet18", 3)
    save_file(_timm_weights(), str(tmp_path / "r18.safetensors"))
    with pytest.raises(ValueError, match=r"unknown encoder architecture 'resnet9'; valid: \['resnet101'"):
        import_state_dict(tmp_path / "r18.safetensors", "resnet9", 3)
    with pytest.raises(ValueError, match=r"unknown state dict format 'keras'; valid: \['auto'"):
        import_state_dict(tmp_path / "r18.safetensors", "resnet18", 3, fmt="keras")
    with pytest.raises(EncoderFileError, match=r"r18\.safetensors holds a resnet18 state dict, not resnet34"):
        import_state_dict(tmp_path / "r18.safetensors", "resnet34", 3)
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), tmp_path / "r50.pth")
    with pytest.raises(EncoderFileError, match=r"r50\.pth holds a resnet50 state dict, not resnet18"):
        import_state_dict(tmp_path / "r50.pth", "resnet18", 3)
    torch.save({"patch_embed.proj.weight": torch.zeros(2, 3, 16, 16)}, tmp_path / "vit.pt")
    with pytest.raises(EncoderFileError, match=r"vit\.pt holds no supported ResNet .*, not resnet18"):
        import_state_dict(tmp_path / "vit.pt", "resnet18", 3)
    (tmp_path / "w.txt").write_text("hello")
    with pytest.raises(EncoderFileError, match=r"w\.txt must end in \.safetensors or one of"):
        import_state_dict(tmp_path / "w.txt", "resnet18", 3)
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(EncoderFileError, match=r"junk\.safetensors is not a readable safetensors file"):
        import_state_dict(tmp_path / "junk.safetensors", "resnet18", 3)
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(EncoderFileError, match=r"list\.pt holds a list, not a dict of tensors"):
        import_state_dict(tmp_path / "list.pt", "resnet18", 3)
    with pytest.raises(ValueError, match=r"enc\.pt must end in \.safetensors"):
        encoder_file_from_state_dict(tmp_path / "r18.safetensors", "resnet18", 3, tmp_path / "enc.pt")


def test_cli_import(tmp_path, capsys):
    src = _timm_weights()
    torch.save(src, tmp_path / "w.pth")
    out = tmp_path / "enc.safetensors"
    argv = ["--import", str(tmp_path / "w.pth"), "--arch", "resnet18", "--in-channels", "5", "--out", str(out)]
    assert main(argv) == 0
    state, meta = read_encoder(out)
    assert meta["in_channels"] == 5 and meta["source"]["path"] == str((tmp_path / "w.pth").resolve())
    _assert_encoder_equals(state, src)
    assert main(["--import", str(tmp_path / "w.pth"), "--arch", "resnet34", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [err[0]] and err[0].startswith("noisyseg export: error: state dict file")
    assert "resnet18 state dict, not resnet34" in err[0]
    assert main(["--import", str(tmp_path / "w.pth"), "--out", str(out)]) == 2
    assert "--import needs --arch" in capsys.readouterr().err
