#!/usr/bin/env bash
# One run on the GPU machine (see README "On a GPU"). Expects the binaries in .device/
# (engine_cuda test binary, engine_device, merge_device).
#   scripts/device_run.sh tests   # the CUDA test suite (SKIP=autodiff skips the slow gradient test)
#   scripts/device_run.sh bench   # every benchmark shape (SHAPES=hunyuan,... to choose): ours, then
#                                 # torch on the same inputs; one table per shape and the ratios;
#                                 # token merging at the CogVideoX-2B shape when cogvideox-2b is run;
#                                 # smart and dynamic attention at both CogVideoX shapes when
#                                 # smart_device / dynamic_device are there
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/dit-out}
data=${DATA:-/tmp/dit-bench}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/gpu.txt"
case "${1:-all}" in
  tests|all)
    ./.device/engine_cuda --test-threads 1 ${SKIP:+--skip "$SKIP"} 2>&1 | tee "$out/tests.log"
    echo "cuda tests exit code: ${PIPESTATUS[0]}"
    grep -h "test result" "$out/tests.log"
    ;;&
  bench|all)
    ./.device/engine_device --out "$data" --dtype "${DTYPE:-bf16}" --runs "${RUNS:-10}" \
      ${SHAPES:+--shapes "$SHAPES"} 2>&1 | tee "$out/ours.log"
    if [ -x ./.device/merge_device ] && [[ ",${SHAPES:-cogvideox-2b}," == *",cogvideox-2b,"* ]]; then
      ./.device/merge_device --out "$data" --runs "${RUNS:-10}" 2>&1 | tee "$out/merge.log"
      cp "$data/merge.json" "$out/merge.json"
    fi
    if [ -x ./.device/smart_device ]; then
      ./.device/smart_device --out "$data" --runs "${RUNS:-10}" 2>&1 | tee "$out/smart.log"
      cp "$data/smart.json" "$out/smart.json"
    fi
    if [ -x ./.device/dynamic_device ]; then
      ./.device/dynamic_device --out "$data" --runs "${RUNS:-10}" 2>&1 | tee "$out/dynamic.log"
      cp "$data/dynamic.json" "$out/dynamic.json"
    fi
    cp "$data/meta.json" "$out/meta.json"
    python3 scripts/bench_vs_torch.py "$data" 2>&1 | tee "$out/torch.log"
    ;;
esac
