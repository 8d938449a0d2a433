//! Writes the CUDA C++ that cubecl generates for the CUDA-only kernels (see
//! `tests/cuda_source`: the MMA forwards in every configuration the launcher can pick, the MMA
//! backward and the tensor-core matching at 8 planes, the tensor-core matmul) into a folder, one
//! file per configuration, for
//! `scripts/kernel_sass.py` (compile for sm_90a, registers, spills, SASS counts) on a machine with
//! no GPU.
//!
//! `cargo run -p dit-attention-kernels --example cuda_source -- OUT_DIR`

#[path = "../tests/cuda_source/mod.rs"]
mod cuda_source;

fn main() {
    let out = std::path::PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "target/cuda_source".into()));
    std::fs::create_dir_all(&out).expect("output directory");
    let write = |name: String, source: String| {
        let path = out.join(format!("{name}.cu"));
        std::fs::write(&path, source).expect("write source");
        println!("{}", path.display());
    };
    for variant in cuda_source::variants() {
        write(variant.name(), variant.source());
    }
    for v in cuda_source::variants().iter().filter(|v| v.kernel == cuda_source::Forward::Rows16 && v.warps == 8) {
        let name = v.name().replace("_r16", "");
        write(format!("backward_dq_{name}"), cuda_source::backward_source(false, v, true));
        write(format!("backward_dkv_{name}"), cuda_source::backward_source(true, v, true));
    }
    for (channels, tile) in [(144, 64), (272, 32)] {
        for m_tiles in [1, 2] {
            let source = cuda_source::matching_source(channels, tile, 8, m_tiles);
            write(format!("matching_c{channels}_rows{}", 16 * m_tiles), source);
        }
    }
    for transposed in [false, true] {
        write(format!("matmul_tensor_core_t{}", u8::from(transposed)), cuda_source::matmul_source(transposed));
    }
}
