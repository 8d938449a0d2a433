#!/usr/bin/env python3
"""Static look at the machine code of our CubeCL kernels (on the GPU machine, which has nvcc).

Run a binary with CUBECL_DEBUG_LOG=<log> (cubecl then logs every kernel's CUDA source), then

    python3 scripts/kernel_sass.py <log> <name regex> <out folder> [extra nvcc flags ...]

For every logged kernel whose name matches, this writes its source, compiles it for sm_90a with
nvcc (as NVRTC would, plus the extra flags), prints ptxas's register / spill line and a histogram
of the SASS opcodes (static counts: the loop bodies are unrolled, so they dominate).

nvcc and cuobjdump come from PATH. Without a CUDA toolkit, the CUDA 13.0 wheels work on a CPU
machine (nvidia-cuda-nvcc, nvidia-nvvm, nvidia-cuda-crt, nvidia-cuda-runtime, nvidia-cuda-cccl,
nvidia-cuda-cuobjdump, nvidia-cuda-nvdisasm): put their bin/ on PATH and pass
`-I<wheel root>/include -I<wheel root>/include/cccl` as extra flags.
"""
import collections
import re
import subprocess
import sys
from pathlib import Path


def kernels(log: str):
    for block in log.split("[START_KERNEL_COMPILATION]")[1:]:
        block = block.split("[END_KERNEL_COMPILATION]")[0]
        name = re.search(r"^name: (.*)$", block, re.M)
        src = re.search(r"source:\n```[a-z]*\n(.*)\n```", block, re.S)
        if name and src:
            yield name.group(1).strip(), src.group(1)


def main():
    log, pattern, out = sys.argv[1], re.compile(sys.argv[2]), Path(sys.argv[3])
    extra = sys.argv[4:]
    out.mkdir(parents=True, exist_ok=True)
    seen = set()
    for i, (name, src) in enumerate(kernels(Path(log).read_text(errors="replace"))):
        if not pattern.search(name) or src in seen:
            continue
        seen.add(src)
        cu = out / f"k{i}.cu"
        # NVRTC accepts the barrier handle as cubecl's `uint64 *`; nvcc wants its own type.
        cu.write_text(src.replace("uint64 *mbar_ptr", "auto mbar_ptr"))
        cubin = out / f"k{i}.cubin"
        cmd = ["nvcc", "-cubin", "-gencode=arch=compute_90a,code=sm_90a", "-lineinfo",
               "-Xptxas", "-v", *extra, "-o", str(cubin), str(cu)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        print(f"== {cu.name}: {name[:160]}")
        for line in res.stderr.splitlines():
            if "registers" in line or "spill" in line or "error" in line:
                print("  ", line.strip())
        if res.returncode != 0:
            print(res.stderr[-2000:])
            continue
        sass = subprocess.run(["cuobjdump", "-sass", str(cubin)], capture_output=True, text=True).stdout
        (out / f"k{i}.sass").write_text(sass)
        ops = collections.Counter()
        for line in sass.splitlines():
            m = re.match(r"\s*/\*[0-9a-f]+\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", line)
            if m:
                ops[m.group(2).split(".")[0]] += 1
        total = sum(ops.values())
        print(f"   {total} instructions; " + ", ".join(f"{op} {n}" for op, n in ops.most_common(40)))


if __name__ == "__main__":
    main()
