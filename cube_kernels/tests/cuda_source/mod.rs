//! The CUDA C++ that cubecl generates for our CUDA-only kernels (the MMA forwards with 16 and 32
//! query rows a plane, the MMA backward's dQ and dK/dV kernels, the tensor-core token matching
//! and checked matmul), without a GPU: each kernel is expanded
//! with the CUDA runtime's MMA layout and H100-like device properties and compiled by cubecl's
//! CUDA compiler to source, as the runtime does before handing it to NVRTC. Shared by the
//! `cuda_kernels` test (expansion and structure, in CI) and the `cuda_source` example (writes
//! the files for `scripts/kernel_sass.py`).
#![allow(dead_code)]

use cubecl::Compiler;
use cubecl::cuda::{CudaCompiler, CudaRuntime};
use cubecl::ir::{AddressType, DeviceProperties, HardwareProperties, MemoryDeviceProperties, StorageType};
use cubecl::prelude::*;
use dit_attention_kernels::attention::{
    MapConfig, MapSource, SparseMap, SparseMapCompilationArg, block_sparse_backward_dkv_mma,
    block_sparse_backward_dq_mma, block_sparse_forward_mma, block_sparse_forward_mma_wide, mma_shape,
};
use dit_attention_kernels::matmul_tensor_core::{batched_matmul_tensor_core, tensor_core_grid};
use dit_attention_kernels::merge::best_match_mma;

/// Device properties of an H100 as far as kernel expansion reads them.
pub fn h100() -> DeviceProperties {
    let hardware = HardwareProperties {
        load_width: 128,
        plane_size_min: 32,
        plane_size_max: 32,
        max_bindings: 1024,
        max_shared_memory_size: 227 * 1024,
        max_cube_count: (u32::MAX, 65_535, 65_535),
        max_units_per_cube: 1024,
        max_cube_dim: (1024, 1024, 64),
        num_streaming_multiprocessors: Some(132),
        num_cpu_cores: None,
        num_tensor_cores: Some(4),
        min_tensor_cores_dim: Some(8),
        max_vector_size: VectorSize::MAX,
    };
    let memory = MemoryDeviceProperties { max_page_size: 20 << 30, alignment: 256 };
    DeviceProperties::new(Default::default(), memory, hardware, cubecl::profile::TimingMethod::System)
}

/// A kernel being expanded: the builder with the CUDA runtime's MMA layout and H100 properties,
/// and its arguments declared in order.
pub struct Expander {
    pub builder: KernelBuilder,
    settings: KernelSettings,
}

impl Expander {
    /// A kernel named `name` with cubes of `planes` planes.
    pub fn new(name: &str, planes: usize) -> Self {
        let mut builder = KernelBuilder::default();
        builder.runtime_properties(CudaRuntime::target_properties());
        builder.device_properties(&h100());
        let settings =
            KernelSettings::default().cube_dim(CubeDim::new_2d(32, planes as u32)).address_type(AddressType::U32);
        let settings = settings.kernel_name(name);
        settings.address_type.register(&mut builder.scope);
        Self { builder, settings }
    }

    /// Registers generic `T` (a kernel module's `DynamicScalar` marker) as `elem`.
    pub fn register<T: CubePrimitive>(&mut self, elem: StorageType) {
        self.builder.scope.register_type::<T>(elem);
    }

    /// An input array.
    pub fn input<T: CubePrimitive>(&mut self) -> <Array<T> as CubeType>::ExpandType {
        <Array<T> as LaunchArg>::expand(&ArrayCompilationArg { inplace: None }, &mut self.builder)
    }

    /// An output array.
    pub fn output<T: CubePrimitive>(&mut self) -> <Array<T> as CubeType>::ExpandType {
        <Array<T> as LaunchArg>::expand_output(&ArrayCompilationArg { inplace: None }, &mut self.builder)
    }

    /// A block map.
    pub fn map(&mut self) -> <SparseMap as CubeType>::ExpandType {
        let arr = ArrayCompilationArg { inplace: None };
        let arg = SparseMapCompilationArg {
            q_starts: arr.clone(),
            k_starts: arr.clone(),
            counts: arr.clone(),
            indices: arr.clone(),
            mask_offsets: arr.clone(),
            mask_bits: arr.clone(),
            sta: arr.clone(),
            gather: arr,
        };
        <SparseMap as LaunchArg>::expand(&arg, &mut self.builder)
    }

    /// `N` scalars of type `T`.
    pub fn scalars<T: LaunchArg<CompilationArg = ()>, const N: usize>(&mut self) -> [<T as CubeType>::ExpandType; N] {
        std::array::from_fn(|_| <T as LaunchArg>::expand(&(), &mut self.builder))
    }

    /// The C++ of the expanded kernel.
    pub fn finish(self, mode: ExecutionMode) -> String {
        compile(self.builder.build(self.settings), mode)
    }
}

fn bf16() -> StorageType {
    half::bf16::as_type_native_unchecked().storage_type()
}

/// The tensor-core batched matmul (`out[z] = a[z] b[z]`, `b` transposed or not) for bf16, as
/// its checked launch compiles it.
pub fn matmul_source(b_transposed: bool) -> String {
    use batched_matmul_tensor_core as kernel;
    type E = DynamicScalar<kernel::_F>;
    let (_, dim) = tensor_core_grid(1, 64, 128);
    let mut x = Expander::new("batched_matmul_tensor_core", dim.y as usize);
    x.register::<E>(bf16());
    let (a, b, out) = (x.input::<E>(), x.input::<E>(), x.output::<E>());
    let [m, n, k] = x.scalars::<u32, 3>();
    kernel::expand::<E>(&mut x.builder.scope, a, b, out, m, n, k, b_transposed);
    x.finish(ExecutionMode::Checked)
}

/// The tensor-core token matching (`best_match_mma`) for bf16 unit metrics of `channels`
/// channels, `m_tiles` 16-row tiles a plane.
pub fn matching_source(channels: usize, tile: usize, warps: usize, m_tiles: usize) -> String {
    use best_match_mma as kernel;
    type E = DynamicScalar<kernel::_F>;
    type I = DynamicScalar<kernel::_I>;
    let mut x = Expander::new("best_match_mma", warps);
    x.register::<E>(bf16());
    x.register::<I>(u32::as_type_native_unchecked().storage_type());
    let (unit, src, dst) = (x.input::<E>(), x.input::<u32>(), x.input::<u32>());
    let (best, best_idx) = (x.output::<f32>(), x.output::<I>());
    let [n, sources, dsts] = x.scalars::<u32, 3>();
    kernel::expand::<E, I>(
        &mut x.builder.scope,
        unit,
        src,
        dst,
        best,
        best_idx,
        n,
        sources,
        dsts,
        channels,
        tile,
        warps,
        m_tiles,
    );
    x.finish(ExecutionMode::Unchecked)
}

/// A backward kernel (`$kernel`, with the outputs `$output: $ty` after its inputs) for bf16.
macro_rules! backward_source {
    ($kernel:ident, $v:expr, $has_d_out:expr, $($output:ident: $ty:ty),+) => {{
        use $kernel as kernel;
        type E = DynamicScalar<kernel::_F>;
        let v: &Variant = $v;
        let mut x = Expander::new(stringify!($kernel), v.warps);
        x.register::<E>(bf16());
        let (q, k, val, b) = (x.input::<E>(), x.input::<E>(), x.input::<E>(), x.input::<E>());
        let map = x.map();
        let (d_out, lse, delta) = (x.input::<E>(), x.input::<f32>(), x.input::<f32>());
        $(let $output = x.output::<$ty>();)+
        let [q_len, k_len, heads, map_heads, max_count, chunks, bbs, bhs] = x.scalars::<u32, 8>();
        let [scale] = x.scalars::<f32, 1>();
        kernel::expand::<E>(
            &mut x.builder.scope,
            q,
            k,
            val,
            b,
            map,
            d_out,
            lse,
            delta,
            $($output,)+
            q_len,
            k_len,
            heads,
            map_heads,
            max_count,
            chunks,
            bbs,
            bhs,
            scale,
            v.head_dim,
            v.value_dim,
            v.has_bias,
            $has_d_out,
            v.config,
            v.warps,
        );
        x.finish(ExecutionMode::Unchecked)
    }};
}

/// The tensor-core backward's dQ (`dkv == false`) or dK/dV/dbias kernel for bf16.
pub fn backward_source(dkv: bool, v: &Variant, has_d_out: bool) -> String {
    if dkv {
        backward_source!(block_sparse_backward_dkv_mma, v, has_d_out, dk: E, dv: E, dbias: f32)
    } else {
        backward_source!(block_sparse_backward_dq_mma, v, has_d_out, dq: E)
    }
}

/// A forward kernel (`$kernel`: a module generated by `#[cube]` with the forward's arguments)
/// for bf16 inputs, as C++.
macro_rules! forward_source {
    ($kernel:ident, $head_dim:expr, $value_dim:expr, $has_bias:expr, $config:expr, $warps:expr) => {{
        use $kernel as kernel;
        type E = DynamicScalar<kernel::_F>;
        let mut x = Expander::new(stringify!($kernel), $warps);
        x.register::<E>(bf16());
        let (q, k, v, bias) = (x.input::<E>(), x.input::<E>(), x.input::<E>(), x.input::<E>());
        let map = x.map();
        let (out, lse) = (x.output::<E>(), x.output::<f32>());
        let [q_len, k_len, heads, map_heads, max_count, chunks, bbs, bhs] = x.scalars::<u32, 8>();
        let [scale, empty_lse] = x.scalars::<f32, 2>();
        kernel::expand::<E>(
            &mut x.builder.scope,
            q,
            k,
            v,
            bias,
            map,
            out,
            lse,
            q_len,
            k_len,
            heads,
            map_heads,
            max_count,
            chunks,
            bbs,
            bhs,
            scale,
            empty_lse,
            $head_dim,
            $value_dim,
            $has_bias,
            $config,
            $warps,
        );
        x.finish(ExecutionMode::Unchecked)
    }};
}

/// The C++ of a kernel definition, with the options the CUDA runtime sets on an H100.
// The options' type lives in cubecl-cpp, not a dependency of ours: it is reached through the
// compiler's associated type, so its fields are set one by one.
#[allow(clippy::field_reassign_with_default)]
pub fn compile(definition: cubecl::prelude::KernelDefinition, mode: ExecutionMode) -> String {
    let mut options = <CudaCompiler as cubecl::Compiler>::CompilationOptions::default();
    options.warp_size = 32;
    options.supports_features.fast_math = true;
    options.supports_features.grid_constants = true;
    options.supports_features.fast_tanh = true;
    options.supports_features.clusters = true;
    options.supports_features.elect_sync = true;
    let addr: StorageType = u32::as_type_native_unchecked().storage_type();
    CudaCompiler::default()
        .compile(definition, &options, mode, addr)
        .expect("cubecl compiles the kernel to C++")
        .to_string()
}

/// Which MMA forward kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    /// `block_sparse_forward_mma`: 16 query rows a plane.
    Rows16,
    /// `block_sparse_forward_mma_wide`: 32 query rows a plane.
    Rows32,
}

/// One forward kernel configuration.
#[derive(Debug, Clone, Copy)]
pub struct Variant {
    pub kernel: Forward,
    pub head_dim: usize,
    pub value_dim: usize,
    pub has_bias: bool,
    pub config: MapConfig,
    pub warps: usize,
}

impl Variant {
    /// A file name: map source, head and value dims, rows and planes.
    pub fn name(&self) -> String {
        let map = match self.config.source {
            MapSource::All => "dense",
            MapSource::Sta => "sta",
            MapSource::Arrays if self.config.partial => "partial",
            MapSource::Arrays => "lists",
        };
        let gathered = if self.config.gathered { "_gathered" } else { "" };
        let bias = if self.has_bias { "_bias" } else { "" };
        let rows = if self.kernel == Forward::Rows16 { 16 } else { 32 };
        format!("{map}{gathered}{bias}_d{}v{}_r{rows}_w{}", self.head_dim, self.value_dim, self.warps)
    }

    /// The kernel's C++.
    pub fn source(&self) -> String {
        let (hd, vd, bias, config, warps) = (self.head_dim, self.value_dim, self.has_bias, self.config, self.warps);
        match self.kernel {
            Forward::Rows16 => forward_source!(block_sparse_forward_mma, hd, vd, bias, config, warps),
            Forward::Rows32 => forward_source!(block_sparse_forward_mma_wide, hd, vd, bias, config, warps),
        }
    }
}

/// Every `(rows a plane, planes a cube)` the launcher's [`mma_shape`] can pick, with or without
/// overrides (16 rows with 4, 8 or 12 planes, 32 rows with 2, 4 or 6).
pub fn shapes() -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for max_block in [64, 128] {
        for rows in [None, Some(32)] {
            for planes in [None, Some(2), Some(4), Some(6), Some(8), Some(12)] {
                let shape = mma_shape(max_block, rows, planes);
                if !out.contains(&shape) {
                    out.push(shape);
                }
            }
        }
    }
    out
}

/// The configurations the launcher can pick: every map kind the benchmarks use, head/value dims
/// 64/64, 128/128 and 128/64, and every shape of [`shapes`].
pub fn variants() -> Vec<Variant> {
    let map = |source, partial, gathered| MapConfig { source, partial, gathered };
    let maps = [
        (map(MapSource::All, false, false), false),
        (map(MapSource::Sta, false, false), false),
        (map(MapSource::Sta, false, true), true),
        (map(MapSource::Arrays, false, false), true),
        (map(MapSource::Arrays, true, true), true),
    ];
    let mut out = Vec::new();
    for (config, has_bias) in maps {
        for (head_dim, value_dim) in [(64, 64), (128, 128), (128, 64)] {
            for (rows, warps) in shapes() {
                let kernel = if rows == 16 { Forward::Rows16 } else { Forward::Rows32 };
                out.push(Variant { kernel, head_dim, value_dim, has_bias, config, warps });
            }
        }
    }
    out
}
