# lra-sfa: the two commands are `make run` and `make test`; each sets itself up.
# On a machine without a local CPU build of torch, point pip at PyTorch's CPU
# wheel index first, e.g.  make test PIP_TORCH_ARGS="--index-url <PyTorch CPU index>"
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
PIP_TORCH_ARGS ?=
STAMP := $(VENV)/.installed

.PHONY: help install run test test-all lint tables bench bench-kernels pathfinder-samples fmnist-data clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-20s %s\n", $$1, $$2}'

# PYTHONWARNINGS: setuptools notes that an editable install of a package-dir layout uses an import hook
# ("Editable installation"); informational, and the layout (lra_sfa.tasks from tasks/, ...) is deliberate.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(PIP_TORCH_ARGS) "$(TORCH_SPEC)"
	PYTHONWARNINGS="ignore:Editable installation" $(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP) ## create .venv and install lra-sfa with its dev extras (CPU torch)

run: $(STAMP) ## the main job: full vs SFA on a reduced ListOps (1-2 min on an idle 2-core CPU), then the comparison
	$(PY) -m lra_sfa.demo

test: $(STAMP) ## the CPU test suite (Triton kernels under TRITON_INTERPRET=1), slow tests excluded
	$(PY) -m pytest -q -m "not slow" -n 2 tests

test-all: $(STAMP) ## every test, slow ones included
	$(PY) -m pytest -q -n 2 tests

lint: $(STAMP) ## ruff
	$(PY) -m ruff check lra_sfa tasks baselines tests lab

tables: $(STAMP) ## regenerate results/tables, results/plots and the kernel README table from the committed records
	$(PY) -m lra_sfa.report
	$(PY) -m lra_sfa.bench.kernels mode=table

bench: $(STAMP) ## efficiency sweep of every conf/attn backend (GPU; small lengths on CPU)
	$(PY) -m lra_sfa.bench

bench-kernels: $(STAMP) ## SFA kernels against cuDNN / FlashAttention-2 by interleaved repeats (GPU; conf/bench_kernels.yaml)
	$(PY) -m lra_sfa.bench.kernels

pathfinder-samples: $(STAMP) ## a PNG grid of generated Pathfinder examples with their labels
	$(PY) -m lra_sfa.tasks.pathfinder mode=samples out=results/plots/pathfinder_samples.png

FMNIST_DIR := /usr/share/datasets/fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
fmnist-data: ## Fashion-MNIST idx files for task=fmnist: Debian's dataset-fashion-mnist (where apt exists)
	@if [ -f $(FMNIST_DIR)/t10k-labels-idx1-ubyte.gz ]; then echo "fmnist-data: already in $(FMNIST_DIR)"; \
	elif command -v apt-get >/dev/null; then \
	  $(SUDO) apt-get install -y dataset-fashion-mnist || \
	  { $(SUDO) apt-get update && $(SUDO) apt-get install -y dataset-fashion-mnist; }; \
	else echo "fmnist-data: no apt-get here; put the four idx .gz files of github.com/zalandoresearch/fashion-mnist" \
	  "in a folder and pass task.data_dir=<folder>" >&2; exit 1; fi

clean: ## remove outputs and caches (not .venv)
	rm -rf outputs multirun .pytest_cache .ruff_cache
