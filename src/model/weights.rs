//! Where an architecture gets its tensors: a [`Weights`] source, filled by the loading layer from a GGUF file or
//! a HuggingFace folder. Architectures ask for tensors by their GGUF names (`blk.3.attn_q.weight`); a source that
//! stores other names (safetensors) maps them, so a model file knows one naming only.

use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Result, Tensor};

/// One stored tensor: quantized as it was in a GGUF file, or dense.
#[derive(Clone)]
pub enum Weight {
    Quant(Arc<QTensor>),
    Dense(Tensor),
}

impl Weight {
    /// The tensor as f32 (dequantized if need be): for norms, biases and other small vectors.
    pub fn to_f32(&self, device: &Device) -> Result<Tensor> {
        match self {
            Self::Quant(q) => q.dequantize(device),
            Self::Dense(t) => t.to_dtype(DType::F32),
        }
    }

    /// The tensor as a float matrix for the dense kernel: f16 and bf16 kept as they are (exactly, from a GGUF
    /// file's F16 and BF16 tensors too), anything else as f32.
    pub fn to_float(&self, device: &Device) -> Result<Tensor> {
        use candle_core::quantized::GgmlDType as G;
        match self {
            Self::Quant(q) if q.dtype() == G::F16 => q.dequantize_f16(device),
            Self::Quant(q) if q.dtype() == G::BF16 => {
                let bytes = q.data()?;
                Tensor::from_raw_buffer(&bytes, DType::BF16, q.shape().dims(), device)
            }
            Self::Dense(t) if matches!(t.dtype(), DType::F16 | DType::BF16 | DType::F32) => {
                Ok(t.clone())
            }
            other => other.to_f32(device),
        }
    }

    /// `[rows, cols]` of a matrix.
    pub fn dims2(&self) -> Result<(usize, usize)> {
        match self {
            Self::Quant(q) => q.shape().dims2(),
            Self::Dense(t) => t.dims2(),
        }
    }

    /// The weight-type label (`Q4_K`, `F32`, `BF16`, ...).
    pub fn type_name(&self) -> String {
        match self {
            Self::Quant(q) => format!("{:?}", q.dtype()),
            Self::Dense(t) => format!("{:?}", t.dtype()).to_uppercase(),
        }
    }
}

/// A source of named tensors on one device.
pub trait Weights {
    /// The tensor `name` (a GGUF name), or an error naming it and the file.
    fn get(&mut self, name: &str) -> std::result::Result<Weight, super::ModelError>;
    /// Whether the source has `name`.
    fn has(&self, name: &str) -> bool;
    /// The device tensors are placed on.
    fn device(&self) -> &Device;
}
