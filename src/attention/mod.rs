//! The public attention API on the engine: functions, configs and modules.
//!
//! Every call validates its inputs (errors name the values), then runs the backend's path: the
//! CubeCL kernel on `CubeBackend` / `Fusion<CubeBackend>` (what `burn::backend::Cuda` and
//! `Wgpu` are), the burn-tensor references on `NdArray` and `Flex`; `Autodiff<B>` runs `B`'s
//! forward and differentiates through the reference composite.

mod block_sparse;
mod dense;
mod functional;
mod sta;
mod video;

pub use block_sparse::{BlockSparseAttention, BlockSparseAttentionConfig};
pub use dense::{DenseAttention, DenseAttentionConfig};
pub use functional::{attention_with_plan, block_sparse_attention, dense_attention};
pub(crate) use functional::{check_backend, check_dtypes};
pub use sta::{SlidingTileAttention, SlidingTileAttentionConfig, sliding_tile_attention};
pub use video::{CallPosition, VideoAttention, VideoAttentionConfig};
