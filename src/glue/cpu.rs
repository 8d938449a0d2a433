//! CPU backends run the burn-tensor references (the trait's default methods).

use super::backend::SparseAttentionBackend;

#[cfg(feature = "ndarray")]
impl<E, I, Q> SparseAttentionBackend for burn::backend::NdArray<E, I, Q>
where
    E: burn::backend::ndarray::FloatNdArrayElement,
    I: burn::backend::ndarray::IntNdArrayElement,
    Q: burn::backend::ndarray::QuantElement,
    burn::backend::ndarray::NdArrayTensor: From<burn::backend::ndarray::SharedArray<E>>,
    burn::backend::ndarray::NdArrayTensor: From<burn::backend::ndarray::SharedArray<I>>,
{
}

#[cfg(feature = "flex")]
impl SparseAttentionBackend for burn::backend::Flex {}
