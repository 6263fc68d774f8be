# The commands: `make workbook`, `make test` and `make lab` (JupyterLab on the notebooks).
# Each creates .venv when missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PROFILE ?= default

.PHONY: workbook test fuzz lab lint format bench clean-venv

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

test: $(STAMP) lint
	$(BIN)/python -m pytest -n 2

# the parsers of outside input under thousands of random inputs each (tests/fuzz; make
# test runs the same tests with a few hundred derandomized examples, the ci profile)
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest tests/fuzz -q

# ruff, and the import layers of pyproject.toml's [tool.importlinter] (docs/architecture.md)
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/cxr bench phantom

clean-venv:
	rm -rf $(VENV)
