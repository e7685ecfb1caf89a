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

.PHONY: demo test test-quick lint typecheck bench clean-venv browsers check-install

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/brainvq demo --out runs/demo --force

# The report test renders RUN/report.html in headless Chromium; install it here (never from a test)
# where apt-get and root are available, else that one test skips and says why.
browsers:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    apt-get update -qq >/dev/null && apt-get install -y -qq chromium >/dev/null 2>&1; } || \
	  echo "note: Chromium not installed; the report-rendering test will be skipped"

# One pytest-xdist worker per core, whole files per worker (module fixtures are built once);
# tests/conftest.py gives each worker, and the commands it starts, its share of the threads.
test: $(STAMP) browsers
	$(BIN)/python -m pytest -m "not gpu" -q --durations=20 -n auto --dist loadfile

test-quick: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

# The package as a user installs it: not editable, into a folder of its own, used from another folder
# (with a decoy configs/demo.yaml there that must not replace the shipped preset).
check-install: $(STAMP)
	@d=$$(mktemp -d) && \
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation --target "$$d/site" . && \
	mkdir -p "$$d/work/configs" && printf 'model:\n  num_embeddings: 7\n' > "$$d/work/configs/demo.yaml" && \
	cd "$$d/work" && PYTHONPATH="$$d/site" $(abspath $(BIN))/python -m brainvq.cli demo --help >/dev/null && \
	PYTHONPATH="$$d/site" $(abspath $(BIN))/python -m brainvq.cli --version && \
	PYTHONPATH="$$d/site" $(abspath $(BIN))/python -c "import brainvq, pathlib; \
	from brainvq.config import find_preset, load_config, preset_names; \
	assert pathlib.Path(brainvq.__file__).is_relative_to('$$d/site'), brainvq.__file__; \
	assert load_config(find_preset('demo')).model.num_embeddings == 128; \
	print('installed presets:', ', '.join(preset_names()))" && \
	rm -rf "$$d"

bench: $(STAMP)
	$(BIN)/python benchmarks/sampling.py
	$(BIN)/python benchmarks/training.py

clean-venv:
	rm -rf $(VENV)
