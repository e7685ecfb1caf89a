# brainvq: the two commands a user needs, `make demo` and `make test`.
# Both create .venv on first use and install brainvq with its dev extras.
# TORCH is what pip installs first. The pinned default picks the wheel that
# matches this machine (on a CUDA Linux box PyPI's torch 2.13.0 is the CUDA
# build); GPU users who want another build run e.g.
#   make test TORCH="torch --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.brainvq-installed

.PHONY: demo test test-quick lint typecheck bench clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/brainvq demo --out runs/demo --force

test: $(STAMP)
	$(BIN)/python -m pytest -m "not gpu" -q

test-quick: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python benchmarks/sampling.py
	$(BIN)/python benchmarks/training.py

clean-venv:
	rm -rf $(VENV)
