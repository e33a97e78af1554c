"""Encoder interoperability: noisyseg encoder files to and from smp / timm / torchvision / torchgeo.

**Export** (:func:`export_encoder`) writes an encoder file's weights as a plain state dict that
loads with strict key matching into

* smp: ``smp.Unet / DeepLabV3Plus / PSPNet(encoder_name=arch, encoder_weights=None,
  in_channels=C).encoder``;
* timm: ``timm.create_model(arch, pretrained=False, in_chans=C, num_classes=0)``;
* torchvision: ``resnetXX(weights=None)`` with ``conv1`` replaced by a ``C``-band
  ``nn.Conv2d(C, 64, 7, 2, 3, bias=False)`` when ``C != 3`` **and** ``fc = nn.Identity()``. No
  classifier is written: a random ``fc`` in a weights file would look trained when it is not.

For ResNets all three use torchvision's parameter names (``conv1``, ``bn1``, ``layerN.i.convK``,
``layerN.i.downsample.0/1``) — smp's encoder *is* a torchvision ``ResNet`` without ``fc``, and
timm's ``ResNet`` names its layers the same way (checked for resnet18/34/50/101 in
``tests/interop/test_export.py``) — so export renames nothing; it only checks and records.

**Import** (:func:`import_state_dict`, :func:`encoder_file_from_state_dict`) reads a foreign
state dict (``.safetensors``, or ``.pt/.pth/.ckpt/.bin`` through ``torch.load(weights_only=True)``
only, so a crafted pickle cannot run code), unwraps Lightning-style nesting, strips one known
prefix, drops the classifier ``fc.*``, and adapts the first convolution to the wanted band count
(:func:`adapt_first_conv`). The result loads strictly into :func:`~noisyseg.models.networks.build_encoder`.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from timm.models import adapt_input_conv

from noisyseg.models.networks import ENCODERS, build_encoder, check_encoder
from noisyseg.runfiles import (
    EncoderFileError,
    atomic_write,
    read_encoder,
    refused_global,
    save_encoder,
    split_state,
)

TARGETS = ("smp", "timm", "torchvision")
"""Export targets."""

FORMATS = ("auto", "timm", "torchvision", "torchgeo", "smp")
"""Import formats; they differ only in which key prefixes are looked for (see :data:`PREFIXES`)."""

PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")

# format -> prefixes tried, best match wins (ties: earlier in the list). torchgeo's
# SemanticSegmentationTask holds an smp model under ``model.`` (encoder at ``model.encoder.``),
# its MoCo/SimCLR tasks a timm ResNet at ``backbone.``; DataParallel/DDP add ``module.``.
PREFIXES: dict[str, tuple[str, ...]] = {
    "timm": ("", "module.", "model."),
    "torchvision": ("", "module.", "model."),
    "smp": ("encoder.", "model.encoder.", "module.encoder.", ""),
    "torchgeo": ("model.backbone.", "backbone.", "model.encoder.", "model.", "encoder.", ""),
    "auto": (
        "", "module.", "model.", "backbone.", "model.backbone.", "encoder.", "model.encoder.",
        "module.encoder.", "module.model.", "model.model.",
    ),
}

NESTING_KEYS = ("state_dict", "model_state_dict", "model")
"""Top-level keys of a checkpoint dict that hold the state dict (Lightning: ``state_dict``)."""

META_KEY = "noisyseg_export"
"""Safetensors header key of exported files (not ``noisyseg``: an export is not an encoder file)."""


def adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Adapt a first-convolution weight to another number of input bands.

    The rule is timm's ``adapt_input_conv`` (called here), with ``Cin`` the source bands:

    * ``C == Cin``: unchanged;
    * ``C == 1``: sum over the ``Cin`` input channels;
    * otherwise: repeat the ``Cin`` channels cyclically (band ``j`` gets source channel
      ``j mod Cin``), keep the first ``C``, and scale by ``Cin / C`` — so ``C < Cin`` keeps the
      first ``C`` channels times ``Cin / C``.

    The ``Cin / C`` scale keeps the first layer's output magnitude roughly unchanged; it is exact
    for an input whose bands are all equal when ``C == 1`` or ``C`` is a multiple of ``Cin``.

    Args:
        weight: ``[O, Cin, k, k]`` convolution weight.
        in_channels: wanted band count ``C``.

    Returns:
        ``[O, C, k, k]`` weight, same dtype (a new tensor).

    Raises:
        ValueError: when ``weight`` is not 4-D or ``in_channels < 1``.
    """
    if weight.ndim != 4:
        raise ValueError(f"first-conv weight must be [O, Cin, k, k], got shape {tuple(weight.shape)}")
    if in_channels < 1:
        raise ValueError(f"in_channels={in_channels} must be >= 1")
    # base_chans=Cin: every source channel is a physical band (no space-to-depth stem)
    return adapt_input_conv(in_channels, weight.clone(), base_chans=int(weight.shape[1]))  # O x C x k x k


# ---------------------------------------------------------------------------------------- export


def _export_path(out: str | Path) -> Path:
    out = Path(out)
    if out.suffix not in (".safetensors", ".pt", ".pth"):
        raise ValueError(f"export file {out} must end in .safetensors, .pt or .pth")
    return out


def export_encoder(path: str | Path, to: str, out: str | Path) -> Path:
    """Write an encoder file's weights as a state dict for smp, timm or torchvision.

    ``.safetensors`` output carries the provenance as JSON under the header key ``noisyseg_export``;
    ``.pt``/``.pth`` output is ``torch.save`` of a plain ``{name: tensor}`` dict (loadable with
    ``torch.load(..., weights_only=True)``) with the provenance in a sidecar ``<out>.json``.

    Args:
        path: noisyseg encoder file.
        to: ``smp``, ``timm`` or ``torchvision`` (torchvision: load with ``fc = nn.Identity()``).
        out: output file (``.safetensors``, ``.pt`` or ``.pth``).

    Returns:
        ``out``.

    Raises:
        ValueError: for an unknown target or output suffix; EncoderFileError (a ValueError) for a
            missing, corrupt or mismatching encoder file.
    """
    if to not in TARGETS:
        raise ValueError(f"unknown export target {to!r}; valid: {list(TARGETS)}")
    out = _export_path(out)
    state, meta = read_encoder(path)
    arch, bands = meta.get("arch"), int(meta.get("in_channels", 0))
    if arch not in ENCODERS or bands < 1:
        raise EncoderFileError(
            f"encoder file {path} holds arch={arch!r}, in_channels={bands}; valid: {sorted(ENCODERS)}, >= 1 bands"
        )
    missing, unexpected, wrong = _mismatch(state, _template(arch, bands))  # strict, as load_encoder
    if missing or unexpected or wrong:
        raise EncoderFileError(
            f"encoder file {path} does not match its {arch} ({bands} bands) metadata: missing {missing[:4]}, "
            f"unexpected {unexpected[:4]}, wrong shape {wrong[:4]}"
        )
    # smp, timm and torchvision share the ResNet names (module docstring): nothing to rename
    state = {k: v.contiguous() for k, v in state.items()}
    info = {
        "format": "noisyseg-export",
        "target": to,
        "arch": arch,
        "in_channels": bands,
        "from": str(Path(path).resolve()),
        "normalization": meta.get("normalization"),
        "trained": meta.get("trained"),
        "source": meta.get("source"),
        "classifier": "none; torchvision needs fc = nn.Identity()" if to == "torchvision" else "none",
    }
    if out.suffix == ".safetensors":
        return atomic_write(out, lambda tmp: save_file(state, tmp, metadata={META_KEY: json.dumps(info)}))
    atomic_write(out.with_name(out.name + ".json"), lambda tmp: Path(tmp).write_text(json.dumps(info, indent=2)))
    return atomic_write(out, lambda tmp: torch.save(state, tmp))


# ---------------------------------------------------------------------------------------- import


def _read_state_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors of a ``.safetensors`` or weights-only pickle file, and the safetensors header metadata."""
    if not path.is_file():
        raise EncoderFileError(f"state dict file {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                header = dict(f.metadata() or {})
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise EncoderFileError(f"state dict file {path} is not a readable safetensors file ({e})") from e
        return _without_decoder(state, header), header
    if path.suffix not in PICKLE_SUFFIXES:
        raise EncoderFileError(f"state dict file {path} must end in .safetensors or one of {list(PICKLE_SUFFIXES)}")
    try:
        # weights_only: a restricted unpickler that refuses anything but tensors and plain containers,
        # so a crafted checkpoint cannot run code on load
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = refused_global(e)  # torch's message is many lines; keep the one naming the global
        raise EncoderFileError(
            f"refused to load {path}: it holds objects other than tensors and plain containers, which "
            f"torch.load(weights_only=True) does not unpickle because they could run code ({first}); "
            "re-save just the state dict (torch.save(model.state_dict(), ...)) or use safetensors"
        ) from e
    except (RuntimeError, OSError, EOFError) as e:
        raise EncoderFileError(f"state dict file {path} is not a readable torch file ({e})") from e
    return _unnest(obj, path), {}


def _without_decoder(state: dict[str, torch.Tensor], header: dict[str, str]) -> dict[str, torch.Tensor]:
    """A noisyseg encoder file may also hold its decoder (:func:`~noisyseg.runfiles.split_state`): drop it."""
    try:
        meta = json.loads(header.get("noisyseg", "{}"))
        return split_state(state, meta)[0] if isinstance(meta, dict) else state
    except (json.JSONDecodeError, EncoderFileError):
        return state  # not readable as noisyseg metadata: every tensor, as for a foreign file


def _unnest(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The ``{name: tensor}`` dict inside a loaded checkpoint (Lightning ``state_dict`` nesting)."""
    if not isinstance(obj, dict):
        raise EncoderFileError(f"state dict file {path} holds a {type(obj).__name__}, not a dict of tensors")
    for key in NESTING_KEYS:
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    state = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not state:
        raise EncoderFileError(
            f"state dict file {path} holds no tensors (top-level keys {sorted(map(str, obj))[:8]}); "
            f"expected a state dict, possibly under one of {list(NESTING_KEYS)}"
        )
    return state


def _template(arch: str, in_channels: int = 3) -> dict[str, torch.Size]:
    """Key -> shape of an smp encoder, built on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        return {k: v.shape for k, v in build_encoder(arch, in_channels).state_dict().items()}


def _strip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Keys under ``prefix`` with it removed; the classifier ``fc.*`` dropped."""
    out = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return {k: v for k, v in out.items() if not k.startswith("fc.")}


def _mismatch(
    state: dict[str, torch.Tensor], template: dict[str, torch.Size], any_bands: bool = False
) -> tuple[list[str], list[str], list[str]]:
    """Sorted missing, unexpected and wrong-shape keys (``any_bands``: conv1 may have any input bands)."""
    missing, unexpected = sorted(set(template) - set(state)), sorted(set(state) - set(template))
    wrong = sorted(
        k for k in set(template) & set(state)
        if state[k].shape != template[k]
        and not (any_bands and k == "conv1.weight" and state[k].shape[0] == template[k][0] and state[k].ndim == 4)
    )
    return missing, unexpected, wrong


def _matches(state: dict[str, torch.Tensor], template: dict[str, torch.Size]) -> int:
    """Keys whose shape fits the template (first conv: any input bands)."""
    return sum(
        k in template and (v.shape == template[k] or (k == "conv1.weight" and v.shape[0] == template[k][0]))
        for k, v in state.items()
    )


def _optional(template: dict[str, torch.Size]) -> set[str]:
    # BatchNorm fills a missing num_batches_tracked itself; old torchvision/timm weights lack it
    return {k for k in template if k.endswith("num_batches_tracked")}


def _guess_arch(state: dict[str, torch.Tensor]) -> str | None:
    """The supported architecture whose keys and shapes ``state`` fits exactly (any bands), if any."""
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    for arch in ENCODERS:
        template = _template(arch)
        if set(state) == set(template) - _optional(template) and _matches(state, template) == len(state):
            return arch
    return None


def import_state_dict(
    path: str | Path, arch: str, in_channels: int | None = None, fmt: str = "auto"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a foreign ResNet state dict as the weights of noisyseg's (smp) encoder.

    Steps: load (safetensors, or ``torch.load(weights_only=True)``; a pickle holding anything but
    tensors and containers is refused); unwrap ``state_dict``/``model_state_dict``/``model``
    nesting; strip the prefix among :data:`PREFIXES` for ``fmt`` under which the most keys fit
    ``arch`` (``model.backbone.``, ``backbone.``, ``encoder.``, ``module.``, ...); drop ``fc.*``;
    fill missing ``num_batches_tracked`` with 0; check keys and shapes strictly; adapt the first
    convolution to ``in_channels`` bands with :func:`adapt_first_conv`.

    Args:
        path: ``.safetensors``, ``.pt``, ``.pth``, ``.ckpt`` or ``.bin`` file.
        arch: target architecture (one of :data:`~noisyseg.models.networks.ENCODERS`).
        in_channels: wanted input bands; ``None`` keeps the file's.
        fmt: ``auto``, ``timm``, ``torchvision``, ``torchgeo`` or ``smp`` (which prefixes are tried).

    Returns:
        ``(state_dict, source_meta)``: the state dict loads strictly into
        ``build_encoder(arch, in_channels)``; ``source_meta`` is ``{"kind": fmt, "path",
        "prefix", "adapted_first_conv", "original_in_channels"}`` (plus ``file_metadata`` when the
        safetensors header had any).

    Raises:
        ValueError: for an unknown architecture, format or band count; EncoderFileError (a
            ValueError) for a missing/unreadable/refused file or weights of another architecture
            (naming both the file's and the wanted one).
    """
    check_encoder(arch)
    if fmt not in FORMATS:
        raise ValueError(f"unknown state dict format {fmt!r}; valid: {list(FORMATS)}")
    if in_channels is not None and in_channels < 1:
        raise ValueError(f"in_channels={in_channels} must be >= 1")
    path = Path(path)
    raw, header = _read_state_file(path)
    template = _template(arch)
    prefix = max(PREFIXES[fmt], key=lambda p: _matches(_strip(raw, p), template))  # first best wins
    state = _strip(raw, prefix)
    for k in _optional(template) - set(state):
        state[k] = torch.tensor(0, dtype=torch.long)
    missing, unexpected, wrong = _mismatch(state, template, any_bands=True)
    if missing or unexpected or wrong:
        found = _guess_arch(state)
        what = f"a {found} state dict" if found else f"no supported ResNet ({sorted(ENCODERS)})"
        raise EncoderFileError(
            f"state dict file {path} holds {what}, not {arch} (format {fmt!r}, prefix {prefix!r}): "
            f"missing {missing[:4]}, unexpected {unexpected[:4]}, wrong shape {wrong[:4]}"
        )
    original = int(state["conv1.weight"].shape[1])
    bands = original if in_channels is None else in_channels
    adapted = bands != original
    if adapted:
        state["conv1.weight"] = adapt_first_conv(state["conv1.weight"], bands)  # O x Cin x 7 x 7 -> O x C x 7 x 7
    source: dict[str, Any] = {
        "kind": fmt,
        "path": str(path.resolve()),
        "prefix": prefix,
        "adapted_first_conv": adapted,
        "original_in_channels": original,
    }
    if header:
        source["file_metadata"] = header
    return state, source


def encoder_file_from_state_dict(
    src_path: str | Path, arch: str, in_channels: int | None, out: str | Path, fmt: str = "auto"
) -> Path:
    """Turn a foreign state dict into a noisyseg encoder file (to start pretraining or fine-tuning).

    The file loads into any decoder, e.g. ``SegmentationTask(arch=arch, in_channels=C,
    encoder_path=out)``; its ``source`` metadata is the ``source_meta`` of :func:`import_state_dict`.

    Args:
        src_path: foreign state dict file.
        arch: architecture.
        in_channels: input bands of the encoder file (``None``: the source's).
        out: encoder file to write (``.safetensors``).
        fmt: see :func:`import_state_dict`.

    Returns:
        ``out``.

    Raises:
        ValueError, EncoderFileError: as :func:`import_state_dict`; also for ``out`` not ending in
            ``.safetensors``.
    """
    if Path(out).suffix != ".safetensors":
        raise ValueError(f"encoder file {out} must end in .safetensors")
    state, source = import_state_dict(src_path, arch, in_channels, fmt)
    encoder = build_encoder(arch, int(state["conv1.weight"].shape[1]))
    encoder.load_state_dict(state, strict=True)  # dtype converted to the encoder's (float32)
    return save_encoder(out, encoder, arch, source=source)


# ------------------------------------------------------------------------------------------- CLI


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one-line ValueError instead of usage + SystemExit
        raise ValueError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="noisyseg export",
        description="Export an encoder file to smp/timm/torchvision, or import a foreign state dict as an "
        "encoder file. See docs/interop.md.",
        usage="noisyseg export ENCODER_FILE --to {smp,timm,torchvision} --out FILE\n"
        "       noisyseg export --import STATE_DICT --arch ARCH [--in-channels C] [--format FMT] --out FILE",
    )
    p.add_argument("encoder", nargs="?", help="noisyseg encoder file to export")
    p.add_argument("--to", choices=TARGETS, help="export target")
    p.add_argument("--import", dest="src", metavar="STATE_DICT", help="foreign state dict to import")
    p.add_argument("--arch", choices=sorted(ENCODERS), help="architecture of the imported weights")
    p.add_argument("--in-channels", type=int, help="bands of the imported encoder (default: the file's)")
    p.add_argument("--format", default="auto", choices=FORMATS, help="imported file's origin (prefixes tried)")
    p.add_argument("--out", required=True, help="output file")
    return p


def main(argv: list[str]) -> int:
    """``noisyseg export``: returns 0, or 2 after one ``noisyseg export: error: ...`` line."""
    try:
        try:
            args = _parser().parse_args(argv)
        except SystemExit as e:  # --help
            return int(e.code or 0)
        if (args.encoder is None) == (args.src is None):
            raise ValueError("give either an ENCODER_FILE to export or --import STATE_DICT, not both or neither")
        if args.src is not None:
            if args.arch is None or args.to is not None:
                raise ValueError("--import needs --arch and takes no --to")
            out = encoder_file_from_state_dict(args.src, args.arch, args.in_channels, args.out, args.format)
        else:
            if args.to is None or args.arch is not None or args.in_channels is not None:
                raise ValueError("exporting needs --to and takes no --arch/--in-channels (the encoder file has them)")
            out = export_encoder(args.encoder, args.to, args.out)
    except (ValueError, FileNotFoundError, PermissionError) as e:
        print(f"noisyseg export: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0
