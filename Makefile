# Gust: `make run` serves on http://127.0.0.1:8000, `make test` runs the whole suite.
# Both create .venv and install what they need (Python packages, and the npm packages of the JS SDK tests).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
JS_DIR := tests/js
JS_STAMP := $(JS_DIR)/node_modules/.installed
ARGS ?=
PYTEST_ARGS ?=

.PHONY: install run test bench lint types clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,dev,redis,bench]'
	touch $@

$(JS_STAMP): $(JS_DIR)/package.json $(JS_DIR)/package-lock.json
	cd $(JS_DIR) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

install: $(STAMP) $(JS_STAMP)

run: $(STAMP)
	$(PY) -m server $(ARGS)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m bench.fanout $(ARGS)
	$(PY) -m bench.publish $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check server tests bench examples
	$(VENV)/bin/mypy

types: lint

clean:
	rm -rf $(VENV) $(JS_DIR)/node_modules *.egg-info .mypy_cache .ruff_cache .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
