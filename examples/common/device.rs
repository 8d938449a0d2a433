//! The `--device` choice of the examples that run on any backend.

/// The backend a run uses.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    /// burn's CPU backend (the burn-tensor references, the reference backward).
    Ndarray,
    /// `burn::backend::Wgpu` (the portable CubeCL kernels); needs `--features wgpu`.
    Wgpu,
    /// `burn::backend::Cuda` (the tensor-core kernels); needs `--features cuda`.
    Cuda,
}

/// The error for a backend the example was not built with.
pub fn not_built(kind: DeviceKind) -> Box<dyn std::error::Error> {
    let feature = format!("{kind:?}").to_lowercase();
    format!("--device {feature} needs the example built with `--features {feature}`").into()
}
