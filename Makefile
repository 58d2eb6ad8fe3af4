# UPAK Backend: `make run` serves it, `make test` proves it.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Installs come from uv.lock, exactly (`make lock` changes it). uv itself is pinned and comes
# from PyPI into a venv of its own, so the project's venv holds nothing but the locked set.
UV_VERSION ?= 0.13.9
UV_HOME    ?= .uv
UV         := $(UV_HOME)/bin/uv
export UV_PROJECT_ENVIRONMENT := $(VENV)
export UV_PYTHON_DOWNLOADS := never
# Byte-compile at install, as pip does: uv does not by default, and where PYTHONDONTWRITEBYTECODE
# is set nothing ever caches the .pyc files, so every process (each `upak serve` worker, each
# CLI call) would compile fastapi, sqlalchemy and redis again: 3.5 s a start instead of 0.5 s.
export UV_COMPILE_BYTECODE := 1
SYNC := $(UV) sync --frozen --quiet --python $(PYTHON)

.PHONY: run test test-fast lint format bench audit lock lock-upgrade clean

$(UV):
	$(PYTHON) -m venv $(UV_HOME)
	$(UV_HOME)/bin/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# `run` needs the runtime set only; --inexact so it never removes what tests or bench use.
$(VENV)/.installed: pyproject.toml uv.lock | $(UV)
	$(SYNC) --inexact
	touch $@

$(VENV)/.installed-dev: pyproject.toml uv.lock | $(UV)
	$(SYNC) --extra dev
	touch $@ $(VENV)/.installed

$(VENV)/.installed-bench: pyproject.toml uv.lock | $(UV)
	$(SYNC) --extra dev --extra bench
	touch $@ $(VENV)/.installed-dev $(VENV)/.installed

lock: | $(UV)                    ## re-resolve after editing pyproject.toml, keeping other pins
	$(UV) lock --python $(PYTHON)

lock-upgrade: | $(UV)            ## move every package to its newest release within the bounds
	$(UV) lock --upgrade --python $(PYTHON)

# pip-audit comes in beside the dev set (--inexact), never into the locked runtime.
$(VENV)/.installed-audit: pyproject.toml uv.lock | $(UV)
	$(SYNC) --inexact --extra audit
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
	$(VENV)/bin/mypy

format: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The `limits`/slowapi peers in a venv of their own, on the redis-py and coredis that limits
# declares (bench/peers/limits-requirements.txt); the service's locked runtime set beside them
# (slowapi's server is the service's app), less its redis-py and hiredis pins: the peer's own.
PEER_LIMITS := $(VENV)/peers/limits
$(PEER_LIMITS)/.installed: bench/peers/limits-requirements.txt pyproject.toml uv.lock | $(UV)
	$(UV) venv --quiet --allow-existing --python $(PYTHON) $(PEER_LIMITS)
	$(UV) export --frozen --quiet --no-hashes --no-emit-project --no-dev \
	  | grep -v -E '^(redis|hiredis)==' > $(PEER_LIMITS)/runtime.txt
	$(UV) pip install --quiet --python $(PEER_LIMITS)/bin/python \
	  -r $(PEER_LIMITS)/runtime.txt -r bench/peers/limits-requirements.txt
	touch $@

# BENCH_ONLY=request_path,host_tier re-runs those scripts and rewrites only their sections
# (the same as `.venv/bin/python bench/run_all.py --only request_path,host_tier`).
BENCH_ONLY ?=
bench: $(VENV)/.installed-bench $(PEER_LIMITS)/.installed  ## side-by-side figures -> docs/BENCHMARKS.md (installs wrk, valgrind)
	@missing=""; command -v wrk >/dev/null 2>&1 || missing="wrk"; \
	  command -v callgrind_control >/dev/null 2>&1 || missing="$$missing valgrind"; \
	  if [ -n "$$missing" ]; then echo "installing$$missing (HTTP load, instruction counts)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi
	$(PY) bench/run_all.py $(if $(BENCH_ONLY),--only $(BENCH_ONLY))

# Known vulnerabilities (PyPA advisory database via PyPI's JSON API) in what we ship: the
# exact set of uv.lock, every extra included. --strict: a package that could not be checked fails the audit, it never
# passes silently (where only the simple index is reachable, that is every package: see
# docs/SECURITY.md).
AUDIT_LOCK ?= $(UV_HOME)/audit-requirements.txt
audit: $(VENV)/.installed-audit
	$(UV) export --frozen --quiet --no-hashes --no-emit-project --all-extras -o $(AUDIT_LOCK)
	$(VENV)/bin/pip-audit --strict --progress-spinner off -r "$(AUDIT_LOCK)" --no-deps --disable-pip

clean:
	rm -rf $(VENV) $(UV_HOME) .pytest_cache .ruff_cache
