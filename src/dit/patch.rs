//! 3D patchify and unpatchify: a latent video `[b, c, T, H, W]` <-> tokens `[b, N, c*pt*ph*pw]` in
//! natural canvas order (token `(t, h, w)` of the `T/pt x H/ph x W/pw` canvas at `t*nh*nw + h*nw + w`).

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use crate::error::DitAttentionError;

/// The token canvas of a latent of spatial dims `[T, H, W]` under `patch`, or an error naming
/// the dimension that the patch does not divide.
pub fn patch_canvas(dims: [usize; 3], patch: [usize; 3]) -> crate::Result<[usize; 3]> {
    let mut canvas = [0; 3];
    for (d, name) in ['t', 'h', 'w'].into_iter().enumerate() {
        if patch[d] == 0 || dims[d] == 0 || !dims[d].is_multiple_of(patch[d]) {
            return Err(DitAttentionError::Invalid(format!(
                "the latent's {name} length {} is not a positive multiple of the patch's {} (latent [T, H, W] {dims:?}, patch {patch:?})",
                dims[d], patch[d]
            )));
        }
        canvas[d] = dims[d] / patch[d];
    }
    Ok(canvas)
}

/// Cuts a latent video into patch tokens.
///
/// # Shapes
/// - latent `[b, c, T, H, W]`
/// - output `[b, nt*nh*nw, c*pt*ph*pw]` with `n_d = L_d / patch_d`, features ordered `(c, pt, ph, pw)`
pub fn patchify<B: Backend>(latent: Tensor<B, 5>, patch: [usize; 3]) -> crate::Result<Tensor<B, 3>> {
    let [b, c, t, h, w] = latent.dims();
    let [nt, nh, nw] = patch_canvas([t, h, w], patch)?;
    let [pt, ph, pw] = patch;
    // Six dims at most (NdArray's limit): batch, channel and patch row share the first axis.
    Ok(latent
        .reshape([b * c * nt, pt, nh, ph, nw, pw])
        .permute([0, 2, 4, 1, 3, 5])
        .reshape([b, c, nt * nh * nw, pt * ph * pw])
        .swap_dims(1, 2)
        .reshape([b, nt * nh * nw, c * pt * ph * pw]))
}

/// Puts patch tokens back into a latent video: the inverse of [`patchify`].
///
/// # Shapes
/// - tokens `[b, nt*nh*nw, c*pt*ph*pw]`
/// - output `[b, c, nt*pt, nh*ph, nw*pw]`
pub fn unpatchify<B: Backend>(
    tokens: Tensor<B, 3>,
    canvas: [usize; 3],
    patch: [usize; 3],
    channels: usize,
) -> crate::Result<Tensor<B, 5>> {
    let [b, n, f] = tokens.dims();
    let [nt, nh, nw] = canvas;
    let [pt, ph, pw] = patch;
    if n != nt * nh * nw || f != channels * pt * ph * pw {
        return Err(DitAttentionError::Invalid(format!(
            "unpatchify got tokens [{b}, {n}, {f}], expected [{b}, {}, {}] for canvas {canvas:?}, patch {patch:?} and {channels} channels",
            nt * nh * nw,
            channels * pt * ph * pw
        )));
    }
    Ok(tokens
        .reshape([b, n, channels, pt * ph * pw])
        .swap_dims(1, 2)
        .reshape([b * channels * nt, nh, nw, pt, ph, pw])
        .permute([0, 3, 1, 4, 2, 5])
        .reshape([b, channels, nt * pt, nh * ph, nw * pw]))
}
