//! Smart attention (Sparse VideoGen, spec section 7): each (batch, head) is profiled online on
//! sampled query rows and runs as a spatial head (a band of frames) or a temporal head (the same
//! band in token-major order, gathered by the kernels as they load), both block-sparse bands of
//! the engine.

mod attention;
mod band;
mod profile;

pub use attention::{SmartAttention, SmartAttentionConfig, SmartOutput};
pub use band::{Band, BandSpec, HeadClass};
