# maaskit: `make lab` opens the notebooks, `make test` runs everything CI runs.
# Both create .venv with the tested package set on first use (a few minutes: torch is large).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.maaskit-installed
UV     := $(VENV)/.uv-installed
# Jupyter refuses to run as root unless told; containers and CI machines often are root.
LAB_FLAGS := $(if $(filter 0,$(shell id -u)),--allow-root)
PYTEST_NOTEBOOKS := --nbval-lax --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg
# JupyterLab settings for this kit (no "get notified about Jupyter news?" pop-up), in the venv, not in $HOME
LAB_SETTINGS := $(VENV)/share/jupyter/lab/settings/overrides.d/maaskit.json
LINTED := maaskit tests benchmarks tools

.PHONY: install lab test test-fast test-nightly lint notebooks pins doctor clean chromium hey peers-background

install: $(STAMP) $(LAB_SETTINGS)

# Python's bytecode is written as modules are first imported, whatever the environment says: uv installs
# without compiling (all of torch, transformers, sympy ...: two minutes of a core), and a machine that sets
# PYTHONDONTWRITEBYTECODE would otherwise compile torch again in every process of the tests.
unexport PYTHONDONTWRITEBYTECODE

# The venv with uv in it, which installs the tested sets (tools/uv_pip.py: with pip's package sources).
$(UV): requirements/pins.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "maaskit needs Python 3.10 or newer, found " + sys.version.split()[0])'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { echo "could not create $(VENV): on Debian/Ubuntu, apt-get install python3-venv"; exit 1; }
	$(BIN)/python -m pip install --quiet --constraint requirements/pins.txt uv
	@touch $@

$(STAMP): pyproject.toml requirements/pins.txt $(UV)
	$(BIN)/python tools/uv_pip.py install --quiet --python $(BIN)/python --constraint requirements/pins.txt --editable ".[lab,dev]"
	@touch $@

$(LAB_SETTINGS): binder/overrides.json $(STAMP)
	@mkdir -p $(dir $@)
	cp $< $@

lab: install
	$(BIN)/jupyter lab --notebook-dir=notebooks $(LAB_FLAGS)

# The browser tests drive Debian's Chromium (never a downloaded one). Installed here when we
# are root on a Debian-like machine (CI); elsewhere install it yourself, or the browser tests
# are skipped with a note (and fail where CI=true).
chromium:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian's chromium for the browser tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else echo "note: /usr/bin/chromium missing; install Debian's chromium to run the browser tests"; fi

# `hey`, a compiled HTTP load generator, drives benchmarks/serving.py (and its smoke test): the load
# comes from a process that is not Python, so it measures the server. Installed like chromium.
hey:
	@if command -v hey >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian's hey for the serving benchmark"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq hey >/dev/null; \
	else echo "note: hey missing; install it (Debian: apt-get install hey) to run benchmarks/serving.py"; fi

# The peers' own environments (KServe, MLServer, vLLM's CPU build: tools/peers.py), built in the background
# while maaskit installs and the first tests run; the tests that need one wait for its build. (If a later
# step fails, the build still finishes: .peers/ is a cache reused by the next run.)
peers-background: $(UV)
	@mkdir -p .peers
	@$(BIN)/python tools/peers.py kserve mlserver vllm > .peers/build.log 2>&1 &

# Unit tests, every notebook under papermill, nbval over every notebook whose outputs it compares
# (tests/conftest.py), and the browser tests, in one pytest run; lint, format check and types beside it
# (mypy's minute of one core, overlapped: its report comes at the end, and fails the run like a test).
# --dist loadfile keeps a module's tests on one worker (nbval's cells share a kernel); tests/conftest.py
# spreads the independent papermill runs over both, and hands out the longest units first (the order it
# gives is kept: --no-loadscope-reorder).
test: peers-background install chromium hey
	@$(MAKE) --no-print-directory lint > $(VENV)/lint.log 2>&1 & lint=$$!; \
	echo "lint runs beside the tests (make lint); its report comes at the end"; \
	$(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder --timeout 900 --durations 12 \
		-m "not nightly" tests notebooks $(PYTEST_NOTEBOOKS); tests=$$?; \
	wait $$lint; linted=$$?; echo "--- make lint:"; cat $(VENV)/lint.log; \
	test $$linted = 0 || echo "make lint failed"; test $$tests = 0 && test $$linted = 0

# The long variants of checks whose smoke form `make test` runs (e.g. a second model family through the
# compiled forward pass; tests/ marks them nightly): for a nightly job, or before changing what they cover.
test-nightly: install
	$(BIN)/python -m pytest -n 2 --timeout 1800 --durations 12 -m nightly tests

lint: $(STAMP)
	$(BIN)/ruff check $(LINTED) notebooks
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/mypy

# The fast unit tests alone, for the edit-test loop (under a minute on 2 cores): no notebooks, and none
# of the tests marked slow in tests/conftest.py (torchrun, the browser, peers, load, LM training).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -n 2 -m "not notebook and not slow" tests

# Re-execute the notebooks and keep only the outputs nbval checks (after editing a notebook).
notebooks: $(STAMP)
	$(BIN)/python tools/refresh_notebooks.py notebooks/*.ipynb

# Record the installed set as the new tested pins.
pins: $(STAMP)
	{ sed -n '/^#/p' requirements/pins.txt; $(BIN)/python -m pip freeze --exclude-editable | grep -v '^maaskit'; } > requirements/pins.txt.new
	mv requirements/pins.txt.new requirements/pins.txt

doctor: $(STAMP)
	$(BIN)/maaskit doctor

clean:
	rm -rf $(VENV) .peers artifacts .pytest_cache
