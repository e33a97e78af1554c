# The two set-up commands: `make demo` (the main job) and `make test` (the fast suite).
# Each creates .venv if absent and installs the project into it; nothing needs installing by hand.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo demo-quick test test-slow bench mutation install clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/noisyseg demo --out runs/demo

demo-quick: $(STAMP)
	$(BIN)/noisyseg demo --quick --out runs/demo-quick

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow; rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 5 ]

$(VENV)/.bench: $(STAMP)
	$(BIN)/python -m pip install -q -e ".[test,bench]"
	touch $(VENV)/.bench

bench: $(VENV)/.bench
	$(BIN)/python benchmarks/run_all.py

# mutation score of the wiring modules ([tool.mutmut] in pyproject.toml); ~1 h on 2 cores
mutation: $(STAMP)
	$(BIN)/python -m pip install -q "mutmut==3.8.1"
	OMP_NUM_THREADS=1 $(BIN)/mutmut run --max-children 2
	$(BIN)/mutmut results

clean:
	rm -rf runs .pytest_cache
