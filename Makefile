# durablenb: `make demo` and `make test` set up everything on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
SERVER_DSN ?= postgresql://postgres@127.0.0.1:5432/test

.PHONY: demo test test-embedded test-server test-notebooks lint bench chaos clean venv browser

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

$(VENV)/.bench-installed: $(VENV)/.installed
	$(PY) -m pip install --quiet -e ".[dev,bench]"
	touch $@

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	DURABLENB_HOME=$(CURDIR)/.durablenb-demo $(PY) -m durablenb.demo

lint: $(VENV)/.installed
	$(PY) -m ruff check durablenb tests bench
	$(PY) -m mypy

# Debian's Chromium drives JupyterLab in the browser test (never a downloaded browser).
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
	    (apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null); \
	  else echo "install Debian's chromium: sudo apt-get install -y chromium" >&2; exit 1; fi; \
	fi

# Every test runs twice: on the embedded PostgreSQL and on the server at $(SERVER_DSN).
# Test files run on $(TEST_WORKERS) pytest-xdist workers (a file's tests stay together in
# one worker; on the embedded backend each worker has its own server). On the shared server
# the tests that stop, crash or reconfigure it (marker server_restart) run alone, after.
TEST_WORKERS ?= 2
XDIST := -n $(TEST_WORKERS) --dist loadfile

test: lint browser test-embedded test-server test-notebooks

test-embedded: $(VENV)/.installed
	env -u DURABLENB_TEST_DSN -u DURABLENB_DATABASE_URL $(PY) -m pytest -p no:cacheprovider $(XDIST) $(PYTEST_ARGS)

test-server: $(VENV)/.installed
	@$(PY) -c "import psycopg,sys; psycopg.connect('$(SERVER_DSN)', connect_timeout=5).close()" \
	  || (echo "PostgreSQL is not reachable at $(SERVER_DSN); set SERVER_DSN" >&2; exit 1)
	DURABLENB_TEST_DSN=$(SERVER_DSN) $(PY) -m pytest -p no:cacheprovider $(XDIST) -m "not server_restart" $(PYTEST_ARGS)
	DURABLENB_TEST_DSN=$(SERVER_DSN) $(PY) -m pytest -p no:cacheprovider -m server_restart $(PYTEST_ARGS)

# Every notebook, run by nbval in a fresh kernel on a fresh embedded server.
test-notebooks: $(VENV)/.installed
	@home=$$(mktemp -d); \
	env -u DURABLENB_TEST_DSN -u DURABLENB_DATABASE_URL -u DURABLENB_SCHEMA DURABLENB_HOME=$$home \
	  $(PY) -m pytest -p no:cacheprovider --nbval-lax notebooks; rc=$$?; \
	$(PY) -c "import sys, pathlib; from durablenb import server; server.stop(pathlib.Path(sys.argv[1]))" $$home; \
	rm -rf $$home; exit $$rc

# The full kill matrix on both backends (the test suite runs a fixed-seed subset).
chaos: $(VENV)/.installed
	env -u DURABLENB_TEST_DSN -u DURABLENB_DATABASE_URL $(PY) -m tests.chaos --trials 120 --kills 3 --seed 1
	$(PY) -m tests.chaos --trials 120 --kills 3 --seed 1001 --dsn $(SERVER_DSN)

bench: $(VENV)/.bench-installed
	$(PY) bench/step_overhead.py --dsn $(SERVER_DSN)
	$(PY) bench/step_overhead.py
	$(PY) bench/load_ext.py
	$(PY) bench/large_outputs.py
	$(PY) bench/digest.py
	$(PY) bench/cell_restore.py
	$(PY) bench/map_cluster.py
	$(PY) bench/map_throughput.py
	$(PY) bench/map_throughput.py --dsn $(SERVER_DSN)
	$(PY) bench/batch_writes.py

clean:
	rm -rf $(VENV) .durablenb-demo build *.egg-info
