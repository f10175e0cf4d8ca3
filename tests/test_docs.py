"""The documentation ships with the code: every document that code, configs, READMEs and tests name
exists in the repository, Markdown links resolve, nothing cites the developers' spec folder, and
docs/config.md is exactly what ``python -m unetq.config --markdown`` prints."""

import os
import re
import subprocess
import sys
from pathlib import Path

from unetq.config_docs import key_table, reference_markdown
from unetq.paths import PROJECT_ROOT

SCANNED = (".py", ".yaml", ".md")
SKIPPED_DIRS = {".git", "runs", "__pycache__", ".pytest_cache", "build", "dist"}

# A document named by its path (docs/method.md, ../EM_BASE/README.md) or by an
# upper-case name alone (README.md, PROVENANCE.md).
NAMED = re.compile(r"(?<![\w/.-])((?:\.{0,2}/)?(?:[\w.-]+/)*(?:docs/[\w.-]+|[A-Z][A-Z0-9_]*)\.md)\b")
LINK = re.compile(r"\]\(([^)\s]+)\)")

# Named documents that live outside the repository on purpose, with the reason.
OUTSIDE: dict[str, str] = {}    # documents outside the repository that may be named (none)

# Documents written on other branches of the same work, linked from docs/ already. An entry leaves
# this list when its branch is merged (test_pending_documents_are_still_missing says when).
PENDING = {
}


def _project_files() -> list[Path]:
    """Every scanned file of the project, symlinks left out (they point at a BASE file scanned anyway)."""
    found = []
    for folder, dirs, files in os.walk(PROJECT_ROOT):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS and not d.endswith(".egg-info"))
        for name in sorted(files):
            path = Path(folder) / name
            if path.suffix in SCANNED and not path.is_symlink():
                found.append(path)
    return found


FILES = _project_files()
BASENAMES = {p.name for p in FILES}


def _resolves(name: str, citing: Path) -> bool:
    """A named document exists: by its path from the project root or from the citing file's folder,
    or, for a bare name, as any file of that name in the project."""
    if name in PENDING and not (PROJECT_ROOT / name).exists():
        return True
    if "/" not in name:
        return name in BASENAMES or name in OUTSIDE
    return (PROJECT_ROOT / name).is_file() or (citing.parent / name).is_file()


def test_the_scan_sees_the_code_configs_and_docs():
    rel = {p.relative_to(PROJECT_ROOT).as_posix() for p in FILES}
    assert {"unetq/quantize.py", "em/a6_0_w0_4/config.yaml", "README.md", "docs/method.md"} <= rel
    assert "em/a6_0_w0_4/em_unet.py" not in rel          # a symlink to EM_BASE/em_unet.py


def test_every_named_document_exists():
    missing = []
    for path in FILES:
        text = path.read_text(encoding="utf-8", errors="replace")
        for match in NAMED.finditer(text):
            if not _resolves(match.group(1), path):
                line = text.count("\n", 0, match.start()) + 1
                missing.append(f"{path.relative_to(PROJECT_ROOT)}:{line}: {match.group(1)}")
    assert not missing, "documents named but absent from the repository:\n" + "\n".join(missing)


def test_every_relative_markdown_link_resolves():
    broken = []
    for path in (p for p in FILES if p.suffix == ".md"):
        for target in LINK.findall(path.read_text(encoding="utf-8")):
            target = target.split("#")[0]
            if not target or re.match(r"^[a-z]+:", target):
                continue                                  # an anchor in the page, or a URL
            resolved = (path.parent / target).resolve()
            if not resolved.exists() and resolved.relative_to(PROJECT_ROOT).as_posix() not in PENDING:
                broken.append(f"{path.relative_to(PROJECT_ROOT)}: {target}")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_nothing_cites_the_spec_folder():
    spec = "shared" + "/spec"                             # spelled apart so that this file does not cite it
    citing = [str(p.relative_to(PROJECT_ROOT)) for p in FILES
              if spec in p.read_text(encoding="utf-8", errors="replace")]
    assert not citing, f"files citing ../{spec}, which a clone does not have: {citing}"


def test_the_scanner_catches_a_missing_document(tmp_path):
    citing = tmp_path / "x.py"
    md = ".md"                                            # kept apart: the scan of this file must not see them
    for name in (f"docs/nowhere{md}", f"NOWHERE{md}", f"../EM_BASE/NOWHERE{md}"):
        text = f"see {name} section 2"
        assert [m.group(1) for m in NAMED.finditer(text)] == [name]
        assert not _resolves(name, citing)
    assert _resolves("docs/method.md", citing) and _resolves("README.md", citing)
    assert not [m.group(1) for m in NAMED.finditer("results.md method.md x.md")]   # not documents


def test_pending_documents_are_still_missing():
    arrived = [name for name in PENDING if (PROJECT_ROOT / name).exists()]
    assert not arrived, f"{arrived} exist now: remove them from PENDING in tests/test_docs.py"


def test_config_reference_is_what_the_command_prints():
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    out = subprocess.run([sys.executable, "-m", "unetq.config", "--markdown"], cwd=PROJECT_ROOT, env=env,
                         capture_output=True, text=True, timeout=120, check=True).stdout
    doc = (PROJECT_ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    assert out == reference_markdown()
    assert doc == out, "docs/config.md is stale: python -m unetq.config --markdown > docs/config.md"


def test_config_reference_lists_every_key_once():
    doc = (PROJECT_ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    for row in key_table().splitlines()[2:]:
        assert doc.count(row) == 1, row
    for key in ("foreground", "rater_mode", "hu_min"):     # one key of each BASE
        assert f"| `{key}` |" in doc
