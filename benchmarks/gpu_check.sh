#!/usr/bin/env bash
# One prepared check for a machine with one NVIDIA H100/H200: builds
# conveyor._C with CUDA for that GPU, runs the `gpu` tests, runs the GPU
# benchmarks, and prints a summary table last. Needs nvcc, torch with CUDA,
# cmake, ninja, pybind11, scikit-build-core and pytest already installed; no
# network. Must finish within 8 minutes: each step has its own time limit,
# cut further so that all steps together stay inside a 470 s budget.
#
#   bash benchmarks/gpu_check.sh            # results in benchmarks/results/gpu-<time>/
#   OUT=/some/dir bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
command -v nvcc >/dev/null || export PATH="/usr/local/cuda/bin:$PATH"
RESULTS=${OUT:-benchmarks/results/gpu-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$RESULTS"
SUMMARY="$RESULTS/summary.md"
status=0
BUDGET_END=$((SECONDS + 470))

step() {  # step NAME SECONDS LOGFILE CMD...: run with a time limit, keep the log, record the outcome
  local name=$1 limit=$2 logfile=$3; shift 3
  local t0=$SECONDS rc left=$((BUDGET_END - SECONDS))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 10 ]; then
    printf '| %s | skipped (time budget spent) | 0s |\n' "$name" >>"$SUMMARY.steps"
    status=1
    return 1
  fi
  echo "== $name (limit ${limit}s)" >&2
  timeout "$limit" "$@" >"$logfile" 2>&1
  rc=$?
  tail -n 25 "$logfile" >&2
  printf '| %s | %s | %ss |\n' "$name" "$([ $rc -eq 0 ] && echo ok || echo "FAILED (rc=$rc)")" \
    "$((SECONDS - t0))" >>"$SUMMARY.steps"
  [ $rc -eq 0 ] || status=1
  return $rc
}

secs() {  # secs CAP: a bench's --max-seconds, CAP or less so it ends inside the budget
  local left=$((BUDGET_END - SECONDS - 25))
  echo $((left < $1 ? (left > 5 ? left : 5) : $1))
}

{
  echo "# conveyor GPU check"
  echo
  echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  # A copied working tree may carry a stale .git: the caller can name the commit.
  echo "- commit: ${CONVEYOR_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
  echo "- card: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo 'nvidia-smi failed')"
  echo "- torch: $($PY -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda)' 2>&1)"
  echo "- nvcc: $(nvcc --version 2>/dev/null | tail -n 1)"
} >"$SUMMARY"
: >"$SUMMARY.steps"

# 1. Build for the GPU in this machine only (native arch keeps compile time short).
step build 300 "$RESULTS/build.log" \
  env CONVEYOR_CUDA=ON "$PY" -m pip install --no-build-isolation --no-deps -e . \
  -Ccmake.define.CMAKE_CUDA_ARCHITECTURES=native -Cbuild-dir=build/gpu || {
  cat "$SUMMARY"; exit 1; }

# 2. The GPU tests (and a check that the extension sees the device). Only the
# folders with `gpu` tests are collected: the engine's test modules import
# packages (tritonclient, grpc health) that a GPU image need not have, and one
# collection error would stop every test. pytest-xdist, where installed, spreads
# the tests (and their Triton compilations) over the cores.
XDIST=$("$PY" -c 'import xdist' 2>/dev/null && echo "-n 8")
step gpu-tests 150 "$RESULTS/tests.log" \
  "$PY" -m pytest -m gpu tests/kernels tests/trainer $XDIST -q -p no:cacheprovider -o addopts="-ra"
step build-tests 30 "$RESULTS/build_tests.log" \
  "$PY" -m pytest tests/conveyor/test_build.py -q -p no:cacheprovider -o addopts="-ra"

# 3. Benchmarks, each a ratio against a baseline measured in the same run.
step histogram-bench 60 "$RESULTS/histogram_cuda.txt" \
  "$PY" benchmarks/histogram_bench.py --device cuda --rows 16000000 --features 32 --repeat 20 \
  --cuda-variants --json "$RESULTS/histogram_cuda.json"

# Fused ops: every implementation against torch eager (float32, then bfloat16),
# then against torch.compile of the reference on the large shapes (compiling
# costs seconds per shape, so it runs last and alone). Each bench builds its
# GPU-sized shapes first, so a cut by --max-seconds drops the small ones.
step kernels-bench-fp32 85 "$RESULTS/kernels_cuda_fp32.txt" \
  "$PY" benchmarks/kernels/bench_ops.py --device cuda --no-compile --rounds 3 --min-time 0.02 \
  --max-seconds $(secs 65) --ops linear,embedding_bag,layer_norm,histogram \
  --json "$RESULTS/kernels_cuda_fp32.json"
step kernels-bench-bf16 60 "$RESULTS/kernels_cuda_bf16.txt" \
  "$PY" benchmarks/kernels/bench_ops.py --device cuda --dtype bfloat16 --no-compile --rounds 3 \
  --min-time 0.02 --max-seconds $(secs 42) --ops linear,layer_norm,embedding_bag \
  --json "$RESULTS/kernels_cuda_bf16.json"
step kernels-bench-compile 100 "$RESULTS/kernels_cuda_compile.txt" \
  "$PY" benchmarks/kernels/bench_ops.py --device cuda --dtype bfloat16 --rounds 3 --min-time 0.02 \
  --max-seconds $(secs 75) --large-only --ops linear,layer_norm --json "$RESULTS/kernels_cuda_compile.json"

{
  echo
  echo "| step | result | time |"
  echo "| --- | --- | --- |"
  cat "$SUMMARY.steps"
  echo
  echo '```'
  grep -E "passed|failed|error" "$RESULTS/tests.log" | tail -n 1
  grep -E "^(FAILED|ERROR)" "$RESULTS/tests.log" | head -n 20
  cat "$RESULTS/histogram_cuda.txt" 2>/dev/null
  for f in kernels_cuda_fp32 kernels_cuda_bf16 kernels_cuda_compile; do
    echo "--- $f"
    grep -E "^# (ceilings|note)|Error|error:" "$RESULTS/$f.txt" 2>/dev/null | head -n 30
    sed -n '/^## summary/,$p' "$RESULTS/$f.txt" 2>/dev/null
  done
  echo '```'
} >>"$SUMMARY"
rm -f "$SUMMARY.steps"
cat "$SUMMARY"
exit $status
