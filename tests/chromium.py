"""Which Chromium a render child would launch: the configured binary, or Playwright's own.

PUPPETEER_EXECUTABLE_PATH names a binary (Debian's /usr/bin/chromium by default);
empty means the browser `playwright install chromium` downloaded. CHROMIUM_HEADLESS
(shell by default) picks the headless shell beside it, as the supervisor does
(shared/chromium.py). Only the tests ask (to skip where the product could not
render either), so it lives here.
"""

from __future__ import annotations

import os
from pathlib import Path

from shared.chromium import render_browser
from shared.vocabulary import ChromiumHeadless

# Where `playwright install` puts browsers: full Chromium, and the headless shell
# newer Playwright versions launch for headless mode.
_PLAYWRIGHT_GLOBS = ("chromium_headless_shell-*/chrome-linux*/headless_shell", "chromium-*/chrome-linux*/chrome")


def rendering_executable(executable_path: str) -> str:
    """What the supervisor puts in a child's options for this PUPPETEER_EXECUTABLE_PATH and
    the environment's CHROMIUM_HEADLESS: the tests that start children themselves use it."""
    headless = ChromiumHeadless(os.environ.get("CHROMIUM_HEADLESS", ChromiumHeadless.SHELL.value))
    return render_browser(executable_path, headless).executable_path


def chromium_binary(executable_path: str) -> str | None:
    """The binary a child will launch for this setting, or None when there is none."""
    executable_path = rendering_executable(executable_path)
    if executable_path:
        return executable_path if os.access(executable_path, os.X_OK) else None
    return playwright_chromium()


def playwright_chromium() -> str | None:
    root = Path(os.environ.get("PLAYWRIGHT_BROWSERS_PATH") or Path.home() / ".cache" / "ms-playwright")
    for pattern in _PLAYWRIGHT_GLOBS:
        found = sorted(root.glob(pattern))
        if found:
            return str(found[-1])
    return None
