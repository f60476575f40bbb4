# The README's commands. Each sets up what it needs on a fresh machine: a
# virtual environment in .venv with the pinned requirements, and the compiled
# extension (rebuilt whenever csrc/ or setup.py change).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CUDA toolkit's real root; torch's own guess is wrong where nvcc is linked into /usr/local/bin.
export CUDA_HOME ?= $(if $(wildcard /usr/local/cuda/bin/nvcc),/usr/local/cuda,)
export MAX_JOBS ?= 2

.PHONY: demo test lint format bench setup gpu-check dist
demo: setup
	$(BIN)/nst-ext demo

test: setup lint
	$(BIN)/python -m pytest -q tests

# ruff's lint and format check (pinned in requirements.txt; its rules in pyproject.toml) over everything
# with Python in it, clang-format's check (.clang-format) over csrc/, and mypy over the core floors
# (pyproject.toml). `make format` applies the two formatters.
PYTHON_SOURCES := nst_ext tests benchmarks scripts setup.py
CSRC_SOURCES = $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh')
lint: $(VENV)/.requirements
	$(BIN)/ruff check $(PYTHON_SOURCES)
	$(BIN)/ruff format --check $(PYTHON_SOURCES)
	$(BIN)/clang-format --dry-run --Werror $(CSRC_SOURCES)
	$(BIN)/mypy

format: $(VENV)/.requirements
	$(BIN)/ruff format $(PYTHON_SOURCES)
	$(BIN)/clang-format -i $(CSRC_SOURCES)

bench: setup
	$(BIN)/python -m pytest benchmarks --benchmark-only --benchmark-json=benchmarks/results/latest.json
	$(BIN)/python benchmarks/report.py benchmarks/results/latest.json

# The one-shot GPU check, on a GPU machine's own torch (no venv, no network): builds there,
# runs the tests, benchmarks and sanitizer, writes $(RESULTS)/summary.md. Exit status 3: no GPU.
RESULTS ?= gpu-check-results
gpu-check:
	bash scripts/gpu_check.sh $(RESULTS)

# A release: the sdist, and the wheel built from it (so the sdist is known to build), into dist/.
# One cp310-abi3 wheel serves every Python from 3.10; it needs the torch minor version it was built
# against. The CUDA kernels are built for the visible GPU, or with none visible for setup.py's
# DEFAULT_CUDA_ARCHS when NST_EXT_FORCE_CUDA=1.
dist: $(VENV)/.requirements
	$(BIN)/python -m build --no-isolation --outdir dist .

setup: $(VENV)/.built

$(VENV)/.requirements: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -r requirements.txt
	touch $@

$(VENV)/.built: $(VENV)/.requirements setup.py pyproject.toml $(shell find csrc -type f)
	rm -f nst_ext/_C*.so nst_ext/_build_info.json  # an older build's library would be found first
	$(BIN)/python -m pip install --disable-pip-version-check --no-build-isolation --no-deps -e .
	touch $@
