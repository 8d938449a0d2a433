#!/usr/bin/env bash
# The wide MMA forward (32 query rows a plane, `DIT_ATTENTION_MMA_ROWS=32`) on the GPU machine:
# its CUDA tests, then the forward timed against the 16-row default and the peers in one run.
# Expects .device/engine_cuda (the test binary) and .device/engine_device (README "On a GPU").
#   scripts/device_wide.sh tests [VARIANTS]  # forward tests: rows16 rows32 rows32w4 rows32w6 (all
#                                            # by default; fewer per call if all overrun 600 s)
#   scripts/device_wide.sh bench             # 16 rows, 32 rows x 4 and x 6 planes; then torch
# Each section fits one `run` call (600 s); OUT collects the logs; .device/*.gz are unpacked.
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
# Forward tests that take the MMA path: half-precision STA (head dims 64/128, bias, ragged
# tiles, natural order), partial blocks, the dynamic selection's device lists, Combined.
tests="half_precision partial_blocks_are_masked many_blocks_and_gradients combined_attention_matches"
case "${1:-tests}" in
  tests)
    # The 16-row default first: its K/V pipeline moved into mma_pipeline.rs without a GPU run.
    for variant in ${2:-rows16 rows32 rows32w4 rows32w6}; do
      vars=(DIT_ATTENTION_MMA_ROWS=32)
      case $variant in
        rows16) vars=(DIT_ATTENTION_MMA_ROWS=16) ;;
        rows32w4) vars+=(DIT_ATTENTION_MMA_WARPS=4) ;;
        rows32w6) vars+=(DIT_ATTENTION_MMA_WARPS=6) ;;
      esac
      env "${vars[@]}" ./.device/engine_cuda --test-threads 1 $tests 2>&1 | tee "$out/tests_$variant.log" | tail -n 25
      echo "$variant tests exit code: ${PIPESTATUS[0]}"
    done
    ;;
  bench)
    shapes=${SHAPES:-hunyuan,cogvideox-2b}
    runs=${RUNS:-5}
    ./.device/engine_device --out /tmp/d16 --runs "$runs" --shapes "$shapes" 2>&1 | tee "$out/ours16.log"
    DIT_ATTENTION_MMA_ROWS=32 ./.device/engine_device --out /tmp/d32 --runs "$runs" --shapes "$shapes" 2>&1 \
      | tee "$out/ours32.log"
    DIT_ATTENTION_MMA_ROWS=32 DIT_ATTENTION_MMA_WARPS=6 ./.device/engine_device --out /tmp/d32w6 --runs "$runs" \
      --shapes "$shapes" 2>&1 | tee "$out/ours32w6.log"
    # The peers on the wide kernel's inputs, and its outputs against the f32 reference.
    python3 scripts/bench_vs_torch.py /tmp/d32 2>&1 | tee "$out/torch.log"
    ;;
esac
