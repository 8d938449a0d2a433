#!/usr/bin/env bash
# One run on the GPU machine (see README "On a GPU"). Expects the binaries in .device/
# (engine_cuda test binary, engine_device).
#   scripts/device_run.sh tests   # the CUDA test suite (SKIP=autodiff skips the slow gradient test)
#   scripts/device_run.sh bench   # Hunyuan shape: ours (MMA path with 4 and 8 planes per cube,
#                                 # tile-major and natural order, dense) and torch, one table
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/dit-out}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/gpu.txt"
case "${1:-all}" in
  tests|all)
    ./.device/engine_cuda --test-threads 1 ${SKIP:+--skip "$SKIP"} 2>&1 | tee "$out/tests.log"
    echo "cuda tests exit code: ${PIPESTATUS[0]}"
    grep -h "test result" "$out/tests.log"
    ;;&
  bench|all)
    DIT_ATTENTION_MMA_WARPS=4 ./.device/engine_device --out /tmp/hunyuan4 --dtype "${DTYPE:-bf16}" --runs "${RUNS:-5}" 2>&1 | tee "$out/ours_warps4.log"
    ./.device/engine_device --out /tmp/hunyuan --dtype "${DTYPE:-bf16}" --runs "${RUNS:-5}" --dense 2>&1 | tee "$out/ours.log"
    python3 scripts/hunyuan_vs_torch.py /tmp/hunyuan 2>&1 | tee "$out/torch.log"
    ;;
esac
