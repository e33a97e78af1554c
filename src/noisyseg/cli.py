"""The one entry point: ``noisyseg <command>`` (also ``python -m noisyseg``).

* ``fit`` / ``validate`` / ``test`` / ``predict`` — LightningCLI over a YAML ``--config``
  (``model:`` a task, ``data:`` a :class:`~noisyseg.data.DataModule` with datasets). ``--resume``
  continues ``fit`` from the last checkpoint of the same run directory.
* ``demo`` — the end-to-end demonstration (:mod:`noisyseg.demo`).
* ``data preview`` — what a loader makes of a data config (:mod:`noisyseg.data.preview`).
* ``data pack`` — a dataset config into LitData shards for streaming (:mod:`noisyseg.data.shards`).
* ``data noise-report`` — noisy vs clean labels of a config (:mod:`noisyseg.data.noise_report`).
* ``sweep`` / ``report`` / ``analyze`` — studies (:mod:`noisyseg.experiments`, :mod:`noisyseg.report`,
  :mod:`noisyseg.analysis`).
* ``export`` — encoder files to smp / timm / torchvision state dicts (:mod:`noisyseg.interop`).
"""

from __future__ import annotations

import importlib
import sys

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")

# command -> "module:function" taking argv (list[str]) and returning an exit code
COMMANDS = {
    "demo": "noisyseg.demo:main",
    "sweep": "noisyseg.experiments.sweep:main",
    "report": "noisyseg.report:main",
    "analyze": "noisyseg.analysis:main",
    "export": "noisyseg.interop:main",
}
DATA_COMMANDS = {"preview": "noisyseg.data.preview:main", "pack": "noisyseg.data.shards:main",
                 "noise-report": "noisyseg.data.noise_report:main"}

USAGE = f"""usage: noisyseg <command> [options]

commands:
  fit | validate | test | predict   train or evaluate from a YAML config (--config FILE); see --help
  demo                              noisy-label and contrastive pretraining vs random init, end to end
  data preview                      summarise and preview a data config
  data noise-report                 noisy vs clean labels of a config: agreement, per-class scores, confusion
  data pack CONFIG --out DIR        write a dataset config into LitData shards (StreamingShards reads them)
  sweep                             run a grid of configs x seeds, resumable
  report                            tables and figures from a sweep directory
  analyze                           encoder-vs-decoder noise analysis (Liu et al.)
  export                            encoder file -> smp / timm / torchvision state dict
"""


def _call(target: str, argv: list[str]) -> int:
    module, func = target.split(":")
    return int(getattr(importlib.import_module(module), func)(argv) or 0)


def lightning_main(argv: list[str]) -> int:
    """LightningCLI with noisyseg's defaults (auto precision, last checkpoints, --resume)."""
    from noisyseg.lightning_cli import run_lightning_cli

    return run_lightning_cli(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    try:
        if cmd in LIGHTNING_COMMANDS:
            return lightning_main(argv)
        if cmd in COMMANDS:
            return _call(COMMANDS[cmd], rest)
        if cmd == "data":
            if not rest or rest[0] not in DATA_COMMANDS:
                print(f"noisyseg data: expected one of {sorted(DATA_COMMANDS)}", file=sys.stderr)
                return 2
            return _call(DATA_COMMANDS[rest[0]], rest[1:])
    except KeyboardInterrupt:
        print("noisyseg: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, FloatingPointError) as e:
        # user errors: one clear line, no traceback from deep inside torch. ValueError covers
        # EncoderFileError / CheckpointFileError; OSError covers FileNotFoundError, PermissionError
        # and the raster loaders' "cannot read raster file <path>"; each message names the file
        print(f"noisyseg {cmd}: error: {e}", file=sys.stderr)
        return 2
    print(f"noisyseg: unknown command {cmd!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
