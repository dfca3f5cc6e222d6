# Two commands do everything on a fresh machine (both create .venv on first use):
#   make run    execute every notebook in order into runs/latest/ (executed .ipynb + HTML, results)
#   make test   unit tests of helpers + every notebook executed by nbval with the tiny stand-in
# Pick the model with VLM_MODEL (see README). Extra: make prefetch, make clean-models.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test prefetch lab clean-models chromium

$(STAMP): requirements.txt requirements-no-deps.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	$(PY) -m pip install --disable-pip-version-check -q --no-deps -r requirements-no-deps.txt
	$(PY) -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
	@touch $@

run: $(STAMP)
	$(PY) -m helpers.run_series $(NOTEBOOKS)

# Tests never touch the network (HF_HUB_OFFLINE=1) and use the tiny stand-in and quick benchmarks.
test: $(STAMP) chromium
	HF_HUB_OFFLINE=1 VLM_MODEL=synthetic-tiny VLM_QUICK=1 $(PY) -m pytest --nbval-lax --nbval-cell-timeout=1800 -p no:cacheprovider $(PYTEST_ARGS)

prefetch: $(STAMP)
	$(PY) -m helpers.prefetch

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

clean-models:
	rm -rf models/

# The browser test drives Debian's Chromium (Playwright's own browser download can't work offline).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
chromium:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; } || \
		echo "Could not install chromium; the browser test will be skipped (it fails under CI)."
