"""Which binary renders (shared/chromium.py): the headless shell beside PUPPETEER_EXECUTABLE_PATH."""

from __future__ import annotations

from pathlib import Path

from shared.chromium import configured_browser, render_browser
from shared.config import RenderSettings
from shared.vocabulary import ChromiumHeadless


def _binary(path: Path) -> Path:
    path.write_text("#!/bin/sh\n", encoding="utf-8")
    path.chmod(0o755)
    return path


def test_the_shell_beside_the_configured_binary_renders(tmp_path: Path) -> None:
    full = _binary(tmp_path / "chromium")
    shell = _binary(tmp_path / "chromium-headless-shell")
    chosen = render_browser(str(full), ChromiumHeadless.SHELL)
    assert chosen.executable_path == str(shell)
    assert chosen.headless is ChromiumHeadless.SHELL and not chosen.note


def test_the_seed_path_finds_the_shell_when_the_full_browser_is_not_installed(tmp_path: Path) -> None:
    """The image installs only the shell; users keep the seed's PUPPETEER_EXECUTABLE_PATH."""
    shell = _binary(tmp_path / "chromium-headless-shell")
    assert render_browser(str(tmp_path / "chromium"), ChromiumHeadless.SHELL).executable_path == str(shell)


def test_debians_binary_is_launched_not_its_wrapper_script(tmp_path: Path) -> None:
    """/usr/bin/chromium-headless-shell runs /usr/lib/chromium/chromium-headless-shell without exec."""
    (tmp_path / "bin").mkdir()
    (tmp_path / "lib" / "chromium").mkdir(parents=True)
    full = _binary(tmp_path / "bin" / "chromium")
    _binary(tmp_path / "bin" / "chromium-headless-shell")
    real = _binary(tmp_path / "lib" / "chromium" / "chromium-headless-shell")
    assert render_browser(str(full), ChromiumHeadless.SHELL).executable_path == str(real)


def test_a_missing_binary_finds_no_shell_elsewhere(tmp_path: Path) -> None:
    """/nonexistent/chromium must not find /lib/chromium/... through the root (merged /usr)."""
    (tmp_path / "lib" / "chromium").mkdir(parents=True)
    _binary(tmp_path / "lib" / "chromium" / "chromium-headless-shell")
    missing = tmp_path / "nonexistent" / "chromium"
    chosen = render_browser(str(missing), ChromiumHeadless.SHELL)
    assert chosen.executable_path == str(missing) and chosen.note


def test_a_path_that_is_a_shell_is_kept(tmp_path: Path) -> None:
    shell = _binary(tmp_path / "chrome-headless-shell")
    chosen = render_browser(str(shell), ChromiumHeadless.SHELL)
    assert chosen.executable_path == str(shell) and not chosen.note


def test_no_shell_falls_back_to_the_binary_and_says_why(tmp_path: Path) -> None:
    full = _binary(tmp_path / "chromium")
    chosen = render_browser(str(full), ChromiumHeadless.SHELL)
    assert chosen.executable_path == str(full)
    assert chosen.headless is ChromiumHeadless.NEW
    assert "no Chromium headless shell beside" in chosen.note and "CHROMIUM_HEADLESS=new" in chosen.note


def test_new_keeps_the_full_browser_even_with_a_shell_beside_it(tmp_path: Path) -> None:
    full = _binary(tmp_path / "chromium")
    _binary(tmp_path / "chromium-headless-shell")
    chosen = render_browser(str(full), ChromiumHeadless.NEW)
    assert chosen.executable_path == str(full) and not chosen.note


def test_playwrights_own_download_is_left_to_playwright() -> None:
    assert render_browser("", ChromiumHeadless.SHELL).executable_path == ""


def test_the_settings_choose_through_the_same_lookup(tmp_path: Path) -> None:
    full = _binary(tmp_path / "chromium")
    settings = RenderSettings(puppeteer_executable_path=str(full), chromium_headless=ChromiumHeadless.NEW)
    assert configured_browser(settings).executable_path == str(full)
