"""The README's configuration reference is generated from shared/config.py; keep it in sync."""

from __future__ import annotations

import re
from pathlib import Path

from shared.config import iter_settings, render_reference_markdown

ROOT = Path(__file__).resolve().parents[2]


def generated_block(name: str) -> str:
    """The text between README's <!-- NAME:start --> and <!-- NAME:end --> markers."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(rf"<!-- {name}:start -->\n(.*?)\n<!-- {name}:end -->", text, re.S)
    assert match, f"README.md lost its {name} markers"
    return match.group(1).strip()


def test_readme_configuration_reference_matches_the_settings() -> None:
    assert generated_block("config-reference") == render_reference_markdown().strip(), (
        "README configuration reference is stale: regenerate with `export-worker config --markdown`"
    )


def test_every_setting_is_in_config_toml_with_its_environment_name() -> None:
    text = (ROOT / "config.toml").read_text(encoding="utf-8")
    for _section, key, _field in iter_settings():
        assert re.search(rf"^{key} = ", text, re.M), f"{key} missing from config.toml"


def test_readme_command_reference_matches_the_parser() -> None:
    from supervisor.cli.commands import render_cli_markdown

    assert generated_block("cli-reference") == render_cli_markdown().strip(), (
        "README command reference is stale: regenerate with `export-worker help --markdown`"
    )


def test_readme_says_how_to_run_commands_from_the_virtualenv_before_using_them() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    note = text.find("source .venv/bin/activate")
    assert note >= 0 and ".venv/bin/export-worker" in text, "README lost its virtualenv note"
    # The first place a reader is shown running a command: a shell line or inline code.
    first_use = re.search(r"^export-worker \w|`export-worker \w", text, re.M)
    assert first_use, "README never shows an export-worker command"
    assert note < first_use.start(), "the virtualenv note comes after the first export-worker command"
