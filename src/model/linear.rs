//! A linear layer over whatever weights a model came with: quantized GGUF tensors through [`QLinear`], dense
//! f32, f16 or bf16 through rill's [`Dense`] kernel on the CPU (candle's matmul elsewhere), with an optional bias. Parts
//! that read the same input (Q, K and V; gate and up) are stacked into one matrix at load.

use candle_core::{DType, Device, Result, Tensor};

use super::dense::Dense;
use super::qlinear::{glu_rows, with_f32_rows, QLinear};
use super::team::{Part, Parts};
use super::weights::Weight;

pub use super::gate::Activation;

/// `y = x · Wᵀ (+ b)`, `W` stored `[out, in]`.
pub struct Linear {
    kind: Kind,
    /// Added after the product when the weights are quantized (the dense kernel adds its own).
    bias: Option<Tensor>,
    /// The same on the host, for team steps.
    bias_host: Option<Vec<f32>>,
    out: usize,
}

enum Kind {
    Quant(QLinear),
    Dense(Dense),
    /// Dense weights on a GPU: candle's matmul.
    Device(Tensor),
}

impl Linear {
    /// One weight with an optional bias.
    pub fn new(w: Weight, b: Option<Tensor>) -> Result<Self> {
        Self::fused(vec![w], b.map(|b| vec![b]))
    }

    /// Stacks `parts` along the output (all quantized or all dense), with their biases if they have them.
    pub fn fused(parts: Vec<Weight>, biases: Option<Vec<Tensor>>) -> Result<Self> {
        let mut out = 0;
        for p in &parts {
            out += p.dims2()?.0;
        }
        let bias = match biases {
            Some(b) => Some(Tensor::cat(&b, 0)?.to_dtype(DType::F32)?),
            None => None,
        };
        // On a GPU the stacked matrix is what each step reads, so its size decides, once for all its parts:
        // deciding each part alone kept a 1B model's 4M-value Q quantized and widened its K and V, and parts
        // of mixed types then all became f32.
        let values = parts
            .iter()
            .map(|p| p.dims2().map(|(o, i)| o * i))
            .sum::<Result<usize>>()?;
        let widen_on_gpu = gpu_dequantizes(values);
        // Float "quantized" tensors of a GGUF file (F32, F16, BF16) run through the dense float kernel on the
        // CPU like safetensors weights: candle's quantized matmul takes a different summation path for one row
        // than for several, which would make a position's bits depend on the batch.
        let float = |q: &candle_core::quantized::QTensor| {
            use candle_core::quantized::GgmlDType as T;
            match q.device().is_cpu() {
                true => matches!(q.dtype(), T::F32 | T::F16 | T::BF16),
                false => widen_on_gpu,
            }
        };
        let quant: Vec<_> = parts
            .iter()
            .filter_map(|p| match p {
                Weight::Quant(q) if !float(q) => Some(q.clone()),
                _ => None,
            })
            .collect();
        if quant.len() == parts.len() {
            let bias_host = match &bias {
                Some(b) if b.device().is_cpu() => Some(b.to_vec1()?),
                _ => None,
            };
            return Ok(Self {
                kind: Kind::Quant(QLinear::fused(quant)?),
                bias,
                bias_host,
                out,
            });
        }
        // The dense kernel on the CPU reads f16 and bf16 weights as they are, and so does candle's matmul on a
        // GPU (where the loader keeps them half only for large matrices or when asked); a GGUF file's quantized
        // weights on a GPU, and parts of mixed types, become f32.
        let mut dense: Vec<Tensor> = parts
            .iter()
            .map(|p| match (device_of(p).is_cpu(), p) {
                (true, _) | (false, Weight::Dense(_)) => p.to_float(&device_of(p)),
                (false, Weight::Quant(_)) => p.to_f32(&device_of(p)),
            })
            .collect::<Result<_>>()?;
        if dense.iter().any(|t| t.dtype() != dense[0].dtype()) {
            let dtypes: Vec<DType> = dense.iter().map(Tensor::dtype).collect();
            let to = stacked_dtype(&dtypes, values, !dense[0].device().is_cpu());
            dense = dense
                .iter()
                .map(|t| t.to_dtype(to))
                .collect::<Result<_>>()?;
        }
        let w = if dense.len() == 1 {
            dense.into_iter().next().expect("one part")
        } else {
            Tensor::cat(&dense, 0)?
        };
        if w.device().is_cpu() && std::env::var_os("RILL_CANDLE_F32").is_none() {
            let kind = Kind::Dense(Dense::new(w, bias.as_ref())?);
            return Ok(Self {
                kind,
                bias: None,
                bias_host: None,
                out,
            });
        }
        Ok(Self {
            kind: Kind::Device(w),
            bias,
            bias_host: None,
            out,
        })
    }

    /// `x`: `[rows, in]` → `[rows, out]` f32.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match &self.kind {
            Kind::Quant(q) => q.forward(x)?,
            Kind::Dense(d) => d.forward(x)?,
            Kind::Device(w) => float_matmul(x, w)?,
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }

    /// For a stacked `[gate; up]` weight: `act(x·gateᵀ) * (x·upᵀ)`, `[rows, out / 2]`.
    pub fn forward_glu(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        if let (Kind::Quant(q), None, Activation::Silu) = (&self.kind, &self.bias, act) {
            return q.forward_swiglu(x);
        }
        let y = self.forward(x)?;
        let half = self.out / 2;
        if !y.device().is_cpu() {
            let gate = y.narrow(1, 0, half)?;
            let gate = match act {
                Activation::Silu => candle_nn::ops::silu(&gate)?,
                Activation::GeluTanh => gate.gelu()?,
            };
            return gate * y.narrow(1, half, half)?;
        }
        let rows = y.dim(0)?;
        let mut h = vec![0f32; rows * half];
        with_f32_rows(&y, |y| glu_rows(y, &mut h, half, act))?;
        Tensor::from_vec(h, (rows, half), y.device())
    }

    /// The weight's parts as a team step computes them (see [`super::team`]), with their output widths, and
    /// the bias to add to the product; `None` for weights only candle runs.
    pub(crate) fn team_parts(&self) -> Option<Parts<'_>> {
        match &self.kind {
            Kind::Quant(q) => {
                if self.bias.is_some() && self.bias_host.is_none() {
                    return None;
                }
                Some((q.team_parts()?, self.bias_host.as_deref()))
            }
            Kind::Dense(d) => Some((vec![(Part::Dense(d), self.out)], None)),
            Kind::Device(_) => None,
        }
    }

    /// Output width.
    pub fn out_dim(&self) -> usize {
        self.out
    }
}

/// `x · wᵀ` in f32 for a weight `w` (`[out, in]`) of any float type: an f16 or bf16 weight multiplies `x`
/// rounded to its type (as a half-precision model runs), accumulating in f32, and the product comes back as
/// f32.
pub(crate) fn float_matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.to_dtype(w.dtype())?.matmul(&w.t()?)?.to_dtype(DType::F32)
}

/// The most values a matrix on a GPU may have and still be kept (or made) f32 when nothing else is asked for:
/// 2M values, 8 MB as f32. A small model's decode step on a GPU is bound by kernel launches, not by reading
/// weights, and an f32 matrix needs no conversion of the activations (one launch fewer, some 5–10 µs of a
/// step); reading 8 MB takes about that long on a GPU of 1 TB/s and a fifth of it on an H200. A larger matrix
/// is read faster in its own fewer bytes: a 4096 × 4096 attention matrix of an 8B model is 64 MB as f32,
/// against 9 MB as Q4_K and 32 MB as bf16, and every decode step reads it. SmolLM2-135M's matrices (at most
/// 0.9M values, the output head aside) all fall below it.
pub(crate) const GPU_F32_MAX_PARAMS: usize = 2 << 20;

/// Whether a quantized weight of `params` values on a GPU becomes an f32 matrix at load (`RILL_GPU_WEIGHTS`:
/// `f32` always, `quant` never, unset or `auto` up to [`GPU_F32_MAX_PARAMS`]). A small model's decode step on a
/// GPU is bound by kernel launches, not by reading weights: one matrix product instead of candle's
/// quantize-the-input and quantized-product launches (and its concatenation of stacked parts) is the faster
/// form. A large model's matrices stay quantized, and so read a quarter of the bytes or less.
fn gpu_dequantizes(params: usize) -> bool {
    match std::env::var("RILL_GPU_WEIGHTS").as_deref() {
        Ok("f32") => true,
        Ok("quant") => false,
        _ => params <= GPU_F32_MAX_PARAMS,
    }
}

/// The one type parts of mixed float types are stacked in. On a GPU, a stacked matrix of more than
/// [`GPU_F32_MAX_PARAMS`] values takes the half type among them: the loader keeps half types only for its
/// larger parts and widened the small ones, which narrowing back gives exactly. Otherwise f32.
fn stacked_dtype(dtypes: &[DType], values: usize, on_gpu: bool) -> DType {
    let half = dtypes.iter().copied().find(|&d| d != DType::F32);
    match half {
        Some(h) if on_gpu && values > GPU_F32_MAX_PARAMS => h,
        _ => DType::F32,
    }
}

fn device_of(w: &Weight) -> Device {
    match w {
        Weight::Quant(q) => q.device(),
        Weight::Dense(t) => t.device().clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parts of mixed types stack as the half type on a GPU once the stacked matrix is large, else as f32.
    #[test]
    fn mixed_parts_stack_in_one_type_by_the_stacked_size() {
        let (large, small) = (GPU_F32_MAX_PARAMS + 1, GPU_F32_MAX_PARAMS);
        let q_kept_kv_widened = [DType::BF16, DType::F32, DType::F32];
        assert_eq!(stacked_dtype(&q_kept_kv_widened, large, true), DType::BF16);
        assert_eq!(stacked_dtype(&q_kept_kv_widened, small, true), DType::F32);
        assert_eq!(stacked_dtype(&q_kept_kv_widened, large, false), DType::F32);
        assert_eq!(
            stacked_dtype(&[DType::F32, DType::F16], large, true),
            DType::F16
        );
    }
}
