# The two set-up commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Test processes (pytest-xdist).  The end-to-end and fault tests mostly wait on real servers and
# processes, so 4 overlap those waits on a 2-core machine (beside a CPU hog: 7.5 min, against 8.5
# with 3 and 8.2 with 5); a file whose tests share a module's node stays on one process (loadgroup,
# see tests/conftest.py).
TEST_WORKERS ?= 4
# Byte-code caching stays on for the tests even where PYTHONDONTWRITEBYTECODE is set: the suite
# starts about 150 nodes and 300 commands, and each of their processes would compile the package
# again (a quarter of its start-up CPU), as would each test process rewriting the tests' asserts.
PYTEST := env -u PYTHONDONTWRITEBYTECODE $(BIN)/pytest -n $(TEST_WORKERS) --dist loadgroup

.PHONY: demo test lint unit e2e fault bench clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)  ## the end-to-end demo against the local cloud simulator
	$(BIN)/coda-bridge demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint  ## lint, types, then every test (end-to-end and fault tests included)
	$(PYTEST)

unit: $(STAMP)  ## the fast tests only
	$(PYTEST) -m "not e2e and not fault"

e2e: $(STAMP)
	$(PYTEST) -m e2e

fault: $(STAMP)
	$(PYTEST) -m fault

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
