# pglab — every target installs what it needs first (a .venv in the repo).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel by default; a GPU user sets e.g. TORCH_SPEC="torch==2.13.0" TORCH_INDEX=https://download.pytorch.org/whl/cu128
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
EXTRAS ?= dev,plot,launchers
ARGS ?=
TEST_WORKERS ?= auto

.PHONY: help install train test lint bench ladder zoo gpu-check clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install -q -e ".[$(EXTRAS)]"
	touch $@

install: $(BIN)/.installed  ## create .venv with torch (CPU wheel unless TORCH_SPEC/TORCH_INDEX say otherwise) and pglab

train: install  ## train the default PPO on CartPole-v1 (extra Hydra overrides: make train ARGS="seed=1")
	$(BIN)/python -m pglab.run.train $(ARGS)

test: install  ## run the test suite (unit + integration) on TEST_WORKERS processes (pytest-xdist; auto = one per core)
	WANDB_MODE=offline WANDB_SILENT=true $(BIN)/python -m pytest -q -n $(TEST_WORKERS) $(ARGS)

lint: install  ## ruff
	$(BIN)/ruff check src tests benchmarks

bench: install  ## pglab vs SB3 speed benchmarks, ≈ 9 min (writes benchmarks/results/speed.*; ARGS=--learning adds learning.py)
	$(BIN)/pip install -q -e ".[$(EXTRAS),bench]"
	$(BIN)/python benchmarks/run_all.py $(ARGS)

ladder: install  ## every rung on CartPole + Acrobot, 5 seeds (one population job per rung where pglab allows), docs/ladder.md (≈ 30 min on 2 busy cores; reduced: ARGS="--steps 50000 --seeds 2 --envs cartpole")
	$(BIN)/python benchmarks/ladder.py $(ARGS)

zoo: install  ## tuned presets vs SB3 at the same settings, 5 seeds each (hours, resumable; benchmarks/results/zoo.*)
	$(BIN)/pip install -q -e ".[$(EXTRAS),bench,box2d,mujoco]"
	$(BIN)/python benchmarks/zoo.py --peers $(ARGS)

gpu-check: install  ## on a CUDA machine: CUDA tests + a short GPU throughput benchmark (< 5 min)
	WANDB_MODE=disabled $(BIN)/python benchmarks/gpu_check.py

clean:  ## remove outputs and caches (keeps .venv)
	rm -rf outputs multirun wandb lightning_logs .pytest_cache .ruff_cache
