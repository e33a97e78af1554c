"""Encoder file: bit-exact round trip, loads into every decoder, clear errors on mismatch."""

import pytest
import torch

from noisyseg.models.networks import DECODERS, build_encoder, build_segmentation_model
from noisyseg.runfiles import EncoderFileError, load_encoder, read_encoder, save_encoder


def test_round_trip_bit_exact_and_metadata(tmp_path):
    enc = build_encoder("resnet18", 5)
    with torch.no_grad():
        enc.bn1.running_mean.add_(torch.randn(64))  # buffers too
    path = save_encoder(tmp_path / "e.safetensors", enc, "resnet18", {"mean": [0.1] * 5, "std": [1.0] * 5}, {"method": "x"})
    state, meta = read_encoder(path)
    assert meta["arch"] == "resnet18" and meta["in_channels"] == 5 and meta["trained"]["method"] == "x"
    for k, v in enc.state_dict().items():
        assert torch.equal(v, state[k]), k


@pytest.mark.parametrize("decoder", sorted(DECODERS))
def test_loads_into_every_decoder(tmp_path, decoder):
    enc = build_encoder("resnet18", 4)
    path = save_encoder(tmp_path / "e.safetensors", enc, "resnet18")
    model = build_segmentation_model(decoder, "resnet18", 4, 3)
    load_encoder(model.encoder, path, "resnet18")
    for k, v in enc.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[k], v)


def test_mismatch_errors_name_both_sides(tmp_path):
    path = save_encoder(tmp_path / "e.safetensors", build_encoder("resnet18", 3), "resnet18")
    with pytest.raises(EncoderFileError, match="3 input bands but the model takes 4"):
        load_encoder(build_encoder("resnet18", 4), path, "resnet18")
    with pytest.raises(EncoderFileError, match="holds a resnet18 encoder but the model is resnet34"):
        load_encoder(build_encoder("resnet34", 3), path, "resnet34")


def test_corrupt_or_missing_files(tmp_path):
    with pytest.raises(EncoderFileError, match="does not exist"):
        read_encoder(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00\x01garbage")
    with pytest.raises(EncoderFileError, match="not a readable safetensors"):
        read_encoder(bad)
    good = save_encoder(tmp_path / "g.safetensors", build_encoder("resnet18", 3), "resnet18")
    trunc = tmp_path / "t.safetensors"
    trunc.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(EncoderFileError, match=str(trunc.name)):
        read_encoder(trunc)


def test_unknown_names_list_valid():
    with pytest.raises(ValueError, match="valid: .*resnet18"):
        build_encoder("vit_b")
    with pytest.raises(ValueError, match="valid: .*unet"):
        build_segmentation_model("segformer")


def test_decoder_in_the_file_is_invisible_to_encoder_readers(tmp_path):
    from safetensors.torch import load_file

    from noisyseg.runfiles import read_decoder
    from noisyseg.interop import export_encoder, import_state_dict

    model = build_segmentation_model("unet", "resnet18", 3, 4)
    rest = {k: v for k, v in model.state_dict().items() if not k.startswith("encoder.")}
    head = {"type": "unet", "num_classes": 4, "class_names": None}
    path = save_encoder(tmp_path / "e.safetensors", model.encoder, "resnet18", decoder_state=rest, decoder_meta=head)
    assert read_decoder(save_encoder(tmp_path / "bare.safetensors", model.encoder, "resnet18")) is None
    state, meta = read_encoder(path)
    assert set(state) == set(model.encoder.state_dict())
    assert meta["decoder"] == {**head, "modules": ["decoder", "segmentation_head"]}
    dec, dec_meta = read_decoder(path)
    assert set(dec) == set(rest) and all(torch.equal(dec[k], v) for k, v in rest.items())
    # load_encoder (strict), export and import see the encoder only
    load_encoder(build_encoder("resnet18", 3), path, "resnet18")
    exported = load_file(str(export_encoder(path, "smp", tmp_path / "x.safetensors")))
    assert set(exported) == set(model.encoder.state_dict())
    imported, _ = import_state_dict(path, "resnet18")
    assert set(imported) == set(model.encoder.state_dict())
    assert all(torch.equal(imported[k], v) for k, v in model.encoder.state_dict().items())
    with pytest.raises(ValueError, match="decoder_state and decoder_meta together"):
        save_encoder(tmp_path / "y.safetensors", model.encoder, "resnet18", decoder_state=rest)
    with pytest.raises(ValueError, match=r"decoder keys under \['conv1'\] would mix with the encoder's"):
        save_encoder(tmp_path / "z.safetensors", model.encoder, "resnet18",
                     decoder_state={"conv1.extra": torch.zeros(1)}, decoder_meta=head)
