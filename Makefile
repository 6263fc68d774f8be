# The commands: `make workbook`, `make test` (everyday), `make test-all` (what CI runs) and
# `make lab` (JupyterLab on the notebooks).
# Each creates .venv when missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PROFILE ?= default

.PHONY: workbook test test-all test-numerics fuzz lab lint format bench clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: a looser spec pulls a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

workbook: $(STAMP)
	$(BIN)/cxr workbook run $(if $(RESUME),--resume $(RESUME),--profile $(PROFILE))

# JupyterLab (the lab extra, part of dev) on the numbered notebooks; 07 is the explorer
lab: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

# everything but the end-to-end runs marked `slow` (workbooks, the browser, kill -9 and
# resume, several processes, the fuzz ci profile): under 3 minutes on 2 cores
test: $(STAMP) lint
	$(BIN)/python -m pytest -n 2 -m "not slow"

# what .ci/run runs: every test, then the floating-point tests again under other MKL
# kernel branches (test-numerics)
test-all: $(STAMP) lint
	$(BIN)/python -m pytest -n 2
	$(MAKE) test-numerics

# MKL picks its kernels by CPU, so results differ in the last bits from one CPU to
# another (tests/numerics.py). Running the tests of floating-point results (model,
# anatomy, training, metrics and statistics) under other MKL_CBWR branches computes here
# what another CPU would: an assertion that holds on one kernel only fails on every machine.
NUMERICS := tests/model tests/anatomy tests/evaluate tests/base tests/test_train.py \
	tests/test_features.py tests/test_pretrain.py tests/test_generate.py \
	tests/test_ablation.py tests/test_explorer.py tests/test_inference.py
MKL_BRANCHES ?= COMPATIBLE AVX2
test-numerics: $(STAMP)
	for branch in $(MKL_BRANCHES); do \
	  echo "== the numerics tests under MKL_CBWR=$$branch"; \
	  MKL_CBWR=$$branch $(BIN)/python -m pytest -n 2 -q -m "not slow" $(NUMERICS) || exit 1; \
	done

# the parsers of outside input under thousands of random inputs each (tests/fuzz; make
# test runs the same tests with a few hundred derandomized examples, the ci profile)
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest tests/fuzz -q

# ruff, the import layers of pyproject.toml's [tool.importlinter] (docs/architecture.md),
# and the container image's Dockerfile (hadolint, from the dev extra; docs/cloud.md)
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/hadolint Dockerfile

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/cxr bench phantom

clean-venv:
	rm -rf $(VENV)
