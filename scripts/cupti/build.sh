#!/usr/bin/env bash
# Builds the CUPTI tracer on the GPU machine (gcc and CUDA's CUPTI there):
#   scripts/cupti/build.sh /tmp/libtrace.so
#   TRACE_OUT=/tmp/t.csv CUDA_INJECTION64_PATH=/tmp/libtrace.so ./program ...
#   python3 scripts/cupti/timeline.py /tmp/t.csv block_select
set -euo pipefail
out=${1:-/tmp/libtrace.so}
cuda=${CUDA_HOME:-/usr/local/cuda}/targets/x86_64-linux
h=$cuda/include/cupti_activity.h
# The newest record layouts this CUPTI declares (their names carry a version number).
latest() { grep -o "CUpti_Activity$1[0-9]*" "$h" | sort -V | tail -1; }
gcc -shared -fPIC -O2 -I"$cuda/include" \
  -DKERNEL_RECORD="$(latest Kernel)" -DMEMCPY_RECORD="$(latest Memcpy)" -DMEMSET_RECORD="$(latest Memset)" \
  "$(dirname "$0")/trace.c" -o "$out" -L"$cuda/lib" -lcupti -Wl,-rpath,"$cuda/lib"
