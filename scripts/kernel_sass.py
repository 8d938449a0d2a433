#!/usr/bin/env python3
"""Static look at the machine code of our CubeCL kernels (on the GPU machine, which has nvcc).

Run a binary with CUBECL_DEBUG_LOG=<log> (cubecl then logs every kernel's CUDA source), or,
without a GPU, write the MMA forward kernels' sources with
`cargo run -p dit-attention-kernels --example cuda_source -- <dir>`, then

    python3 scripts/kernel_sass.py <log or dir> <name regex> <out folder> [extra nvcc flags ...]

For every logged kernel whose name matches, this writes its source, compiles it for sm_90a with
nvcc (as NVRTC would, plus the extra flags), prints ptxas's register / spill line and a histogram
of the SASS opcodes (static counts: the loop bodies are unrolled, so they dominate), and for the
innermost loop holding the MMAs its instructions per HMMA and its local-memory (spill) accesses.

nvcc and cuobjdump come from PATH. Without a CUDA toolkit, the CUDA 13.0 wheels work on a CPU
machine (nvidia-cuda-nvcc, nvidia-nvvm, nvidia-cuda-crt, nvidia-cuda-runtime, nvidia-cuda-cccl,
nvidia-cuda-cuobjdump, nvidia-cuda-nvdisasm): put their bin/ on PATH and pass
`-I<wheel root>/include -I<wheel root>/include/cccl` as extra flags.

With NVRTC_ROOT=<wheel root> (and the `nvidia-cuda-nvrtc` wheel there) the source goes the way
the CUDA runtime sends it instead: NVRTC (sm_90a, -lineinfo) to PTX, then ptxas. Its register and
spill counts can differ from nvcc's by a few registers (NVRTC compiles the headers' RTC paths).
"""
import collections
import ctypes
import os
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


def sources(path: Path):
    """(name, source) of each kernel of a cubecl debug log, or of each `.cu` file of a folder."""
    if path.is_dir():
        for cu in sorted(path.glob("*.cu")):
            yield cu.stem, cu.read_text()
    else:
        yield from kernels(path.read_text(errors="replace"))


def mma_loop(sass: str):
    """The backward branch that closes the loop around the first HMMA: (instructions in it,
    HMMAs, local loads and stores), or None."""
    ins = [(int(a, 16), t) for a, t in re.findall(r"/\*([0-9a-f]{4,})\*/\s+(.*?);", sass)]
    first = next((a for a, t in ins if "HMMA" in t), None)
    if first is None:
        return None
    for a, t in ins:
        target = re.search(r"BRA\W.*0x([0-9a-f]+)", t)
        if a > first and target and int(target.group(1), 16) <= first:
            body = [t for b, t in ins if int(target.group(1), 16) <= b <= a]
            count = lambda op: sum(1 for t in body if re.match(rf"(@!?U?P\w+\s+)?{op}\b", t))
            return len(body), count("HMMA"), count("LDL"), count("STL")
    return None


def nvrtc_cubin(root: str, cu: Path, cubin: Path):
    """Compiles like cubecl's CUDA runtime: NVRTC to PTX, then ptxas to `cubin`; returns
    (return code, log)."""
    lib = ctypes.CDLL(os.path.join(root, "lib", "libnvrtc.so.13"))
    prog = ctypes.c_void_p()
    lib.nvrtcCreateProgram(ctypes.byref(prog), cu.read_bytes(), None, 0, None, None)
    opts = [b"--gpu-architecture=sm_90a", f"--include-path={root}/include".encode(),
            f"--include-path={root}/include/cccl".encode(), b"-lineinfo"]
    rc = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    if rc != 0:
        return rc, log.value.decode(errors="replace")
    lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
    ptx = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetPTX(prog, ptx)
    ptx_path = cubin.with_suffix(".ptx")
    ptx_path.write_bytes(ptx.value)
    res = subprocess.run([os.path.join(root, "bin", "ptxas"), "-arch=sm_90a", "-v", str(ptx_path), "-o", str(cubin)],
                         capture_output=True, text=True)
    return res.returncode, res.stderr


def main():
    src_path, pattern, out = Path(sys.argv[1]), re.compile(sys.argv[2]), Path(sys.argv[3])
    extra = sys.argv[4:]
    out.mkdir(parents=True, exist_ok=True)
    seen = set()
    for i, (name, src) in enumerate(sources(src_path)):
        if not pattern.search(name) or src in seen:
            continue
        seen.add(src)
        cu = out / f"k{i}.cu"
        # NVRTC accepts the barrier handle as cubecl's `uint64 *`; nvcc wants its own type.
        cu.write_text(src.replace("uint64 *mbar_ptr", "auto mbar_ptr"))
        cubin = out / f"k{i}.cubin"
        if os.environ.get("NVRTC_ROOT"):
            # NVRTC takes cubecl's source as the runtime hands it over.
            cu.write_text(src)
            code, log = nvrtc_cubin(os.environ["NVRTC_ROOT"], cu, cubin)
        else:
            cmd = ["nvcc", "-cubin", "-gencode=arch=compute_90a,code=sm_90a", "-lineinfo",
                   "-Xptxas", "-v", *extra, "-o", str(cubin), str(cu)]
            res = subprocess.run(cmd, capture_output=True, text=True)
            code, log = res.returncode, res.stderr
        print(f"== {cu.name}: {name[:160]}")
        for line in log.splitlines():
            if "registers" in line or "spill" in line or "error" in line:
                print("  ", line.strip())
        if code != 0:
            print(log[-2000:])
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
        loop = mma_loop(sass)
        if loop:
            n, hmma, ldl, stl = loop
            print(f"   MMA loop: {n} instructions, {hmma} HMMA ({n / max(hmma, 1):.2f} per HMMA), LDL {ldl}, STL {stl}")


if __name__ == "__main__":
    main()
