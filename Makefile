# legguard developer entry points. Every target bootstraps .venv itself, so a fresh clone needs only `make X`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint typecheck pytest fuzz slow crash bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: install
	$(BIN)/legguard demo --seconds 30 --seed 7 --faults light --db demo.db

lint: install
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

typecheck: install
	$(BIN)/mypy

pytest: install
	$(BIN)/pytest

test: lint typecheck pytest

fuzz: install
	$(BIN)/pytest -m fuzz -p no:cacheprovider --hypothesis-show-statistics

slow: install
	$(BIN)/pytest -m slow

# The crash harness: engine and emulator as separate processes, SIGKILL at every dangerous point (~3 min).
crash: install
	$(BIN)/pytest -m slow tests/engine/test_crash_harness.py

bench: install
	$(BIN)/legguard bench --write-docs docs/performance.md

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis build src/*.egg-info
