# Two commands on a fresh machine: `make demo` and `make test`. Both set themselves up.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
# The CPU/CUDA build of torch is the user's choice; this pair is what we test with.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
STAMP   = $(VENV)/.installed
PYTEST_ARGS ?= -m "not slow"

.PHONY: setup test test-all demo bench serve clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-all: setup
	$(PY) -m pytest -m ""

demo: setup
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(PY) -m flows.demo --out demo_out

bench: setup
	$(PY) benchmarks/bench_curation.py

serve: setup
	bash deployments/serve.sh

clean:
	rm -rf demo_out .pytest_cache
