//! A linear layer over GGUF weights: Q4_1, Q4_K, Q6_K and Q8_0 through rill's own kernels on the CPU, every
//! other type (and every GPU) through candle. Several weights that read the same input (Q, K and V; gate and up) can be
//! fused into one matrix, so one pass over the input and one dispatch to the worker threads serve them all.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{CpuStorage, Device, Module, Result, Storage, Tensor};

use super::gate::{gate_in_place, Activation};
use super::quant::q4_1x8::{self, Q4Kx8, Q4_1x8};
use super::quant::q6_kx8::{self, Q6Kx8};
use super::quant::q8_0x8::{self, Q8_0x8};
use super::quant::{self, q4_1::BlockQ4_1, q8_0::BlockQ8_0, x8::Interleaved, QuantBlock};
use super::team::Part;

/// `y = x · Wᵀ` for one weight, or several stacked along the output, stored `[out, in]` in a GGUF file.
pub struct QLinear {
    kind: Kind,
    /// Total output width (all parts).
    out: usize,
    /// Run a single activation row as two (the row twice): candle computes Q6_K one way for one row and
    /// another (repacked tiles) for several, so a lone decoding row would otherwise not get the bits the
    /// same position gets inside a prompt chunk.
    pad_single_row: bool,
}

enum Kind {
    /// Q4_1 weights on the CPU, eight output rows interleaved: rill's batched kernel.
    Q4_1x8(Interleaved<Q4_1x8>),
    /// Q8_0 weights on the CPU, eight output rows interleaved.
    Q8_0x8(Interleaved<Q8_0x8>),
    /// Q4_K weights on the CPU as 32-value sub-blocks, eight output rows interleaved (the Q4_1 kernels).
    Q4Kx8(Interleaved<Q4Kx8>),
    /// Q6_K weights on the CPU, a byte per weight, eight output rows interleaved.
    Q6Kx8(Interleaved<Q6Kx8>),
    /// Q4_1 weights on the CPU whose output width is not a multiple of eight: rill's row-at-a-time kernel
    /// (candle's is scalar for this type).
    Q4_1(Vec<BlockQ4_1>),
    /// Q8_0 weights on the CPU whose output width is not a multiple of eight: row at a time, rounding
    /// activations as llama.cpp does.
    Q8_0(Vec<BlockQ8_0>),
    /// Any other type or device: candle's quantized matmul, one per part.
    Candle(Vec<QMatMul>),
    /// Parts of different types (a Q4_K_M layer's value projection in Q6_K beside Q4_K queries and keys):
    /// each on its own kernel, outputs side by side.
    Split(Vec<QLinear>),
}

impl QLinear {
    pub fn new(w: Arc<QTensor>) -> Result<Self> {
        Self::fused(vec![w])
    }

    /// Stacks weights that share an input: one kernel over all the parts when they have one type, a kernel
    /// each otherwise. rill's own kernels run Q4_1, Q4_K, Q6_K and Q8_0 on the CPU; `RILL_CANDLE_QUANT=1`
    /// forces candle's (for comparisons).
    pub fn fused(parts: Vec<Arc<QTensor>>) -> Result<Self> {
        let mut out = 0;
        for p in &parts {
            out += p.shape().dims2()?.0;
        }
        let k = parts[0].shape().dims2()?.1;
        let on_cpu = parts.iter().all(|p| matches!(p.device(), Device::Cpu));
        let own = on_cpu && std::env::var_os("RILL_CANDLE_QUANT").is_none();
        let dtype = parts[0].dtype();
        let same = parts.iter().all(|p| p.dtype() == dtype);
        if own && !same {
            let parts = parts.into_iter().map(QLinear::new).collect::<Result<_>>()?;
            return Ok(Self {
                kind: Kind::Split(parts),
                out,
                pad_single_row: false,
            });
        }
        let kind = match dtype {
            GgmlDType::Q4_1 if own && same => {
                let blocks: Vec<BlockQ4_1> = concat_blocks(&parts)?;
                match q4_1x8::pack(&blocks, out, k) {
                    Some(p) => Kind::Q4_1x8(p),
                    None => Kind::Q4_1(blocks),
                }
            }
            GgmlDType::Q4K if own && same => {
                match q4_1x8::pack_q4_k(&concat_bytes(&parts)?, out, k) {
                    Some(p) => Kind::Q4Kx8(p),
                    None => candle_kind(parts)?,
                }
            }
            GgmlDType::Q6K if own && same => match q6_kx8::pack(&concat_bytes(&parts)?, out, k) {
                Some(p) => Kind::Q6Kx8(p),
                None => candle_kind(parts)?,
            },
            GgmlDType::Q8_0 if own && same => {
                let blocks: Vec<BlockQ8_0> = concat_blocks(&parts)?;
                match q8_0x8::pack(&blocks, out, k) {
                    Some(p) => Kind::Q8_0x8(p),
                    None => Kind::Q8_0(blocks),
                }
            }
            _ => candle_kind(parts)?,
        };
        let pad_single_row = matches!(kind, Kind::Candle(_)) && on_cpu && dtype == GgmlDType::Q6K;
        Ok(Self {
            kind,
            out,
            pad_single_row,
        })
    }

    /// The weight's parts as a team step computes them, with their output widths; `None` when a part runs on
    /// candle's or the row-at-a-time kernels.
    pub(crate) fn team_parts(&self) -> Option<Vec<(Part<'_>, usize)>> {
        let one = match &self.kind {
            Kind::Q4_1x8(p) => Part::Q4_1(p),
            Kind::Q8_0x8(p) => Part::Q8_0(p),
            Kind::Q4Kx8(p) => Part::Q4K(p),
            Kind::Q6Kx8(p) => Part::Q6K(p),
            Kind::Split(parts) => {
                let mut all = Vec::new();
                for p in parts {
                    all.extend(p.team_parts()?);
                }
                return Some(all);
            }
            Kind::Q4_1(_) | Kind::Q8_0(_) | Kind::Candle(_) => return None,
        };
        Some(vec![(one, self.out)])
    }

    /// `x`: `[rows, in]` → `[rows, out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.pad_single_row && x.dim(0)? == 1 {
            return self
                .forward_rows(&Tensor::cat(&[x, x], 0)?)?
                .narrow(0, 0, 1);
        }
        self.forward_rows(x)
    }

    fn forward_rows(&self, x: &Tensor) -> Result<Tensor> {
        match &self.kind {
            Kind::Candle(ms) if ms.len() == 1 => ms[0].forward(x),
            Kind::Candle(ms) => Tensor::cat(
                &ms.iter()
                    .map(|m| m.forward(x))
                    .collect::<Result<Vec<_>>>()?,
                1,
            ),
            Kind::Split(parts) => Tensor::cat(
                &parts
                    .iter()
                    .map(|p| p.forward(x))
                    .collect::<Result<Vec<_>>>()?,
                1,
            ),
            _ => Tensor::from_vec(self.own_matmul(x)?, (x.dim(0)?, self.out), x.device()),
        }
    }

    /// For a fused `[gate; up]` weight: `silu(x·gateᵀ) * (x·upᵀ)`, `[rows, out / 2]`.
    pub fn forward_swiglu(&self, x: &Tensor) -> Result<Tensor> {
        let rows = x.dim(0)?;
        let half = self.out / 2;
        let y = match &self.kind {
            Kind::Candle(_) => {
                let y = self.forward(x)?;
                return candle_nn::ops::silu(&y.narrow(1, 0, half)?)? * y.narrow(1, half, half)?;
            }
            Kind::Split(_) => {
                let mut y = Vec::new();
                with_f32_rows(&self.forward(x)?, |all| y = all.to_vec())?;
                y
            }
            _ => self.own_matmul(x)?,
        };
        let mut h = vec![0f32; rows * half];
        glu_rows(&y, &mut h, half, Activation::Silu);
        Tensor::from_vec(h, (rows, half), x.device())
    }

    /// `x · Wᵀ` through rill's own kernels, as a row-major `[rows, out]` buffer.
    fn own_matmul(&self, x: &Tensor) -> Result<Vec<f32>> {
        let (rows, k) = x.dims2()?;
        let k_weight = match &self.kind {
            Kind::Q4_1x8(p) => p.k(),
            Kind::Q8_0x8(p) => p.k(),
            Kind::Q4Kx8(p) => p.k(),
            Kind::Q6Kx8(p) => p.k(),
            Kind::Q4_1(b) => b.len() * quant::QK / self.out,
            Kind::Q8_0(b) => b.len() * quant::QK / self.out,
            Kind::Candle(_) | Kind::Split(_) => {
                candle_core::bail!("quantized linear: not one of rill's kernels")
            }
        };
        if k != k_weight {
            candle_core::bail!(
                "quantized linear: input width {k} does not match the weight's {k_weight}"
            );
        }
        // K-quant weights whose width is not a multiple of eight carry zero rows up to one: computed, then
        // dropped.
        let n = match &self.kind {
            Kind::Q4Kx8(p) => p.n(),
            Kind::Q6Kx8(p) => p.n(),
            _ => self.out,
        };
        let mut dst = vec![0f32; rows * n];
        with_f32_rows(x, |xs| match &self.kind {
            Kind::Q4_1x8(p) => p.matmul(xs, rows, &mut dst),
            Kind::Q8_0x8(p) => p.matmul(xs, rows, &mut dst),
            Kind::Q4Kx8(p) => p.matmul(xs, rows, &mut dst),
            Kind::Q6Kx8(p) => p.matmul(xs, rows, &mut dst),
            Kind::Q4_1(b) => quant::matmul(xs, rows, k, b, n, &mut dst),
            Kind::Q8_0(b) => quant::matmul(xs, rows, k, b, n, &mut dst),
            Kind::Candle(_) | Kind::Split(_) => unreachable!("checked above"),
        })?;
        if n != self.out {
            dst = dst
                .chunks_exact(n)
                .flat_map(|row| &row[..self.out])
                .copied()
                .collect();
        }
        Ok(dst)
    }
}

/// `h[r, i] = act(y[r, i]) * y[r, half + i]` for every row `r` of `y` (`[rows, 2 * half]`), in chunks across
/// rill's CPU worker pool.
pub(crate) fn glu_rows(y: &[f32], h: &mut [f32], half: usize, act: Activation) {
    const CHUNK: usize = 256;
    let per_row = half.div_ceil(CHUNK);
    let h_addr = h.as_mut_ptr() as usize;
    crate::pool::run(h.len() / half * per_row, |items| {
        for item in items {
            let (r, c) = (item / per_row, item % per_row * CHUNK);
            let n = CHUNK.min(half - c);
            let (gate, up) = (
                &y[r * 2 * half + c..][..n],
                &y[r * 2 * half + half + c..][..n],
            );
            // SAFETY: item (r, c) alone writes these `n` outputs, inside `h`.
            let out = unsafe {
                std::slice::from_raw_parts_mut((h_addr as *mut f32).add(r * half + c), n)
            };
            out.copy_from_slice(gate);
            gate_in_place(out, up, act);
        }
    });
}

/// Runs `f` over the f32 contents of `x`, borrowing the CPU storage when it is contiguous f32.
pub(crate) fn with_f32_rows(x: &Tensor, f: impl FnOnce(&[f32])) -> Result<()> {
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

/// candle's quantized matmul, one per part.
fn candle_kind(parts: Vec<Arc<QTensor>>) -> Result<Kind> {
    Ok(Kind::Candle(
        parts
            .into_iter()
            .map(QMatMul::from_arc)
            .collect::<Result<_>>()?,
    ))
}

/// The parts' raw bytes, one after the other (the rows of the stacked matrix).
fn concat_bytes(parts: &[Arc<QTensor>]) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    for p in parts {
        bytes.extend_from_slice(&p.data()?);
    }
    Ok(bytes)
}

fn concat_blocks<B: QuantBlock>(parts: &[Arc<QTensor>]) -> Result<Vec<B>> {
    let mut blocks = Vec::new();
    for p in parts {
        blocks.extend(quant::blocks_from_bytes::<B>(&p.data()?));
    }
    Ok(blocks)
}
