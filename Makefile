# The two set-up commands: `make demo` (render the sample menus on the embedded
# defaults) and `make test` (the whole suite). Both create the virtualenv and
# install Chromium first. `make gate` = lint + types + tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Debian's Chromium where it exists; otherwise Playwright's own download.
CHROMIUM_ENV := $(if $(wildcard /usr/bin/chromium),,PUPPETEER_EXECUTABLE_PATH=)

.PHONY: setup chromium demo test test-stress coverage lint clones types gate bench serve image-check clean golden layout-picture

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

setup: $(BIN)/.installed

chromium: setup
	scripts/install-chromium.sh $(VENV)

demo: chromium
	$(CHROMIUM_ENV) $(BIN)/export-worker demo

serve: chromium
	$(CHROMIUM_ENV) $(BIN)/export-worker serve

# The suite in parallel (pytest-xdist), then any test marked serial alone: scripts/run-tests.sh.
# PYTEST_WORKERS (3) sets the workers; PYTEST_ARGS adds pytest arguments.
test: chromium
	$(CHROMIUM_ENV) scripts/run-tests.sh

# The suite beside two CPU hogs (stress-ng --cpu 2): it must pass on a busy machine.
test-stress: chromium
	$(CHROMIUM_ENV) scripts/run-tests.sh --stress

# The suite under coverage (children, CLI and serve included): the total, a per-package table,
# and a failure if the total drops more than 1 point below .ci/coverage-baseline.
coverage: chromium
	$(CHROMIUM_ENV) scripts/run-tests.sh --coverage

# Re-render the golden images of the sample menus (tests/golden/*.png); review and commit them.
golden: chromium
	UPDATE_GOLDEN=1 $(CHROMIUM_ENV) $(BIN)/pytest -q tests/integration/test_menu_golden.py

lint: setup clones
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python scripts/check_size.py

# scripts/check_size.py: no class over 200 lines, no function over 50 (declarative tables
# aside), no radon grade worse than C, in the product code; its UNDER_REWRITE lists the files
# other work is rewriting now.
#
# The clone detector: no block of 6 or more lines copied within the product code (imports,
# docstrings, comments and signatures aside). A clone is removed by giving the code one owner.
CLONE_PACKAGES := supervisor render_child shared bench
clones: setup
	$(BIN)/pylint --persistent=n --score=n --disable=all --enable=duplicate-code \
	    --min-similarity-lines=6 --ignore-imports=y --ignore-docstrings=y --ignore-comments=y \
	    --ignore-signatures=y $(CLONE_PACKAGES)

types: setup
	$(BIN)/mypy

gate: lint types test

# Build the Dockerfile with podman and run the image as a deployment would
# (scripts/image-check.sh; root, podman and debootstrap needed).
image-check: setup
	scripts/image-check.sh

bench: chromium
	$(CHROMIUM_ENV) $(BIN)/export-worker bench

clean:
	rm -rf $(VENV) .export-worker .mypy_cache .ruff_cache .pytest_cache .coverage .coverage.*

# The picture of the layout (docs/architecture/imports.svg): the supervisor's packages and
# loop modules, an arrow from each importer to what it imports (pydeps; needs graphviz's dot).
layout-picture: setup
	$(BIN)/pip install -q pydeps
	$(BIN)/pydeps supervisor --noshow --max-module-depth 2 --only supervisor --exclude-exact supervisor \
		--reverse --rankdir BT -o docs/architecture/imports.svg
