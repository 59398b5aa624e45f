# The two commands of the README: `make run` (set up and start the app) and `make test` (set up and run all tests).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
STAMP_TEST := $(VENV)/.installed-test

.PHONY: run test app bundle-test bench fuzz clean system-deps

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
	$(PY) -m ui

test: system-deps $(STAMP_TEST)
	bash scripts/run_tests.sh

app: $(STAMP)
	$(PY) -m pip install -q -e '.[bundle]' && $(PY) scripts/build_app.py

bundle-test: $(STAMP_TEST)
	$(PY) -m pip install -q -e '.[bundle]' && $(PY) -m pytest -m bundle tests/test_bundle.py -s

bench: $(STAMP_TEST)
	$(PY) -m gemma4_mac.bench

# Each fuzzer runs FUZZ_SECONDS (default 60) and reports executions and crashes (tests/fuzz/run.py).
FUZZ_SECONDS ?= 60
fuzz: $(STAMP_TEST)
	$(PY) -m pip install -q -e '.[fuzz]' || echo "atheris does not install here: the plain mutation fuzzer runs instead"
	$(PY) -m tests.fuzz.run --seconds $(FUZZ_SECONDS) $(FUZZ_TARGETS)

clean:
	rm -rf $(VENV) .pytest_cache build dist *.egg-info
