# syntax=docker/dockerfile:1
#
# Export worker image: the supervisor (Starlette /health, /metrics, API on $PORT)
# plus a pool of render children, each driving Debian's Chromium via Playwright.
#
# Build:  docker build -t export-worker .
# Run:    docker run --rm -p 3000:3000 -e DATABASE_URL=postgresql://... export-worker
# Check:  make image-check  (builds this file with podman and runs the image as a
#         deployment would: health, renders, fonts, non-root, tini, SIGTERM)
#
# The base tag is pinned to a minor Python on a fixed Debian release. For fully
# reproducible builds pin the digest too (python:3.11-slim-bookworm@sha256:...),
# and let a bot (Renovate/Dependabot) bump it; it is not pinned here because the
# digest moves with every security rebuild of the upstream image.
FROM python:3.11-slim-bookworm

# System packages: Debian's Chromium headless shell, which renders (the seed's
# PUPPETEER_EXECUTABLE_PATH=/usr/bin/chromium names the install, and with
# CHROMIUM_HEADLESS=shell the worker launches the shell beside it; the full
# browser package is left out: 66 MB smaller, and no browser UI in the image;
# CHROMIUM_HEADLESS=new needs it); no browser download at build or run time;
# libatomic1, which Playwright's bundled Node driver links and python's slim
# images lack (without it every render child fails to start); fonts so menus
# in any script render with real glyphs and emoji (Noto core for Latin, Greek,
# Cyrillic, Arabic, Hebrew, Thai, Devanagari and more; Noto CJK; Noto Color
# Emoji; Liberation for documents that name Arial or Times); fontconfig, whose
# install step builds the system font cache once here instead of per process at
# run time (the non-root user cannot write the system cache); tini as PID 1;
# curl for HEALTHCHECK. Versions are not pinned: bookworm(-security) only ever
# carries the current patch release of each package, so a pinned version would
# vanish from the mirror and break the build at the next Chromium security update.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        chromium-headless-shell \
        libatomic1 \
        ca-certificates \
        curl \
        fontconfig \
        fonts-dejavu-core \
        fonts-liberation \
        fonts-noto-core \
        fonts-noto-cjk \
        fonts-noto-color-emoji \
        tini \
    && rm -rf /var/lib/apt/lists/*

# Unprivileged runtime user with a home (Chromium writes its profile/crashpad
# state under $HOME) and a writable data dir for the embedded defaults
# (local storage, .eml outbox, embedded Postgres).
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /home/app --create-home \
        --shell /usr/sbin/nologin app \
    && mkdir -p /data \
    && chown app:app /data

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PUPPETEER_EXECUTABLE_PATH=/usr/bin/chromium \
    EXPORT_WORKER_DATA_DIR=/data \
    EXPORT_WORKER_CONFIG=/app/config.toml \
    PORT=3000

WORKDIR /app

# Dependencies first, in their own layer: it is rebuilt only when
# pyproject.toml changes, not on every source edit. The list is read from
# pyproject.toml itself so there is one source of truth for versions.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# Then the project itself (no dependency resolution: already installed above).
COPY README.md config.toml ./
COPY supervisor/ ./supervisor/
COPY render_child/ ./render_child/
COPY shared/ ./shared/
# `export-worker bench` is part of the command (its peer rows need the `bench` extra).
COPY bench/ ./bench/
RUN pip install --no-cache-dir --no-deps . \
    && export-worker --help > /dev/null

# Numeric uid:gid so runtimes that check runAsNonRoot can verify it (= app:app).
USER 10001:10001

EXPOSE 3000

# Docker-level liveness. /health answers 503 when a check fails (database,
# storage, Chromium canary, memory), so curl -f marks the container unhealthy.
# Railway uses its own healthcheckPath (railway.json) at deploy time.
# Exec form through sh -c so ${PORT} is expanded at run time.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["sh", "-c", "curl -fsS \"http://127.0.0.1:${PORT}/health\" || exit 1"]

# tini as PID 1 reaps zombies (Chromium helpers re-parented to PID 1) and
# forwards SIGTERM to the supervisor only (no -g): the supervisor drains
# in-flight renders for GRACEFUL_SHUTDOWN_TIMEOUT_MS and then kills each
# child's whole process tree itself. Signalling the whole group would kill
# Chromium mid-render before the supervisor could settle those jobs.
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["export-worker", "serve"]
