#!/usr/bin/env bash
# Install a Chromium for the render children, the fonts menus print with, prometheus
# (and promtool) for the alert-rule tests, and pgbouncer for the pooler tests.
# Debian/Ubuntu: the distribution's packages (what the Dockerfile uses too). The Noto fonts cover Latin, Greek, Cyrillic, Arabic, Hebrew, Devanagari, Thai,
# Chinese, Japanese, Korean and colour emoji (about 148 MB installed; see README "Fonts").
# Elsewhere: Playwright's own download (then run with PUPPETEER_EXECUTABLE_PATH="").
set -euo pipefail
venv=${1:-.venv}
if command -v apt-get >/dev/null 2>&1; then
    need=()
    command -v chromium >/dev/null 2>&1 || need+=(chromium fonts-dejavu-core fonts-liberation)
    # the headless shell renders (CHROMIUM_HEADLESS=shell, shared/chromium.py); the full browser
    # above is for CHROMIUM_HEADLESS=new and the tests that compare the two
    command -v chromium-headless-shell >/dev/null 2>&1 || need+=(chromium-headless-shell)
    command -v promtool >/dev/null 2>&1 || need+=(prometheus)
    command -v pdfinfo >/dev/null 2>&1 || need+=(poppler-utils)
    command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || need+=(pgbouncer)  # the pooler tests (issue 21)
    for pkg in fonts-noto-core fonts-noto-cjk fonts-noto-color-emoji; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need+=("$pkg")
    done
    if [ ${#need[@]} -gt 0 ]; then
        sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        echo "installing from apt: ${need[*]}" >&2
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    fi
    # Debian's prometheus and pgbouncer packages start servers; the tests start their own.
    if command -v systemctl >/dev/null 2>&1; then systemctl stop prometheus pgbouncer 2>/dev/null || true; fi
else
    echo "no apt-get: downloading Playwright's Chromium; set PUPPETEER_EXECUTABLE_PATH=\"\" to use it" >&2
    "$venv/bin/playwright" install chromium
    echo "install Noto fonts yourself (Noto Sans, Noto Sans CJK, Noto Color Emoji), or CJK and emoji print as boxes" >&2
fi
