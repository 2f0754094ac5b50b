# One place for the commands the README and CI use.
PYTHON ?= python3
TORCH_VERSION ?= 2.13.0
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= offline

.PHONY: install test lint bench

install:  ## torch first (the CPU wheel on disk), then the package with dev + launcher extras
	$(PYTHON) -m pip install "torch==$(TORCH_VERSION)" || $(PYTHON) -m pip install "torch>=2.4"
	$(PYTHON) -m pip install -e ".[dev,slurm]"

test:
	$(PYTHON) -m pytest -q -x --durations=15

BENCH_ARGS ?=
bench:  ## pruned-vs-dense speed + gate/runner overhead -> outputs/bench/ (see docs/benchmarks.md)
	$(PYTHON) scripts/bench_speed.py --out outputs/bench $(BENCH_ARGS)
	$(PYTHON) scripts/bench_runner.py --quick --out outputs/bench $(BENCH_ARGS)

lint:
	$(PYTHON) -m ruff check src tests scripts
