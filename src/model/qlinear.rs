//! A linear layer over GGUF weights: Q4_1 and Q8_0 through rill's own kernels on the CPU, every other type
//! (and every GPU) through candle. Several weights that read the same input (Q, K and V; gate and up) can be
//! fused into one matrix, so one pass over the input and one dispatch to the worker threads serve them all.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{CpuStorage, Device, Module, Result, Storage, Tensor};

use super::quant::{self, q4_1::BlockQ4_1, q8_0::BlockQ8_0, QuantBlock};

/// `y = x · Wᵀ` for one weight, or several stacked along the output, stored `[out, in]` in a GGUF file.
pub struct QLinear {
    kind: Kind,
    /// Total output width (all parts).
    out: usize,
}

enum Kind {
    /// Q4_1 weights on the CPU: rill's kernel (candle's is scalar for this type).
    Q4_1(Vec<BlockQ4_1>),
    /// Q8_0 weights on the CPU: rill's kernel, rounding activations as llama.cpp does.
    Q8_0(Vec<BlockQ8_0>),
    /// Any other type or device: candle's quantized matmul, one per part.
    Candle(Vec<QMatMul>),
}

impl QLinear {
    pub fn new(w: Arc<QTensor>) -> Result<Self> {
        Self::fused(vec![w])
    }

    /// Stacks weights that share an input. rill's kernels are used when every part is Q4_1 (or every part
    /// Q8_0) on the CPU; `RILL_CANDLE_QUANT=1` forces candle's kernels (for comparisons).
    pub fn fused(parts: Vec<Arc<QTensor>>) -> Result<Self> {
        let mut out = 0;
        for p in &parts {
            out += p.shape().dims2()?.0;
        }
        let on_cpu = parts.iter().all(|p| matches!(p.device(), Device::Cpu));
        let own = on_cpu && std::env::var_os("RILL_CANDLE_QUANT").is_none();
        let dtype = parts[0].dtype();
        let same = parts.iter().all(|p| p.dtype() == dtype);
        let kind = match dtype {
            GgmlDType::Q4_1 if own && same => Kind::Q4_1(concat_blocks(&parts)?),
            GgmlDType::Q8_0 if own && same => Kind::Q8_0(concat_blocks(&parts)?),
            _ => Kind::Candle(
                parts
                    .into_iter()
                    .map(QMatMul::from_arc)
                    .collect::<Result<_>>()?,
            ),
        };
        Ok(Self { kind, out })
    }

    /// `x`: `[rows, in]` → `[rows, out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.kind {
            Kind::Candle(ms) if ms.len() == 1 => ms[0].forward(x),
            Kind::Candle(ms) => Tensor::cat(
                &ms.iter()
                    .map(|m| m.forward(x))
                    .collect::<Result<Vec<_>>>()?,
                1,
            ),
            Kind::Q4_1(b) => {
                Tensor::from_vec(self.own_matmul(x, b)?, (x.dim(0)?, self.out), x.device())
            }
            Kind::Q8_0(b) => {
                Tensor::from_vec(self.own_matmul(x, b)?, (x.dim(0)?, self.out), x.device())
            }
        }
    }

    /// For a fused `[gate; up]` weight: `silu(x·gateᵀ) * (x·upᵀ)`, `[rows, out / 2]`.
    pub fn forward_swiglu(&self, x: &Tensor) -> Result<Tensor> {
        let rows = x.dim(0)?;
        let half = self.out / 2;
        let y = match &self.kind {
            Kind::Q4_1(b) => self.own_matmul(x, b)?,
            Kind::Q8_0(b) => self.own_matmul(x, b)?,
            Kind::Candle(_) => {
                let y = self.forward(x)?;
                return candle_nn::ops::silu(&y.narrow(1, 0, half)?)? * y.narrow(1, half, half)?;
            }
        };
        let mut h = Vec::with_capacity(rows * half);
        for row in y.chunks_exact(self.out) {
            let (gate, up) = row.split_at(half);
            h.extend(gate.iter().zip(up).map(|(g, u)| g / (1.0 + (-g).exp()) * u));
        }
        Tensor::from_vec(h, (rows, half), x.device())
    }

    fn own_matmul<B: QuantBlock>(&self, x: &Tensor, blocks: &[B]) -> Result<Vec<f32>> {
        let (rows, k) = x.dims2()?;
        if blocks.len() * quant::QK != self.out * k {
            candle_core::bail!("quantized linear: input width {k} does not match the weight");
        }
        let mut dst = vec![0f32; rows * self.out];
        with_f32_rows(x, |xs| {
            quant::matmul(xs, rows, k, blocks, self.out, &mut dst)
        })?;
        Ok(dst)
    }
}

/// Runs `f` over the f32 contents of `x`, borrowing the CPU storage when it is contiguous f32.
fn with_f32_rows(x: &Tensor, f: impl FnOnce(&[f32])) -> Result<()> {
    let (storage, layout) = x.storage_and_layout();
    if let (Storage::Cpu(CpuStorage::F32(v)), Some((start, end))) =
        (&*storage, layout.contiguous_offsets())
    {
        f(&v[start..end]);
        return Ok(());
    }
    drop(storage);
    f(&x.to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?);
    Ok(())
}

fn concat_blocks<B: QuantBlock>(parts: &[Arc<QTensor>]) -> Result<Vec<B>> {
    let mut blocks = Vec::new();
    for p in parts {
        blocks.extend(quant::blocks_from_bytes::<B>(&p.data()?));
    }
    Ok(blocks)
}
