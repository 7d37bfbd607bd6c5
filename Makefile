# cpc-embed: the two quick-start commands are `make serve` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
# Pinned on purpose: an unpinned torch pulls a multi-GB CUDA build.
TORCH_PIN := torch==2.13.0

.PHONY: serve test lint typecheck pytest models docker-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Serving needs no torch: the `serve` extra only.
$(VENV)/.serve-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[serve]"
	touch $@

# Tests run both halves: serve + train + dev.
$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "$(TORCH_PIN)" -e ".[serve,train,dev]"
	touch $@ $(VENV)/.serve-installed

serve: $(VENV)/.serve-installed
	$(BIN)/cpc-embed serve --host $(HOST) --port $(PORT)

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@if [ -f Dockerfile ]; then $(BIN)/hadolint Dockerfile; fi

typecheck: $(VENV)/.dev-installed
	$(BIN)/mypy

pytest: $(VENV)/.dev-installed
	$(BIN)/python -m pytest -q

test: lint typecheck pytest

# Rebuilds models/{audio,image,text}: corpora (Debian packages: see .ci/run), training,
# export, evaluation (about two hours on 2 cores).
models: $(VENV)/.dev-installed
	BIN=$(BIN) bash scripts/build-models.sh

# Builds the image on a local Debian base, runs it and embeds one input per
# modality (needs root or a Docker daemon; by hand, not in CI).
docker-check: $(VENV)/.dev-installed
	PYTHON=$(BIN)/python bash scripts/docker-check.sh

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
