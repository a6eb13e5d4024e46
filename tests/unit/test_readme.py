"""The README's configuration reference is generated from shared/config.py; keep it in sync."""

from __future__ import annotations

import re
from pathlib import Path

from shared.config import iter_settings, render_reference_markdown

ROOT = Path(__file__).resolve().parents[2]


def test_readme_configuration_reference_matches_the_settings() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- config-reference:start -->\n(.*?)\n<!-- config-reference:end -->", text, re.S)
    assert match, "README.md lost its configuration reference markers"
    assert match.group(1).strip() == render_reference_markdown().strip(), (
        "README configuration reference is stale: regenerate with `export-worker config --markdown`"
    )


def test_every_setting_is_in_config_toml_with_its_environment_name() -> None:
    text = (ROOT / "config.toml").read_text(encoding="utf-8")
    for _section, key, _field in iter_settings():
        assert re.search(rf"^{key} = ", text, re.M), f"{key} missing from config.toml"
