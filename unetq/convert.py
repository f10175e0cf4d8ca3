"""Convert a model saved by the original code into a checkpoint of this project.

    python -m unetq.convert ORIGINAL.pkl OUT.pt --config em/a6_0_w0_4/config.yaml [-t UNET] [-o key=value ...]
                            [--base EM_BASE]

ORIGINAL is what the original scripts wrote (``torch.save(model.state_dict())``, e.g.
``em_a6_0_w0_4.pkl``); it is read with ``torch.load(weights_only=True)``, so nothing pickled in it
can run. The config says which network the weights belong to (quantization, widths, activation,
base width): the experiment's config.yaml, validated with the BASE its folder links to (or
``--base`` for a config outside an experiment folder). Since the weights were trained by the original
code, the checkpoint records the settings it ran (``original_code: true``: e.g. ``activation: tanh``
ran ReLU there). OUT is written atomically and never replaces an existing file. See
docs/original-experiments.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import checkpoint, original, weights
from .checkpoint import CheckpointError
from .config import Config, ConfigError, load, parse_overrides
from .models import MODEL_KEYS, build_model
from .newexp import base_script, find_base
from .paths import base_of
from .sweep import _script


def config_for(path: Path, overrides: dict, section: str = "UNET", base: Path | None = None) -> Config:
    """The config at ``path`` validated as its experiment's script validates it (the script its folder
    links to), or as the script of ``base`` when given."""
    path = Path(path)
    if base is not None:
        script = base_script(find_base(base))
    else:
        name = _script(path.parent)
        script = path.parent / name if name else None
    if script is None or not script.exists():
        raise ConfigError(f"{path}: no BASE script beside it (em_unet.py, ...); name its BASE with --base EM_BASE")
    return load(path, section, overrides, dataset=base_of(script).dataset)


def convert(source: Path, out: Path, cfg: Config) -> list[str]:
    """Write ``out``, a checkpoint of this project holding the original state dict at ``source``,
    for the network of ``cfg`` as the original code ran it. Returns the notices for the user."""
    source, out = Path(source), Path(out)
    if out.exists():
        raise CheckpointError(f"{out}: already exists; give a new file name (nothing was changed)")
    ckpt = checkpoint.load(source)
    if not original.is_original_state(ckpt["model"]):
        raise CheckpointError(f"{source}: not a state dict saved by the original code (no conv1.conv1.weight, "
                              f"up1.downconv.*, conv9.weight); a checkpoint of this project needs no conversion")
    settings = cfg.to_dict()
    notices = original.apply_original(settings, cfg.dataset)
    model = build_model(settings)
    state, extra = original.from_original_state(ckpt["model"], model.state_dict())
    checkpoint.load_into(model, state, source)
    record = weights.source_record(source, weights.sha256(source))
    checkpoint.save({"model": model.state_dict(), "config": settings, "epoch": None, "best_dice": None,
                     "best_epoch": None, "source": {**record, "written_by": "the original code"}}, out)
    model_keys = ", ".join(f"{k} {settings[k]}" for k in MODEL_KEYS)
    return [*notices, *extra, f"wrote {out}: {len(state)} tensors from {source} (sha256 {record['sha256'][:12]}...); "
            f"network: {model_keys}"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m unetq.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="the model file the original code saved (a state dict)")
    parser.add_argument("out", help="the checkpoint to write (e.g. em_a6_0_w0_4.pt)")
    parser.add_argument("--config", required=True, help="the experiment's config.yaml")
    parser.add_argument("-t", "--type", default="UNET", help="YAML section (default UNET)")
    parser.add_argument("--base", help="the BASE (EM_BASE, GM_BASE, NIH_BASE) of a config outside an experiment folder")
    parser.add_argument("-o", "--override", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. -o base_width=64")
    args = parser.parse_intermixed_args(argv)
    try:
        cfg = config_for(Path(args.config), parse_overrides(args.override), args.type,
                         Path(args.base) if args.base else None)
        lines = convert(Path(args.source), Path(args.out), cfg)
    except (ConfigError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for line in lines:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
