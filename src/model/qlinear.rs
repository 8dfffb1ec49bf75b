//! A linear layer over GGUF weights: Q4_1 through rill's own kernel, every other type through candle.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Result, Tensor};

use super::quant::{self, q4_1::BlockQ4_1, q8_0::BlockQ8_0, QuantBlock};

/// `y = x · Wᵀ` for a weight stored `[out, in]` in a GGUF file.
pub enum QLinear {
    /// Q4_1 weights on the CPU: rill's kernel (candle's is scalar for this type).
    Q4_1(Blocks<BlockQ4_1>),
    /// Q8_0 weights on the CPU: rill's kernel, rounding activations as llama.cpp does.
    Q8_0(Blocks<BlockQ8_0>),
    /// Any other type or device: candle's quantized matmul.
    Candle(QMatMul),
}

/// A weight matrix as GGML blocks, `out` rows of `inp` values.
pub struct Blocks<B> {
    blocks: Vec<B>,
    out: usize,
    inp: usize,
}

impl<B: QuantBlock> Blocks<B> {
    fn new(w: &QTensor) -> Result<Self> {
        let (out, inp) = w.shape().dims2()?;
        Ok(Self {
            blocks: quant::blocks_from_bytes(&w.data()?),
            out,
            inp,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (rows, k) = x.dims2()?;
        if k != self.inp {
            candle_core::bail!(
                "quantized linear: input width {k}, weight expects {}",
                self.inp
            );
        }
        let xs = x
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let mut dst = vec![0f32; rows * self.out];
        quant::matmul(&xs, rows, k, &self.blocks, self.out, &mut dst);
        Tensor::from_vec(dst, (rows, self.out), x.device())
    }
}

impl QLinear {
    /// Picks rill's kernel for Q4_1 and Q8_0 weights on the CPU, candle's for everything else.
    /// `RILL_CANDLE_QUANT=1` forces candle's kernels (for comparisons).
    pub fn new(w: Arc<QTensor>) -> Result<Self> {
        let own =
            matches!(w.device(), Device::Cpu) && std::env::var_os("RILL_CANDLE_QUANT").is_none();
        match w.dtype() {
            GgmlDType::Q4_1 if own => Ok(Self::Q4_1(Blocks::new(&w)?)),
            GgmlDType::Q8_0 if own => Ok(Self::Q8_0(Blocks::new(&w)?)),
            _ => QMatMul::from_arc(w).map(Self::Candle),
        }
    }

    /// `x`: `[rows, in]` → `[rows, out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Candle(m) => m.forward(x),
            Self::Q4_1(b) => b.forward(x),
            Self::Q8_0(b) => b.forward(x),
        }
    }
}
