# The commands a new machine needs. `make run` and `make test` set everything up.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install run test test-fast lint format container-test

$(VENV)/.installed: requirements.txt requirements-serve.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed

## Serve on http://127.0.0.1:8000 (SQLite next to manage.py unless DATABASE_URL is set).
run: install
	$(PY) manage.py migrate --noinput
	$(PY) manage.py collectstatic --noinput --verbosity 0
	$(VENV)/bin/gunicorn -c gunicorn.conf.py webapp.wsgi

## The whole test suite (real ResNet50 with random weights, a real gunicorn; offline).
test: install
	$(PY) -m pytest

## What needs no model, server, browser or subprocess (under a minute): while editing.
test-fast: install
	$(PY) -m pytest -m "not slow"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

## Build the image and run it as the Kubernetes Deployment does (needs dockerd, mmdebstrap).
container-test: install
	bash scripts/container-test.sh
