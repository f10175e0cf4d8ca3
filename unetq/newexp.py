"""Create a new experiment folder from a BASE: symlinks to the BASE's scripts plus a config.yaml
copied from the BASE's config with a few keys changed (comments are kept).

    python -m unetq.newexp em/a5_0_w0_3 --base EM_BASE quantization=FIXED activation_i_width=5 \\
        activation_f_width=0 weight_i_width=0 weight_f_width=3

The new config is validated before anything is written; an existing folder is never overwritten.
``experiment_name`` is set to the folder's name.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Mapping

import yaml

from .config import ConfigError, parse_overrides, validate
from .paths import base_module


def edit_yaml_text(text: str, edits: Mapping[str, object], section: str = "UNET") -> str:
    """Set ``key: value`` lines of ``section`` in YAML text, keeping comments and order; keys not
    present are appended to the section."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.rstrip() == f"{section}:"), None)
    if start is None:
        raise ConfigError(f"the base config has no section {section!r}")
    end = next((i for i in range(start + 1, len(lines)) if lines[i] and not lines[i][0].isspace()
                and not lines[i].startswith("#")), len(lines))
    for key, value in edits.items():
        rendered = _scalar(value)
        pattern = re.compile(rf"^(\s+){re.escape(key)}:\s*([^#]*?)(\s+#.*)?$")
        for i in range(start + 1, end):
            match = pattern.match(lines[i])
            if match:
                head = f"{match.group(1)}{key}: {rendered}"
                comment = (match.group(3) or "").lstrip()
                if comment:      # keep the comment in its column (at least one space after the value)
                    column = len(lines[i]) - len(comment)
                    head = head.ljust(column - 1) + " "
                lines[i] = head + comment
                break
        else:
            lines.insert(end, f"  {key}: {rendered}")
            end += 1
    return "\n".join(lines) + "\n"


def _scalar(value: object) -> str:
    if value is None:
        return "null"
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def create(dest: Path, base: Path, edits: Mapping[str, object], section: str = "UNET") -> Path:
    """Create experiment folder ``dest`` from BASE folder ``base`` with config ``edits``."""
    dest, base = Path(dest), Path(base)
    if dest.exists():
        raise ConfigError(f"{dest}: already exists; choose a new folder name (nothing was changed)")
    base_config = base / "config.yaml"
    if not base_config.is_file():
        raise ConfigError(f"{base}: not a BASE folder (no config.yaml)")
    edits = {**edits, "experiment_name": dest.name}
    text = edit_yaml_text(base_config.read_text(encoding="utf-8"), edits, section)
    raw = yaml.safe_load(text)[section]
    module = base_module(base)
    validate(raw, source=dest / "config.yaml", section=section, extra_fields=getattr(module, "FIELDS", ()),
             dataset=raw.get("dataset"))
    dest.mkdir(parents=True)
    for script in sorted(base.glob("*.py")):
        os.symlink(os.path.relpath(script.resolve(), dest.resolve()), dest / script.name)
    (dest / "config.yaml").write_text(text, encoding="utf-8")
    return dest


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m unetq.newexp", description=__doc__.split("\n\n")[0])
    parser.add_argument("dest", help="the new experiment folder, e.g. em/a5_0_w0_3")
    parser.add_argument("--base", required=True, help="the BASE folder, e.g. EM_BASE")
    parser.add_argument("--section", default="UNET", help="YAML section (default UNET)")
    parser.add_argument("edits", nargs="*", metavar="KEY=VALUE", help="config keys to change")
    args = parser.parse_intermixed_args(argv)
    try:
        dest = create(Path(args.dest), Path(args.base), parse_overrides(args.edits, "newexp"), args.section)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"created {dest}: config.yaml + links to {', '.join(p.name for p in sorted(Path(args.base).glob('*.py')))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
