# Three verbs (run, test, check) plus bench. Everything runs from a virtualenv the
# Makefile creates, so a fresh machine needs only Python >= 3.11.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
# A second client environment: SDK 2.26 sends JSON where 3.x sends multipart, and both must work.
SDK2_VENV ?= .venv-sdk2
SDK2_STAMP := $(SDK2_VENV)/.installed
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

$(SDK2_STAMP):
	$(PYTHON) -m venv $(SDK2_VENV)
	$(SDK2_VENV)/bin/pip install --quiet "openai==2.26.0"
	touch $@

## test: install the dev dependencies and run the whole suite
test: $(STAMP) $(SDK2_STAMP)
	GATEWAY_SDK2_PYTHON=$(SDK2_VENV)/bin/python $(BIN)/python -m pytest $(ARGS)

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
	rm -rf $(VENV) $(SDK2_VENV) .gateway-data .mypy_cache .ruff_cache
