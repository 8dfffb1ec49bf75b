//! A linear layer over GGUF weights: Q4_1 through rill's own kernel, every other type through candle.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Result, Tensor};

use super::q4_1::{self, BlockQ4_1};

/// `y = x · Wᵀ` for a weight stored `[out, in]` in a GGUF file.
pub enum QLinear {
    /// Q4_1 weights on the CPU: rill's SIMD kernel (candle's is scalar for this type).
    Q4_1 { blocks: Vec<BlockQ4_1>, out: usize, inp: usize },
    /// Any other type or device: candle's quantized matmul.
    Candle(QMatMul),
}

impl QLinear {
    pub fn new(w: Arc<QTensor>) -> Result<Self> {
        let (out, inp) = w.shape().dims2()?;
        if w.dtype() == GgmlDType::Q4_1 && matches!(w.device(), Device::Cpu) && std::env::var("RILL_CANDLE_Q4_1").is_err() {
            let blocks = q4_1::blocks_from_bytes(&w.data()?);
            return Ok(Self::Q4_1 { blocks, out, inp });
        }
        QMatMul::from_arc(w).map(Self::Candle)
    }

    /// `x`: `[rows, in]` → `[rows, out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Candle(m) => m.forward(x),
            Self::Q4_1 { blocks, out, inp } => {
                let (rows, k) = x.dims2()?;
                if k != *inp {
                    candle_core::bail!("q4_1 linear: input width {k}, weight expects {inp}");
                }
                let xs = x.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                let mut dst = vec![0f32; rows * out];
                q4_1::matmul(&xs, rows, k, blocks, *out, &mut dst);
                Tensor::from_vec(dst, (rows, *out), x.device())
            }
        }
    }
}
