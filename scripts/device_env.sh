# Sourced by the device scripts: the log folder ($OUT, default /tmp/dit-out), the binaries in
# .device/ unpacked (they travel gzipped) and executable, and the GPU's name in the log.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${OUT:-/tmp/dit-out}
mkdir -p "$out"
for f in .device/*.gz; do
  [ -e "$f" ] && gunzip -f "$f"
done
chmod +x .device/* 2>/dev/null
export CUBECL_AUTOTUNE_LEVEL=${CUBECL_AUTOTUNE_LEVEL:-minimal}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/gpu.txt"
