"""The encoder file: the one artifact that passes from pretraining to fine-tuning.

A single ``.safetensors`` file: the encoder's state dict (smp/torchvision ResNet key names, no
prefix) and, in the safetensors header, a JSON document under the key ``noisyseg``::

    {"format": "noisyseg-encoder", "version": 1, "arch": "resnet18", "in_channels": 3,
     "normalization": {"mean": [...], "std": [...]},
     "trained": {"method": "supervised", "epochs": 5, "steps": 400, "seed": 0, ...},
     "source": {"kind": "random" | "noisyseg" | "timm" | "torchvision" | "torchgeo", ...},
     "decoder": {"type": "unet", "num_classes": 2, "class_names": null | [...],
                 "modules": ["decoder", "segmentation_head"]}}

``decoder`` is optional: a file written by a supervised segmentation run also holds the rest of
its network (decoder and segmentation head) under the model's own key names, whose first
dotted parts are listed in ``modules`` (smp: ``decoder.``/``segmentation_head.``; FCN:
``head.``). :func:`read_encoder` and everything built on it (:func:`load_encoder`, export) see
the encoder tensors only; :func:`read_decoder` returns the rest, for a full-network transfer.

Safetensors holds no code, so an encoder file from a stranger cannot run anything when loaded
(unlike a pickled checkpoint). Files are written atomically (:func:`~noisyseg.runfiles.atomic_write`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from noisyseg.runfiles import atomic_write

FORMAT = "noisyseg-encoder"
VERSION = 1


class EncoderFileError(ValueError):
    """An encoder file is missing, corrupt, or does not fit the model."""


def refused_global(err: Exception) -> str:
    """The one line of torch's many-line ``weights_only`` refusal that names the refused global."""
    lines = [ln.strip() for ln in str(err).splitlines() if "Unsupported" in ln or "GLOBAL" in ln]
    return lines[0].split(" was not an allowed")[0] if lines else type(err).__name__


def save_encoder(
    path: str | Path,
    encoder: nn.Module,
    arch: str,
    normalization: dict[str, Any] | None = None,
    trained: dict[str, Any] | None = None,
    source: dict[str, Any] | None = None,
    decoder_state: dict[str, torch.Tensor] | None = None,
    decoder_meta: dict[str, Any] | None = None,
) -> Path:
    """Write ``encoder``'s weights and metadata to ``path``.

    Args:
        path: output file (``.safetensors`` by convention).
        encoder: the encoder module (its ``state_dict`` keys are stored as they are).
        arch: architecture name, e.g. ``resnet18``.
        normalization: per-band ``mean``/``std`` the inputs were normalised with.
        trained: how the weights were trained (method, epochs, seed, dataset, ...).
        source: where the initial weights came from (defaults to random initialisation).
        decoder_state: the rest of a segmentation network (decoder + head), keyed by the model's
            own names (``decoder.blocks.0.conv1.0.weight``, ``segmentation_head.0.bias``, ...);
            ``None``: an encoder-only file.
        decoder_meta: with ``decoder_state``: ``{"type": decoder name, "num_classes": K,
            "class_names": [...] or None}``.

    Raises:
        ValueError: ``decoder_state`` without ``decoder_meta`` (or the reverse), or decoder keys
            whose first part is also an encoder key's.
    """
    state = {k: v.detach().to("cpu").contiguous() for k, v in encoder.state_dict().items()}
    decoder = None
    if (decoder_state is None) != (decoder_meta is None):
        raise ValueError("save_encoder takes decoder_state and decoder_meta together, or neither")
    if decoder_state is not None and decoder_meta is not None:
        modules = sorted({k.split(".", 1)[0] for k in decoder_state})
        clash = sorted(set(modules) & {k.split(".", 1)[0] for k in state})
        if clash:
            raise ValueError(f"decoder keys under {clash} would mix with the encoder's; rename the modules")
        state.update({k: v.detach().to("cpu").contiguous() for k, v in decoder_state.items()})
        decoder = {**decoder_meta, "modules": modules}
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "arch": arch,
        "in_channels": int(encoder.conv1.weight.shape[1]),
        "normalization": normalization,
        "trained": trained or {},
        "source": source or {"kind": "random"},
    }
    if decoder is not None:
        meta["decoder"] = decoder
    return atomic_write(path, lambda tmp: save_file(state, tmp, metadata={"noisyseg": json.dumps(meta)}))


def split_state(
    state: dict[str, torch.Tensor], meta: dict[str, Any]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split an encoder file's tensors into ``(encoder, decoder)`` by ``meta["decoder"]["modules"]``.

    Raises:
        EncoderFileError: when ``meta["decoder"]`` is present but not a dict with a list of modules.
    """
    dec = meta.get("decoder")
    if dec is None:
        return state, {}
    if not isinstance(dec, dict) or not isinstance(dec.get("modules"), list):
        raise EncoderFileError(f"encoder file metadata 'decoder' must be a dict with a 'modules' list, got {dec!r}")
    modules = set(dec["modules"])
    decoder = {k: v for k, v in state.items() if k.split(".", 1)[0] in modules}
    return {k: v for k, v in state.items() if k not in decoder}, decoder


def read_encoder(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read an encoder file.

    Returns:
        ``(state_dict, metadata)``: the encoder's tensors only (a stored decoder is left out, see
        :func:`read_decoder`).

    Raises:
        EncoderFileError: when the file is missing, not safetensors, has no noisyseg metadata, or
            metadata that :func:`metadata_problem` finds wrong (all naming the file).
    """
    state, meta = _read_file(path)
    return split_state(state, meta)[0], meta


def read_decoder(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The decoder + head tensors and their metadata stored in an encoder file, if any.

    Returns:
        ``(decoder_state, meta["decoder"])`` with the model's own key names, or ``None`` for an
        encoder-only file.

    Raises:
        EncoderFileError: as :func:`read_encoder`.
    """
    state, meta = _read_file(path)
    if meta.get("decoder") is None:
        return None
    return split_state(state, meta)[1], meta["decoder"]


def _read_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every tensor of an encoder file and its metadata (checked format)."""
    path = Path(path)
    if not path.is_file():
        raise EncoderFileError(f"encoder file {path} does not exist")
    try:
        state = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise EncoderFileError(f"encoder file {path} is not a readable safetensors file ({e})") from e
    if "noisyseg" not in header:
        raise EncoderFileError(
            f"{path} is a safetensors file without noisyseg metadata; import foreign weights with "
            "`noisyseg.interop.import_state_dict` instead"
        )
    try:
        meta = json.loads(header["noisyseg"])
    except json.JSONDecodeError as e:
        raise EncoderFileError(f"encoder file {path} has corrupt metadata JSON ({e})") from e
    if not isinstance(meta, dict):
        raise EncoderFileError(f"encoder file {path} has invalid metadata: a JSON {type(meta).__name__}, "
                               "expected an object")
    if meta.get("format") != FORMAT:
        raise EncoderFileError(f"{path} has format {meta.get('format')!r}, expected {FORMAT!r}")
    problem = metadata_problem(meta)
    if problem:
        raise EncoderFileError(f"encoder file {path} has invalid metadata: {problem}")
    return state, meta


def metadata_problem(meta: dict[str, Any]) -> str | None:
    """What is wrong with an encoder file's metadata object, or None.

    Checked: ``arch`` a non-empty string; ``in_channels`` a positive integer; ``normalization``
    null or ``{"mean": [...], "std": [...]}`` with ``in_channels`` finite numbers each and every
    std > 0 (a std of 0 would divide the inputs by zero); ``trained`` / ``source`` objects.
    """
    arch, bands = meta.get("arch"), meta.get("in_channels")
    if not isinstance(arch, str) or not arch:
        return f"'arch' is {arch!r}; expected an architecture name such as 'resnet18'"
    if isinstance(bands, bool) or not isinstance(bands, int) or bands < 1:
        return f"'in_channels' is {bands!r}; expected a positive integer"
    norm = meta.get("normalization")
    if norm is not None:
        if not isinstance(norm, dict) or not {"mean", "std"} <= set(norm):
            return f"'normalization' is {norm!r}; expected null or {{'mean': [...], 'std': [...]}}"
        for key in ("mean", "std"):
            v = norm[key]
            if not isinstance(v, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                  and x == x and abs(x) != float("inf") for x in v):
                return f"normalization {key} is {v!r}; expected a list of finite numbers"
            if len(v) != bands:
                return f"normalization {key} has {len(v)} values but in_channels is {bands}"
        if any(x <= 0 for x in norm["std"]):
            return f"normalization std {norm['std']} holds values <= 0; every band's std must be > 0"
    for key in ("trained", "source"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            return f"{key!r} is {meta[key]!r}; expected an object"
    return None


def load_encoder(encoder: nn.Module, path: str | Path, arch: str) -> dict[str, Any]:
    """Load an encoder file into ``encoder`` with strict key matching.

    Args:
        encoder: the model's encoder (any decoder's; all share the key names).
        path: encoder file.
        arch: the model's architecture, checked against the file's.

    Returns:
        The file's metadata.

    Raises:
        EncoderFileError: when architecture, band count or keys do not match (saying both sides).
    """
    state, meta = read_encoder(path)
    bands = int(encoder.conv1.weight.shape[1])
    if meta["arch"] != arch:
        raise EncoderFileError(f"encoder file {path} holds a {meta['arch']} encoder but the model is {arch}")
    if int(meta["in_channels"]) != bands:
        raise EncoderFileError(
            f"encoder file {path} was trained on {meta['in_channels']} input bands but the model takes {bands}; "
            "set the model's in_channels to match, or adapt the weights with `noisyseg.interop.adapt_first_conv`"
        )
    missing, unexpected = set(encoder.state_dict()) - set(state), set(state) - set(encoder.state_dict())
    if missing or unexpected:
        raise EncoderFileError(
            f"encoder file {path} does not match the {arch} encoder: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    for k, v in encoder.state_dict().items():
        if v.shape != state[k].shape:
            raise EncoderFileError(f"encoder file {path}: {k} has shape {tuple(state[k].shape)}, model has {tuple(v.shape)}")
    encoder.load_state_dict(state, strict=True)
    return meta
