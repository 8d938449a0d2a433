//! The crate's seeded generator (splitmix64): destination draws of token merging, sampled
//! query rows of smart attention, sampled tokens of dynamic block-sparse attention. Small,
//! exact and the same on every platform.

/// splitmix64.
pub(crate) struct SplitMix(u64);

impl SplitMix {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (Lemire's multiply-shift; the bias is below 2^-40 for the sizes here).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        ((self.next() as u128 * n as u128) >> 64) as usize
    }
}

/// The per-call seed: a config's seed mixed with the call's layer and step, so calls draw
/// different samples and the same call always draws the same ones.
pub(crate) fn call_seed(seed: u64, layer: usize, step: usize) -> u64 {
    seed ^ SplitMix::new(((layer as u64) << 32) ^ step as u64).next()
}
