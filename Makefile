# Three verbs (run, test, check) plus bench. Everything runs from a virtualenv the
# Makefile creates, so a fresh machine needs only Python >= 3.11.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
RUN_STAMP := $(VENV)/.installed

.PHONY: run test check bench sim token clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(RUN_STAMP)

## run: serve the gateway on 127.0.0.1:8080 (development mode: embedded Redis, simulator upstream)
run: $(RUN_STAMP)
	$(BIN)/gateway serve --dev --config config/dev.yaml $(ARGS)

## test: install the dev dependencies and run the whole suite
test: $(STAMP)
	$(BIN)/python -m pytest $(ARGS)

## check: formatting, lint and types
check: $(STAMP)
	$(BIN)/ruff format --check gateway tests bench
	$(BIN)/ruff check gateway tests bench
	$(BIN)/mypy gateway bench

## bench: gateway vs direct vs nginx (needs wrk and nginx: see README)
bench: $(STAMP)
	$(BIN)/python -m bench $(ARGS)

sim: $(RUN_STAMP)
	$(BIN)/gateway sim $(ARGS)

clean:
	rm -rf $(VENV) .gateway-data .mypy_cache .ruff_cache
