"""Create a new experiment folder from a BASE: a link to the BASE's script plus a config.yaml copied
from the BASE's config with a few keys changed (the edited keys lose their comments, which described
the BASE's values; the other comments are kept).

    python -m unetq.newexp em/a5_0_w0_3 --base EM_BASE quantization=FIXED activation_i_width=5 \\
        activation_f_width=0 weight_i_width=0 weight_f_width=3

The new config is validated before anything is written; an existing folder is never overwritten.
``experiment_name`` is set to the folder's name. ``--base`` is found relative to the current folder
or to the repository; a BASE of another dataset than the destination's parent folder (em/, gm/, nih/)
is refused. ``--relink`` repairs an existing folder instead: its link to the BASE's script is made
again for where the folder now lies (e.g. after ``cp -r`` one level deeper); config.yaml is kept.

    python -m unetq.newexp em/a4_0_w0_2/a6_0_w0_2 --base EM_BASE --relink
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
from .paths import PROJECT_ROOT, base_of, broken_links


def edit_yaml_text(text: str, edits: Mapping[str, object], section: str = "UNET") -> str:
    """Set ``key: value`` lines of ``section`` in YAML text, keeping the order and the comments of the
    other lines; keys not present are appended to the section. An edited key loses its comment: it
    described the BASE's value, and a comment that contradicts its value misleads."""
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
                lines[i] = f"{match.group(1)}{key}: {rendered}"
                break
        else:
            lines.insert(end, f"  {key}: {rendered}")
            end += 1
    return "\n".join(lines) + "\n"


def _scalar(value: object) -> str:
    if value is None:
        return "null"
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def find_base(base: Path) -> Path:
    """The BASE folder ``base`` names: as given (relative to the current folder), else relative to
    the repository (``--base EM_BASE`` works from inside em/). ConfigError when neither is a BASE."""
    base = Path(base)
    for candidate in (base, PROJECT_ROOT / base):
        if (candidate / "config.yaml").is_file() and base_script(candidate):
            return candidate
    raise ConfigError(f"{base}: not a BASE folder (no config.yaml and *_unet.py here nor in {PROJECT_ROOT}); "
                      f"allowed: EM_BASE, GM_BASE, NIH_BASE or a path to one")


def base_script(base: Path) -> Path | None:
    """The entry script of a BASE folder (unetq.paths.BASES), or None when ``base`` is not a BASE."""
    found = base_of(base)
    return found.folder / found.script if found and (found.folder / found.script).is_file() else None


def base_dataset(base: Path) -> str | None:
    """The dataset a BASE trains (unetq.paths.BASES), None when ``base`` is not a BASE."""
    found = base_of(base)
    return found.dataset if found else None


def check_parent(dest: Path, base: Path) -> None:
    """Refuse a BASE of another dataset than the destination's parent folder, when that folder is named
    after a dataset (em/, gm/, nih/) at any depth above ``dest``."""
    dataset = base_dataset(base)
    for parent in Path(dest).resolve().parents:
        if parent.name in ("em", "gm", "nih"):
            if dataset and parent.name != dataset:
                raise ConfigError(f"{dest}: lies in {parent.name}/, but {base.name} trains {dataset!r}; use "
                                  f"--base {parent.name.upper()}_BASE, or put the folder in {dataset}/")
            return


def create(dest: Path, base: Path, edits: Mapping[str, object], section: str = "UNET") -> Path:
    """Create experiment folder ``dest`` from BASE folder ``base`` with config ``edits``."""
    dest, base = Path(dest), find_base(base)
    if dest.exists():
        hint = "; its links are broken: repair them with --relink" if broken_links(dest) else ""
        raise ConfigError(f"{dest}: already exists; choose a new folder name (nothing was changed){hint}")
    check_parent(dest, base)
    edits = {**edits, "experiment_name": dest.name}
    text = edit_yaml_text((base / "config.yaml").read_text(encoding="utf-8"), edits, section)
    raw = yaml.safe_load(text)[section]
    validate(raw, source=dest / "config.yaml", section=section, dataset=base_dataset(base))
    dest.mkdir(parents=True)
    link_scripts(dest, base)
    (dest / "config.yaml").write_text(text, encoding="utf-8")
    return dest


def link_scripts(dest: Path, base: Path) -> list[str]:
    """Link the entry script of ``base`` (e.g. ``em_unet.py``) into ``dest`` with a relative link (it
    survives a clone of the repository), replacing a link of the same name, and remove links into the
    BASE that point nowhere (an older layout linked the BASE's other files too; the script finds them
    itself: Python puts its resolved folder on sys.path). Returns the names linked or removed. A plain
    file of that name is never replaced."""
    names = []
    for link in sorted(Path(dest).iterdir()):
        if link.is_symlink() and not link.exists() and Path(base).name in Path(os.readlink(link)).parts:
            link.unlink()
            names.append(f"{link.name} (removed)")
    for script in [Path(base) / base_of(base).script]:
        link = Path(dest) / script.name
        if link.exists() and not link.is_symlink():
            raise ConfigError(f"{link}: a file, not a link; move it away to relink (nothing was changed)")
        target = os.path.relpath(script.resolve(), Path(dest).resolve())
        if link.is_symlink():
            if os.readlink(link) == target:
                continue
            link.unlink()
        os.symlink(target, link)
        names.append(script.name)
    return names


def relink(dest: Path, base: Path) -> list[str]:
    """Repair the links of the existing experiment folder ``dest`` to BASE ``base``; returns what changed."""
    dest, base = Path(dest), find_base(base)
    if not (dest / "config.yaml").is_file():
        raise ConfigError(f"{dest}: not an experiment folder (no config.yaml); create it without --relink")
    check_parent(dest, base)
    return link_scripts(dest, base)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m unetq.newexp", description=__doc__.split("\n\n")[0])
    parser.add_argument("dest", help="the new experiment folder, e.g. em/a5_0_w0_3")
    parser.add_argument("--base", required=True, help="the BASE folder, e.g. EM_BASE")
    parser.add_argument("--section", default="UNET", help="YAML section (default UNET)")
    parser.add_argument("--relink", action="store_true", help="repair the links of an existing folder "
                                                                "(config.yaml is kept)")
    parser.add_argument("edits", nargs="*", metavar="KEY=VALUE", help="config keys to change")
    args = parser.parse_intermixed_args(argv)
    try:
        if args.relink:
            if args.edits:
                raise ConfigError("--relink keeps config.yaml as it is; edit it, or give no KEY=VALUE")
            changed = relink(Path(args.dest), Path(args.base))
            print(f"{args.dest}: relinked {', '.join(changed)}" if changed else f"{args.dest}: links already right")
            return 0
        dest = create(Path(args.dest), Path(args.base), parse_overrides(args.edits, "newexp"), args.section)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"created {dest}: config.yaml + a link to {base_of(find_base(args.base)).script}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
