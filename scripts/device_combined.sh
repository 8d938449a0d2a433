#!/usr/bin/env bash
# Combined attention's statistics on the GPU machine (BENCHMARKS, twentieth and twenty-first
# sessions): the tests with the tensor-core checked matmul switched on, Combined at CogVideoX-2B
# with the switch on and off (and `dynamic_device_base`, the nineteenth session's build, if it is
# there), then one CUPTI trace of the statistics' kernels. Expects .device/engine_cuda and
# .device/dynamic_device. Each section fits one `run` call (600 s); OUT collects the logs;
# .device/*.gz are unpacked.
#   scripts/device_combined.sh tests   # checked_matmul combined top_sum statistics, switch on
#   scripts/device_combined.sh bench   # switch on / off / base build, then the trace
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
case "${1:-tests}" in
  tests)
    DIT_ATTENTION_MATMUL_TENSOR_CORES=1 ./.device/engine_cuda --test-threads 1 checked_matmul combined top_sum \
      statistics 2>&1 | tee "$out/tests_combined.log" | tail -n 25
    echo "combined tests exit code: ${PIPESTATUS[0]}"
    ;;
  bench)
    args=(--runs 10 --shapes cogvideox-2b --combined-only --merge 0.45)
    DIT_ATTENTION_MATMUL_TENSOR_CORES=1 ./.device/dynamic_device --out /tmp/t "${args[@]}" 2>&1 | tee "$out/combined_tc.log"
    ./.device/dynamic_device --out /tmp/s "${args[@]}" 2>&1 | tee "$out/combined_scalar.log"
    if [ -x ./.device/dynamic_device_base ]; then
      ./.device/dynamic_device_base --out /tmp/b "${args[@]}" 2>&1 | tee "$out/combined_base.log"
    fi
    scripts/cupti/build.sh /tmp/libtrace.so
    DIT_ATTENTION_MATMUL_TENSOR_CORES=1 TRACE_OUT=/tmp/t.csv CUDA_INJECTION64_PATH=/tmp/libtrace.so \
      ./.device/dynamic_device --out /tmp/c --runs 3 --shapes cogvideox-2b --combined-only --merge 0 > /dev/null 2>&1
    python3 scripts/cupti/kernels.py /tmp/t.csv 2>&1 | tee "$out/combined_kernels.log"
    ;;
esac
