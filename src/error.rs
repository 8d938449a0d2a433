//! The crate's error type: every bad input is reported with the values that make it bad.

use thiserror::Error;

/// Errors raised while validating canvases, windows, masks, shapes and options.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum DitAttentionError {
    /// A canvas, tile or window has a dimension of zero.
    #[error("{what} has a zero in dimension {dim} ({dims:?}); every dimension must be at least 1")]
    ZeroDimension {
        /// What was given (canvas, tile, window).
        what: &'static str,
        /// The dimension's name (t, h or w).
        dim: char,
        /// The whole value as given.
        dims: [usize; 3],
    },
    /// A window that must be odd is even.
    #[error("{what} must be odd in every dimension, got {value} in dimension {dim} (window {window:?})")]
    EvenWindow {
        /// Which window.
        what: &'static str,
        /// The dimension's name.
        dim: char,
        /// The even value.
        value: usize,
        /// The whole window.
        window: [usize; 3],
    },
    /// A window (or tile) is larger than the canvas where that has no meaning.
    #[error("{what} {value} in dimension {dim} is larger than the canvas length {len} (canvas {canvas:?})")]
    LargerThanCanvas {
        /// Which value (window, tile).
        what: &'static str,
        /// The dimension's name.
        dim: char,
        /// The offending value.
        value: usize,
        /// The canvas length in that dimension.
        len: usize,
        /// The whole canvas.
        canvas: [usize; 3],
    },
    /// A sequence length does not match the canvas plus text.
    #[error(
        "sequence length {got} does not match the layout: canvas {canvas:?} has {video} video tokens plus {text} text tokens = {expected}"
    )]
    SequenceLength {
        /// Length found in the tensor.
        got: usize,
        /// Expected length.
        expected: usize,
        /// Video tokens of the canvas.
        video: usize,
        /// Text tokens of the layout.
        text: usize,
        /// The canvas.
        canvas: [usize; 3],
    },
    /// Two tensors (or a tensor and a configuration) disagree on a shape.
    #[error("shape mismatch: {what}: expected {expected:?}, got {got:?}")]
    Shape {
        /// What was compared.
        what: String,
        /// Expected shape.
        expected: Vec<usize>,
        /// Shape found.
        got: Vec<usize>,
    },
    /// The backend's kernel path cannot take this input (dtype, head dim).
    #[error("not supported by the {path} path: {what}")]
    Unsupported {
        /// The kernel path (e.g. "portable CubeCL kernel on wgpu").
        path: String,
        /// What is not supported, with the values.
        what: String,
    },
    /// Any other invalid argument, with a message that names the values.
    #[error("{0}")]
    Invalid(String),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, DitAttentionError>;

/// Names of the three canvas dimensions, for error messages.
pub(crate) const DIM_NAMES: [char; 3] = ['t', 'h', 'w'];
