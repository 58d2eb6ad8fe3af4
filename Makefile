# UPAK Backend: `make run` serves it, `make test` proves it.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: run test test-fast lint format bench audit clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(PY)
	$(PIP) -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(PIP) -e '.[dev]'
	touch $@

$(VENV)/.installed-audit: pyproject.toml $(VENV)/.installed
	$(PIP) -e '.[audit]'
	touch $@

$(VENV)/.installed-bench: pyproject.toml $(VENV)/.installed-dev
	$(PIP) -e '.[dev,bench]'
	touch $@

run: $(VENV)/.installed          ## serve on http://127.0.0.1:8000
	$(VENV)/bin/upak serve

test: $(VENV)/.installed-dev     ## the whole suite, slow chaos/cluster tests included
	$(PY) -m pytest

test-fast: $(VENV)/.installed-dev
	$(PY) -m pytest -m "not slow"

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(VENV)/.installed-bench  ## side-by-side figures -> docs/BENCHMARKS.md (installs wrk, valgrind)
	@missing=""; command -v wrk >/dev/null 2>&1 || missing="wrk"; \
	  command -v callgrind_control >/dev/null 2>&1 || missing="$$missing valgrind"; \
	  if [ -n "$$missing" ]; then echo "installing$$missing (HTTP load, instruction counts)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi
	$(PY) bench/run_all.py

# Known vulnerabilities (PyPA advisory database via PyPI's JSON API) in what we ship:
# AUDIT_LOCK=<requirements file with pinned versions> audits that exact set; without it, the
# installed venv. --strict: a package that could not be checked fails the audit, it never
# passes silently (where only the simple index is reachable, that is every package: see
# docs/SECURITY.md).
AUDIT_LOCK ?=
audit: $(VENV)/.installed-audit
	@if [ -n "$(AUDIT_LOCK)" ]; then set -- -r "$(AUDIT_LOCK)" --no-deps --disable-pip; \
	  else set -- --local --skip-editable; fi; \
	  $(VENV)/bin/pip-audit --strict --progress-spinner off "$$@"

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
