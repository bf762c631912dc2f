# Two commands do all the set-up on a fresh machine:
#   make sweep   -> creates .venv if needed, runs the default sweep
#   make test    -> creates .venv if needed, installs the browser/cluster test packages, runs every test
# Both are idempotent: the venv is rebuilt only when pyproject.toml changes.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The tested torch pair; pip takes both from the machine's local wheels where they exist.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: venv sweep smoke lint test test-slow test-deps clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PINS)
	$(PY) -m pip install --quiet -e '.[dev]' $(TORCH_PINS)
	touch $@

sweep: venv
	$(PY) -m orchestrator.sweep

smoke: venv
	$(PY) -m orchestrator.sweep --smoke

# System packages of the browser, cluster and database tests (chromium; openssh-server, rsync;
# PostgreSQL and MariaDB servers, never started as services): installed with apt-get when missing
# (root or sudo); the tests that need them fail with a clear message otherwise.
test-deps:
	-bash scripts/install_browser_test_deps.sh
	-bash scripts/install_cluster_test_deps.sh
	-bash scripts/install_database_test_deps.sh

# ruff: lint and format check (a second or two); `$(PY) -m ruff format .` fixes the format.
lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# -n auto: one pytest worker per CPU (pytest-xdist); tests/serial_group.py puts the tests that run Ray
# or a sweep in two groups, each on one worker in order, and the rest fill in on any worker.
test: venv test-deps lint
	$(PY) -m pytest -n auto --dist loadgroup $(PYTEST_ARGS)

# The tests marked slow: the chaos benchmark's own small run end to end (its fault-free sweep, then the
# same sweep while a ranking actor, a Train worker, the MLflow server and the driver are killed).
# `make test` runs the same small case against the test session's shared fault-free sweep instead.
test-slow: venv
	$(PY) -m pytest --slow -m slow $(PYTEST_ARGS)

clean:
	rm -rf runs mlflow.db .pytest_cache
