#!/usr/bin/env bash
# One device call on the lent GPU box (an H100 or H200: no network, Python 3.12, torch 2.11 + CUDA), prepared
# and rehearsed here. What it lacks travels as wheels: `bash benchmarks/gpu_wheels.sh` here first, then
# call the device tool with carry [".whl"] and the command `bash benchmarks/gpu_session.sh WHAT [ARGS]`:
#
#   check            the real-size path measured: benchmarks/gpu_check.py → $OUT/gpu_check.json (≈ 6 min)
#   calibrate        the proof-gpu scale timed by a short rehearsal of its chain, and the step counts that
#                    fit 8 minutes → $OUT/calibration.json (≈ 2 min; ARGS go to ic_demo.calibrate)
#   proof            the proof chain at proof-gpu (ARGS go to ic_demo.chain, e.g. --steps base=2000,...)
#   calibrate-proof  both in one call (a call runs ≤ 10 min): the proof, fitted to what the rehearsal
#                    leaves of 9.3 min (≈ 6.5), runs at once
#
# The proof's FID/FVD are left for later (their networks' weights cannot travel: 84 + 49 MB); its folder
# comes back as $OUT/proof.tgz.NN (parts of ≤ 15 MB, without weights or the toy world). Here:
#   cat proof.tgz.* | tar xz -C demo_out && .venv/bin/python -m ic_demo.finish demo_out/proof-gpu \
#       --copy-to docs/results/proof-gpu
#
# Rehearsal here, on the CPU, with only the packages the box has importable (benchmarks/gpu_like.py) and
# the smallest scale:  DRY=1 OUT=/tmp/gpu-out bash benchmarks/gpu_session.sh calibrate-proof
# With the box's own versions of torch, transformers, accelerate… (benchmarks/box_env.sh builds them):
#   BOX_PYTHON=/tmp/boxenv/bin/python DRY=1 OUT=/tmp/gpu-out bash benchmarks/gpu_session.sh calibrate-proof
set -euo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?OUT must name the folder whose files come back}"
what=${1:?"what to run: check | calibrate | proof | calibrate-proof"}
shift
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -n "${DRY:-}" ]; then
  PY=("${BOX_PYTHON:-.venv/bin/python}" benchmarks/gpu_like.py)  # BOX_PYTHON: benchmarks/box_env.sh's
  SCALE=test DEVICE=cpu DTYPE=fp32 WORK=${WORK:-/tmp/gpu-session}
  CHECK=(--dry-run) REHEARSAL=(--videos 2 --rehearsal-steps 5 --widths 16,32,32 --budget-min 2)
  ONE_CALL=(--deadline-min 6)  # this CPU: the rehearsal alone takes 2.5–3 min
else
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  PY=(python3)
  SCALE=proof-gpu DEVICE=cuda DTYPE=bf16 WORK=${WORK:-/tmp/gpu-session}
  CHECK=() REHEARSAL=(--widths 192,256,320 256,384,512)
  ONE_CALL=(--deadline-min 9.3)  # a command may run 10 min: the proof is fitted to what the rehearsal leaves
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
fi
rm -rf "$WORK"
mkdir -p "$WORK"

pack_proof() {  # the chain's folder without weights, checkpoints, the toy world or per-case GIFs
  (cd "$WORK/proof" && find "$SCALE" -type f \
     \( -path "$SCALE/videos/*" -o -path "$SCALE/curated/*/shards/*" -o -name '*.safetensors' \
        -o -path '*/checkpoints/*' -o -path '*/logs/*' -o -path "$SCALE/eval/*/videos/*.gif" \) -prune \
     -o -type f -print | sort | tar czf "$WORK/proof.tgz" -T -)
  split -b 15M -d "$WORK/proof.tgz" "$OUT/proof.tgz."
  ls -la "$OUT"
}

case "$what" in
  check)
    "${PY[@]}" benchmarks/gpu_check.py "${CHECK[@]}" --out "$OUT/gpu_check.json" "$@" 2>&1 | tee "$OUT/gpu_check.log"
    ;;
  calibrate)
    "${PY[@]}" -m ic_demo.calibrate --scale "$SCALE" --device "$DEVICE" --dtype "$DTYPE" --reference-metrics later \
      --work "$WORK/rehearsal" --json "$OUT/calibration.json" "${REHEARSAL[@]}" "$@" 2>&1 | tee "$OUT/calibration.log"
    ;;
  proof)
    "${PY[@]}" -m ic_demo.chain --scale "$SCALE" --out "$WORK/proof" --device "$DEVICE" --dtype "$DTYPE" \
      --reference-metrics later "$@" 2>&1 | tee "$OUT/proof.log"
    pack_proof
    ;;
  calibrate-proof)
    "${PY[@]}" -m ic_demo.calibrate --scale "$SCALE" --device "$DEVICE" --dtype "$DTYPE" --reference-metrics later \
      --work "$WORK/rehearsal" --json "$OUT/calibration.json" --then-run "$WORK/proof" "${REHEARSAL[@]}" \
      "${ONE_CALL[@]}" "$@" \
      2>&1 | tee "$OUT/proof.log"
    pack_proof
    ;;
  *)
    echo "gpu_session.sh: unknown '$what' (check | calibrate | proof | calibrate-proof)" >&2
    exit 2
    ;;
esac
