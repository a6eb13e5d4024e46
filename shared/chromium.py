"""Which Chromium binary renders: the one decision, for the supervisor, the bench and the tests.

``PUPPETEER_EXECUTABLE_PATH`` names the Chromium install (the seed's
``/usr/bin/chromium``); ``CHROMIUM_HEADLESS`` says which of its two headless browsers
prints. The headless shell is preferred because every job now starts a renderer in a
browser context of its own, and the full browser pays for its tab machinery on each
one (``export-worker bench``, round 6: about twice the CPU per light job).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from shared.config import RenderSettings
from shared.vocabulary import ChromiumHeadless

# Where a headless shell sits beside a Chromium binary: Debian's package and a
# Chrome-for-Testing download name it so; a path that already is one is kept.
_SHELL_NAMES = ("chromium-headless-shell", "chrome-headless-shell")
# Debian's binary behind its script: /usr/bin/chromium-headless-shell runs it without
# exec, so a shell process would sit between the child and its browser.
_DEBIAN_SHELL = Path("lib/chromium/chromium-headless-shell")


@dataclass(frozen=True)
class RenderBrowser:
    """The binary the children launch ("" = Playwright's own download), and why, for the log."""

    executable_path: str
    headless: ChromiumHeadless
    note: str = ""  # set when the shell was asked for and not found


def render_browser(executable_path: str, headless: ChromiumHeadless) -> RenderBrowser:
    """The binary for PUPPETEER_EXECUTABLE_PATH and CHROMIUM_HEADLESS.

    Playwright's own download ("") already launches its headless shell when one is
    installed, so only an explicit binary is looked beside.
    """
    if headless is ChromiumHeadless.NEW or not executable_path:
        return RenderBrowser(executable_path, headless)
    binary = Path(executable_path)
    if binary.name in _SHELL_NAMES:
        return RenderBrowser(executable_path, ChromiumHeadless.SHELL)
    for name in _SHELL_NAMES:
        shell = binary.with_name(name)
        if os.access(shell, os.X_OK):
            debian = binary.parent.parent / _DEBIAN_SHELL
            found = debian if binary.parent.name == "bin" and os.access(debian, os.X_OK) else shell
            return RenderBrowser(str(found), ChromiumHeadless.SHELL)
    return RenderBrowser(
        executable_path, ChromiumHeadless.NEW,
        note=(f"no Chromium headless shell beside {executable_path} (looked for {', '.join(_SHELL_NAMES)}): "
              "rendering with the full browser, at about twice the CPU per job; install Debian's "
              "chromium-headless-shell, or set CHROMIUM_HEADLESS=new to choose the full browser"),
    )


def configured_browser(render: RenderSettings) -> RenderBrowser:
    """:func:`render_browser` for the settings' PUPPETEER_EXECUTABLE_PATH and CHROMIUM_HEADLESS."""
    return render_browser(render.puppeteer_executable_path, render.chromium_headless)
