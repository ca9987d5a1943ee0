# promptdex: `make install`, `make test`, `make lint`.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install test lint

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[all]'
	touch $@

test: install
	$(PY) -m pytest -q -ra

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

.PHONY: docs
docs: install  ## regenerate .env.example and README's configuration table from the settings
	$(PY) -m promptdex.settings
