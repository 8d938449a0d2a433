#!/usr/bin/env bash
# One run on the GPU machine (see README "On a GPU"): the CUDA test suite, then the Hunyuan-shape
# check against torch. Expects the binaries in .device/ (engine_cuda test binary, engine_device).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/dit-out}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/gpu.txt"
./.device/engine_cuda --test-threads 1 2>&1 | tee "$out/tests.log"
tests_rc=$?
./.device/engine_device --out /tmp/hunyuan --dtype "${DTYPE:-bf16}" --runs "${RUNS:-3}" 2>&1 | tee "$out/ours.log"
python3 scripts/hunyuan_vs_torch.py /tmp/hunyuan 2>&1 | tee "$out/torch.log"
echo "cuda tests exit code: $tests_rc"
grep -h "test result" "$out/tests.log"
