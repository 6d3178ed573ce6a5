#!/usr/bin/env bash
# Wheels the lent GPU machine (Python 3.12, torch 2.11 + CUDA, no network) lacks for
# benchmarks/gpu_check.py: downloaded here into .whl/ (git-ignored through .git/info/exclude),
# carried with the device call and installed there with
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
# The versions are the ones `make setup` installs here; everything else gpu_check imports
# (transformers, peft, accelerate, opencv, scipy, pyyaml, ...) is on that machine already.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
PY=${PYTHON:-python3}
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
    diffusers==0.42.1 importlib_metadata av==18.1.0 webdataset==1.0.2 braceexpand==0.1.7
ls -la .whl
du -sh .whl
