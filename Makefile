# Two commands do everything on a fresh machine (both create .venv on first use):
#   make run    execute every notebook in order into runs/latest/ (executed .ipynb + HTML, results.json, RESULTS.md);
#               FULL=1 for the full plans of notebooks 04 and 05; NOTEBOOKS="01 02" for a subset
#   make test   unit tests of helpers + every notebook executed by nbval with the tiny stand-in, into runs/test/
# Also: make lab (JupyterLab), make kit (a folder that installs a classroom with no internet; KIT=folder to install
# from one), make llamacpp, make prefetch, make clean-models. Pick the model with VLM_MODEL (see README).

PYTHON ?= python3
# PyTorch's idle OpenMP threads sleep instead of spinning, so they don't take the cores OpenVINO decodes on
# (OpenVINO's llm_bench recommends it; notebook 05 measures the difference with one core busy).
OMP_WAIT_POLICY ?= PASSIVE
export OMP_WAIT_POLICY
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
REQUIREMENTS ?= requirements.txt
NO_DEPS_REQUIREMENTS ?= requirements-no-deps.txt
# PyTorch's own index of CPU-only builds (no CUDA libraries: a third of the size), as openvino_notebooks installs it
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
KIT ?=
PIP := -m pip --disable-pip-version-check -q

.PHONY: run test prefetch lab llamacpp kit _kit package-source clean-models chromium

# Where pip takes the packages from: a kit folder only (no network at all), or PyPI with PyTorch's CPU index when it
# answers (one probe of a few seconds); the line it prints says which, and why.
define PACKAGE_SOURCE
if [ -n "$(KIT)" ]; then \
	test -f "$(KIT)/kit.json" || { echo "$(KIT) is not a complete kit (no kit.json in it): make one with \`make kit\` where there is internet, and copy the whole folder." >&2; exit 2; }; \
	kit_python=$$(sed -n 's/.*"python": "\([0-9.]*\)".*/\1/p' "$(KIT)/kit.json"); \
	this_python=$$($(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
	test "$$kit_python" = "$$this_python" || { echo "The kit in $(KIT) was made for Python $$kit_python and this machine's $(PYTHON) is Python $$this_python: make the kit with Python $$this_python." >&2; exit 2; }; \
	echo "Installing from the kit in $(KIT), with no network."; \
	SOURCE="--no-index --find-links $(KIT)/wheels"; \
elif $(PYTHON) -c "import urllib.request; urllib.request.urlopen('$(TORCH_INDEX)/torch/', timeout=5)" 2>/dev/null; then \
	echo "PyTorch: the CPU-only build, from $(TORCH_INDEX)."; SOURCE="--extra-index-url $(TORCH_INDEX)"; \
else \
	echo "PyTorch's CPU-only index ($(TORCH_INDEX)) does not answer: installing PyPI's build, whose NVIDIA CUDA libraries add about 4 GB that a CPU never uses."; SOURCE=""; \
fi
endef

package-source:  # says where pip would take the packages from, and why (the tests use it)
	@$(PACKAGE_SOURCE); echo "pip options: $$SOURCE"

# A failed install leaves no half-made .venv behind (the next run starts clean).
$(STAMP): requirements.txt requirements-no-deps.txt pyproject.toml
	@$(PACKAGE_SOURCE); \
	fresh=$$(test -x $(PY) || echo yes); \
	{ test -x $(PY) || $(PYTHON) -m venv $(VENV); } && \
	$(PY) $(PIP) install $$SOURCE -r $(REQUIREMENTS) && \
	$(PY) $(PIP) install $$SOURCE --no-deps -r $(NO_DEPS_REQUIREMENTS) && \
	$(PY) $(PIP) install --no-index --no-deps --no-build-isolation -e . || \
	{ status=$$?; test -z "$$fresh" || rm -rf $(VENV); echo "The install failed (see above); nothing half-installed was kept." >&2; exit $$status; }
	@if [ -n "$(KIT)" ] && [ -d "$(KIT)/cache" ]; then mkdir -p $(or $(VLM_CACHE),cache) && cp -rn "$(KIT)/cache/." $(or $(VLM_CACHE),cache)/; fi
	@touch $@

# llama.cpp, the peer that notebook 05 measures beside OpenVINO (helpers/deep/llamacpp.py): `make test` builds it,
# `make run` only when notebook 05 is in the run, `make lab` never (`make llamacpp` builds it by hand). It is a
# source package: built once per .venv and CPU (4-8 minutes on 2 cores), from its source archive, which also carries
# llama.cpp's GGUF converter. Built at its best for this CPU: every x86 instruction set llama.cpp has a switch for
# and /proc/cpuinfo lists (AVX-512 with VNNI and BF16 where present: prompts 1.5x faster than AVX2 alone, measured
# with llama-bench), AMX off (llama.cpp's AMX kernels serve prompt batches only, and trap with SIGILL at `tilezero` on
# some AMX machines: llama.cpp PR #26954). GGML_OPENMP=OFF: llama.cpp's own thread pool, which OMP_WAIT_POLICY=PASSIVE
# (above, for PyTorch) does not slow down; with OpenMP, PASSIVE cut llama-bench's 2-thread decoding from ~170 to 55
# tokens/s. No /proc/cpuinfo (macOS): llama.cpp's own GGML_NATIVE. Its build tools are pinned in requirements.txt.
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
	$(PY) $(PIP) download $(if $(KIT),--no-index --find-links $(KIT)/cache/llama.cpp) --no-binary :all: --no-deps \
		llama-cpp-python==$(LLAMA_CPP_VERSION) -d $(dir $@)

$(LLAMA_STAMP): | $(STAMP) $(LLAMA_SDIST)
	@echo "Building llama-cpp-python $(LLAMA_CPP_VERSION) from source for this CPU, once for this .venv (4-8 minutes on 2 cores):"
	@echo "  $(LLAMA_CMAKE_ARGS)"
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=2 $(PY) $(PIP) install --no-index --no-deps \
		--no-build-isolation --no-cache-dir --force-reinstall $(LLAMA_SDIST)
	@rm -f $(VENV)/.llama-cpp-*
	@touch $@

llamacpp: $(LLAMA_STAMP)

# FULL=1: the full plans of notebooks 04 and 05 (about an hour) instead of the default ones (about 20 minutes)
RUNS_LLAMA := $(if $(NOTEBOOKS),$(filter 05%,$(NOTEBOOKS)),all)
run: $(STAMP) $(if $(RUNS_LLAMA),$(LLAMA_STAMP))
	$(if $(FULL),VLM_FULL=$(FULL) )$(PY) -m helpers.run_series $(NOTEBOOKS)

# Tests never touch the network (HF_HUB_OFFLINE=1), use the tiny stand-in and quick benchmarks, and write only into
# runs/test/ (never where `make run` writes: runs/latest/ and models/).
test: $(STAMP) $(LLAMA_STAMP) chromium
	HF_HUB_OFFLINE=1 VLM_MODEL=synthetic-tiny VLM_QUICK=1 VLM_RUN_DIR=$(CURDIR)/runs/test \
		VLM_MODELS_DIR=$(CURDIR)/runs/test/models \
		$(PY) -m pytest --nbval-lax --nbval-cell-timeout=1800 -p no:cacheprovider $(PYTEST_ARGS)

prefetch: $(STAMP)
	$(PY) -m helpers.prefetch

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

# A kit for a classroom: on one machine with internet, every wheel the course installs (for this platform and
# Python; PyTorch's CPU-only build where its index answers; a package PyPI has only as source, e.g. docopt, is built
# into a wheel here, so that laptops need no build tools for it), llama.cpp's source archive, the model as `make prefetch`
# fetches it (when the Hub answers), and a README. Written to $(KIT).partial, renamed into place when complete.
KIT_DIR := $(or $(KIT),kit)
kit: override KIT :=
kit: $(STAMP)
	@$(MAKE) --no-print-directory _kit KIT= KIT_DIR=$(KIT_DIR)

_kit:
	@rm -rf "$(KIT_DIR).partial"; mkdir -p "$(KIT_DIR).partial/wheels" "$(KIT_DIR).partial/cache/llama.cpp"
	@start=$$(date +%s); $(PACKAGE_SOURCE); \
	$(PY) $(PIP) wheel $$SOURCE -r $(REQUIREMENTS) -w "$(KIT_DIR).partial/wheels" && \
	$(PY) $(PIP) wheel $$SOURCE --no-deps -r $(NO_DEPS_REQUIREMENTS) -w "$(KIT_DIR).partial/wheels" && \
	{ cp $(LLAMA_SDIST) "$(KIT_DIR).partial/cache/llama.cpp/" 2>/dev/null || $(PY) $(PIP) download --no-binary :all: \
		--no-deps llama-cpp-python==$(LLAMA_CPP_VERSION) -d "$(KIT_DIR).partial/cache/llama.cpp"; } || \
		{ rm -rf "$(KIT_DIR).partial"; echo "The kit could not be downloaded (see above); nothing half-made was kept." >&2; exit 1; }; \
	VLM_CACHE="$(KIT_DIR).partial/cache" $(PY) -m helpers.prefetch || echo "The kit has no model (the Hub did not answer): learners' laptops will use the offline stand-in."; \
	torch=$$(ls "$(KIT_DIR).partial/wheels" | grep -o '^torch-[^-]*' | head -1); \
	printf '{"python": "%s", "platform": "%s", "torch": "%s", "made": "%s"}\n' \
		"$$($(PY) -c 'import sys; print("%d.%d" % sys.version_info[:2])')" "$$(uname -sm)" "$$torch" "$$(date -Is)" \
		> "$(KIT_DIR).partial/kit.json"; \
	printf '# A classroom kit of the SmolVLM-on-CPU course\n\nOn each laptop, in the course folder (a copy of the repository), with no network:\n\n    make lab KIT=%s\n    make run KIT=%s\n\nThis kit was made for %s, Python %s.\n' \
		"$(abspath $(KIT_DIR))" "$(abspath $(KIT_DIR))" "$$(uname -sm)" "$$($(PY) -c 'import sys; print("%d.%d" % sys.version_info[:2])')" \
		> "$(KIT_DIR).partial/README.md"; \
	rm -rf "$(KIT_DIR)" && mv "$(KIT_DIR).partial" "$(KIT_DIR)" && \
	echo "Kit written to $(KIT_DIR): $$(du -sh "$(KIT_DIR)" | cut -f1) in $$(( $$(date +%s) - start )) s."

clean-models:
	rm -rf models/

# The browser test drives Debian's Chromium (Playwright's own browser download can't work offline).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
chromium:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; } || \
		echo "Could not install chromium; the browser test will be skipped (it fails under CI)."
