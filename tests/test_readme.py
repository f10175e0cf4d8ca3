"""The README stays in step with the code: every config key documented (in docs/config.md, which the README
links), the CI runs its test command."""

import re

from unetq.config import COMMON_FIELDS
from unetq.paths import PROJECT_ROOT, base_module

README = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
CONFIG_DOC = (PROJECT_ROOT / "docs" / "config.md").read_text(encoding="utf-8")


def test_every_config_key_has_a_row_in_the_config_reference():
    fields = list(COMMON_FIELDS)
    for base in ("EM_BASE", "GM_BASE", "NIH_BASE"):
        fields += list(base_module(base).FIELDS)
    missing = [f.name for f in fields if f"| `{f.name}` |" not in CONFIG_DOC]
    assert not missing, f"docs/config.md lacks rows for {missing}"


def test_the_readme_links_the_config_reference():
    assert "](docs/config.md)" in README, "the README must link docs/config.md, where the keys are"


def test_ci_runs_the_readme_test_command():
    command = re.search(r"^(python -m pytest[^\n#]*?)\s+# tests", README, re.M).group(1).strip()
    ci = (PROJECT_ROOT / ".ci" / "run").read_text()
    assert command in ci and "pip install -q -r requirements.txt" in ci
