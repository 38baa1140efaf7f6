# mim-engine developer entry points.
#   make venv       create .venv and install the package (editable) with its dev and app extras
#   make demo       set up, train the demo checkpoint if examples/demo lacks it, and animate the
#                   example portrait with the example speech into demo.mp4
#   make test       run the test suite (tests/); pass extra pytest flags with PYTEST_ARGS=...;
#                   first installs Debian's chromium (apt-get) when /usr/bin/chromium is missing:
#                   tests/app drive it in a real browser
#   make bench      kernel microbenchmarks (bench/), the Triton compile report, the traffic counter,
#                   the stage-1 training step (saved bytes and CPU time, engine vs reference), the
#                   per-stage latency of img2img and audio2video (tiny and base; measured here,
#                   modeled on an H100) and PNG plots of the results (bench/results/plots/)
#   make gpu-check  on a machine with one NVIDIA GPU, in under 8 minutes: the gpu-marked and kernel
#                   tests on compiled kernels, the op benchmarks, the tuner, mim profile, one
#                   animate and one training step, into bench/results/gpu/<device>/REPORT.md
#                   (without CUDA it prints the plan and exits 0); see docs/gpu.md
#   make aot        build libmim_kernels (AOT-compiled Triton forward kernels, sm_80 + sm_90a, a C
#                   API in mim_kernels.h) and its demo program with CMake; see docs/aot.md
#   make clean      remove build artifacts (keeps .venv)
#   make distclean  clean, and remove .venv too

PYTHON      ?= python3
VENV        := .venv
VPY         := $(VENV)/bin/python
PIP         := $(VPY) -m pip
STAMP       := $(VENV)/.installed

TORCH_VERSION   ?= 2.13.0
# Fallback index for the CPU build when pip cannot find a local +cpu wheel.
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
# 1 when an NVIDIA driver is present: CUDA torch from PyPI and the `cuda` extras.
CUDA        ?= $(if $(shell command -v nvidia-smi 2>/dev/null),1,0)
# Set to 0 to skip the (slow, compiled) `cuda` extras on a CUDA machine.
CUDA_EXTRAS ?= 1

PYTEST_ARGS ?=
BENCH_ARGS  ?=

.PHONY: all venv demo test bench gpu-check aot clean distclean

# The browser of the browser tests (tests/app): Debian's package, driven by playwright (whose own
# browser download needs the network).
CHROMIUM        := /usr/bin/chromium

DEMO_DIR        := examples/demo
DEMO_CHECKPOINT := $(DEMO_DIR)/mim_tiny.safetensors
DEMO_OUT        ?= demo.mp4

all: test

venv: $(STAMP)

# Reinstalls when the packaging metadata changes; otherwise up to date.
$(STAMP): setup.py pyproject.toml
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
ifeq ($(CUDA),1)
# CUDA build from PyPI. Where pip's config has find-links holding a local +cpu wheel of
# the same version, that wheel wins (2.13.0+cpu sorts above 2.13.0): then uninstall it and
# ask again with pip's config files and PIP_FIND_LINKS left out.
	$(PIP) install "torch==$(TORCH_VERSION)"
	$(VPY) -c 'import sys, torch; sys.exit(torch.version.cuda is None)' \
	  || { $(PIP) uninstall -y torch && \
	       env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null $(PIP) install "torch==$(TORCH_VERSION)"; }
	$(PIP) install -e ".[dev,app]"
ifeq ($(CUDA_EXTRAS),1)
# causal-conv1d and flash-attn compile against the installed torch. They are optional
# (the engine falls back to its own paths), so a failed build only warns.
	{ $(PIP) install "setuptools>=64" wheel packaging ninja && \
	  $(PIP) install --no-build-isolation -e ".[dev,app,cuda]"; } \
	  || echo "warning: the 'cuda' extras did not install; continuing without them" >&2
endif
else
# The +cpu pin guarantees never pulling the multi-GB CUDA build. --no-compile: no .pyc for
# every file of every package at install (43 s instead of 91 s here); Python writes them on
# first import, for the modules actually used.
	$(PIP) install --no-compile "torch==$(TORCH_VERSION)+cpu" \
	  || $(PIP) install --no-compile "torch==$(TORCH_VERSION)+cpu" --index-url $(TORCH_CPU_INDEX)
	$(PIP) install --no-compile -e ".[dev,app]"
endif
	touch $@

demo: venv
	test -f $(DEMO_CHECKPOINT) || $(VPY) -m tools.train_demo
	$(VPY) -m mim animate --image $(DEMO_DIR)/portrait.png --crop center --audio $(DEMO_DIR)/speech.wav --out $(DEMO_OUT)

test: venv $(CHROMIUM)
	$(VPY) -m pytest tests -q $(PYTEST_ARGS)

$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then sudo=; elif command -v sudo >/dev/null 2>&1; then sudo=sudo; \
	else echo "make test: the browser tests (tests/app) need Debian's chromium at $(CHROMIUM); install it as root: apt-get install --no-install-recommends chromium" >&2; exit 1; fi; \
	command -v apt-get >/dev/null 2>&1 || { echo "make test: the browser tests (tests/app) need chromium at $(CHROMIUM) and this system has no apt-get to install Debian's package" >&2; exit 1; }; \
	$$sudo apt-get update && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium

bench: venv
	$(VPY) -m pytest bench -q --benchmark-only --benchmark-sort=name --benchmark-warmup=on \
	  --benchmark-columns=median,iqr,rounds --benchmark-json=bench/results/microbench.json $(BENCH_ARGS)
	$(VPY) -m tools.compile_report
	$(VPY) -m bench.traffic
	$(VPY) -m bench.training_step
	$(VPY) -m bench.latency --config tiny --config base --out-dir bench/results
	$(VPY) -m bench.ops
	$(VPY) -m bench.plots --results-dir bench/results --out-dir bench/results/plots

gpu-check: venv
	$(VPY) -m tools.gpu_check

aot: venv
	cmake -S . -B build/cmake -DMIM_BUILD_AOT=ON -DMIM_PYTHON=$(abspath $(VPY))
	cmake --build build/cmake -j

clean:
	rm -rf build dist .eggs *.egg-info .pytest_cache
	find . -path ./$(VENV) -prune -o -path ./.git -prune -o \
	  -type d -name __pycache__ -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
