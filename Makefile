# One-command entry points. Each target builds .venv from nothing when it is missing.
# GPU users: make serve TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" EXTRAS=gpu
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev,cpu
BIN := $(VENV)/bin
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
ARGS ?=
PRESET ?= sudoku-cpu

.PHONY: install serve test lint train bench bench-model bench-train compare clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

serve: $(STAMP)
	$(BIN)/python -m server $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The browser test drives Debian's Chromium (no browser download); install it when it is missing.
CHROMIUM ?= /usr/bin/chromium
$(CHROMIUM):
	if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium

test: lint $(CHROMIUM)
	$(BIN)/python -m pytest $(ARGS)

train: $(STAMP)
	$(BIN)/python -m training.run --preset $(PRESET) $(ARGS)

bench: $(STAMP)
	$(BIN)/python -m benchmarks.serve $(ARGS)

bench-model: $(STAMP)
	$(BIN)/python -m benchmarks.model $(ARGS)

bench-train: $(STAMP)
	$(BIN)/python -m benchmarks.train --preset $(PRESET) $(ARGS)

compare: $(STAMP)
	$(BIN)/python -m benchmarks.compare_models $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
