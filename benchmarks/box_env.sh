#!/usr/bin/env bash
# A virtual environment here with the lent GPU box's own versions of what our GPU calls import
# (torch 2.11, transformers 5.17, accelerate 1.15 … as the device tool's KINDS.md lists them, read
# 2026-11) plus the wheels benchmarks/gpu_wheels.sh carries, in their carried versions. The project's
# .venv has newer ones (torch 2.14), so an API that the box's versions lack would otherwise first
# show up as a failed device call. Rehearse with it:
#
#   bash benchmarks/box_env.sh                 # → /tmp/boxenv (≈ 3 GB: torch's CUDA libraries)
#   BOX_PYTHON=/tmp/boxenv/bin/python DRY=1 OUT=/tmp/gpu-out bash benchmarks/gpu_session.sh check
#   BOX_PYTHON=/tmp/boxenv/bin/python DRY=1 OUT=/tmp/gpu-out bash benchmarks/gpu_session.sh calibrate-proof
#
# Here Python is this machine's (3.11; the box has 3.12.3), and numpy the newest for it (the box has
# 2.5.2, which is not built for 3.11). gpu_like.py still hides whatever the box does not have.
set -euo pipefail
cd "$(dirname "$0")/.."
ENV=${BOX_ENV:-/tmp/boxenv}
PY=${PYTHON:-python3}
box=(torch==2.11.0 torchvision==0.26.0 triton==3.6.0 transformers==5.17.0 tokenizers==0.23.2
     accelerate==1.15.0 safetensors==0.8.0 huggingface_hub==1.33.0)
# The carried wheels, in gpu_wheels.sh's versions (its NAME==VERSION arguments).
mapfile -t carried < <(grep -oE '\b[A-Za-z][A-Za-z0-9_.-]*==[0-9][A-Za-z0-9.]*' benchmarks/gpu_wheels.sh)
# On the box too, in whatever version pip picks here (KINDS.md gives no version for them).
others=(numpy scipy opencv-python-headless pillow pandas pyarrow peft psutil pyyaml matplotlib einops tensorboard)
test -x "$ENV/bin/python" || "$PY" -m venv "$ENV"
"$ENV/bin/python" -m pip install -q --upgrade pip
"$ENV/bin/python" -m pip install -q "${box[@]}" "${carried[@]}" "${others[@]}"
"$ENV/bin/python" -m pip install -q --no-deps -e .  # the project itself, as the box runs it from the checkout
"$ENV/bin/python" -c "import torch, transformers, accelerate, diffusers; print('box-like env:', torch.__version__, \
'transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'diffusers', diffusers.__version__)"
