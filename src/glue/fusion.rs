//! `Fusion<B>` (what `burn::backend::Cuda` and `Wgpu` are with burn's default features): the
//! forward is registered as a custom operation in the fusion stream and runs `B`'s kernel when
//! the stream executes.

use std::marker::PhantomData;

use burn::tensor::{DType, Shape, ops::FloatTensor};
use burn_fusion::stream::{Operation, OperationStreams};
use burn_fusion::{Fusion, FusionBackend};
use burn_ir::{CustomOpIr, HandleContainer, OperationIr, TensorIr};

use super::backend::SparseAttentionBackend;
use crate::error::Result;
use crate::plan::KernelPlan;

#[derive(Debug)]
struct ForwardOp<B> {
    desc: CustomOpIr,
    plan: KernelPlan,
    _b: PhantomData<B>,
}

impl<B: FusionBackend + SparseAttentionBackend> Operation<B::FusionRuntime> for ForwardOp<B> {
    fn execute(&self, handles: &mut HandleContainer<B::Handle>) {
        let ins = &self.desc.inputs;
        let get = |h: &mut HandleContainer<B::Handle>, i: usize| h.get_float_tensor::<B>(&ins[i]);
        let (q, k, v) = (get(handles, 0), get(handles, 1), get(handles, 2));
        let bias = (ins.len() == 4).then(|| get(handles, 3));
        let (out, lse) = B::sparse_attention_forward(q, k, v, bias, &self.plan);
        handles.register_float_tensor::<B>(&self.desc.outputs[0].id, out);
        handles.register_float_tensor::<B>(&self.desc.outputs[1].id, lse);
    }
}

impl<B: FusionBackend + SparseAttentionBackend> SparseAttentionBackend for Fusion<B> {
    fn sparse_attention_support(device: &Self::Device, dtype: DType, head_dim: usize, value_dim: usize) -> Result<()> {
        B::sparse_attention_support(device, dtype, head_dim, value_dim)
    }

    fn sparse_attention_check_plan(device: &Self::Device, plan: &KernelPlan, batch_heads: usize) -> Result<()> {
        B::sparse_attention_check_plan(device, plan, batch_heads)
    }

    fn sparse_attention_path(device: &Self::Device, dtype: DType, head_dim: usize, value_dim: usize) -> &'static str {
        B::sparse_attention_path(device, dtype, head_dim, value_dim)
    }

    fn sparse_attention_forward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        plan: &KernelPlan,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let client = q.client.clone();
        let mut streams = OperationStreams::with_inputs([&q, &k, &v]);
        if let Some(b) = &bias {
            streams.tensor(b);
        }
        let [batch, heads, q_len] = [q.shape[0], q.shape[1], q.shape[2]];
        let value_dim = v.shape[3];
        let out =
            TensorIr::uninit(client.create_empty_handle(), Shape::from([batch, heads, q_len, value_dim]), q.dtype);
        let lse = TensorIr::uninit(client.create_empty_handle(), Shape::from([batch, heads, q_len]), DType::F32);
        let mut inputs = vec![q.into_ir(), k.into_ir(), v.into_ir()];
        inputs.extend(bias.map(|b| b.into_ir()));
        let desc = CustomOpIr::new("dit_attention::block_sparse_forward", &inputs, &[out, lse]);
        let op = ForwardOp::<B> { desc: desc.clone(), plan: plan.clone(), _b: PhantomData };
        let mut outputs = client.register(streams, OperationIr::Custom(desc), op);
        let lse = outputs.pop().expect("two outputs");
        let out = outputs.pop().expect("two outputs");
        (out, lse)
    }
}
