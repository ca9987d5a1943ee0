# promptdex: `make install`, `make test`, `make lint`.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python

.PHONY: install test lint demo

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[all,nudenet,cluster]'  # nudenet (AGPL-3.0) and ray are optional: the tests use them
	touch $@

test: install
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q -ra

# The main job: fill a demo corpus (configured model, or the tiny offline one), index it, serve it.
demo: install
	$(PY) -m promptdex demo

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

.PHONY: docs
docs: install  ## regenerate .env.example and README's configuration table from the settings
	$(PY) -m promptdex.settings

# Benchmarks (results in bench/results/, BENCHMARKS.md rendered from one run's JSON).
.PHONY: bench bench-full
bench: install  ## about 9 minutes on 2 cores: 100,000 images
	$(PY) -m bench.run --images 100000 --prompts 30000 --out bench/results/quick
	$(PY) -m bench.report bench/results/quick/results.json --out bench/results/quick/BENCHMARKS.md

bench-full: install  ## about 40 minutes on 2 cores: 1,000,000 images over 300,000 prompts
	$(PY) -m bench.run --images 1000000 --prompts 300000 --out bench/results/full
	$(PY) -m bench.report bench/results/full/results.json --out BENCHMARKS.md
