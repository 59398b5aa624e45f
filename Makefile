# The two commands of the README: `make run` (set up and start the app) and `make test` (set up and run all tests).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
STAMP_TEST := $(VENV)/.installed-test

.PHONY: run test app bench fuzz clean system-deps

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e .
	touch $@

$(STAMP_TEST): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[test]'
	touch $@ $(STAMP)

system-deps:
	bash scripts/install_system_deps.sh

run: system-deps $(STAMP)
	$(PY) -m gemma4_mac

test: system-deps $(STAMP_TEST)
	bash scripts/run_tests.sh

bench: $(STAMP_TEST)
	$(PY) -m gemma4_mac.bench

clean:
	rm -rf $(VENV) .pytest_cache build dist *.egg-info
