//! Rotary position embeddings: cos/sin tables for one base, applied on the host to a row of heads (the CPU
//! path) or with candle's kernels to `[heads, len, head_dim]` tensors (other devices), with the same bits.

use candle_core::{DType, Device, Result, Tensor};

/// Rotary tables `[positions, head_dim / 2]` on the host, and on the device when that is not the CPU (where
/// the host tables serve both paths: a model with a 128k context would otherwise keep 64 MB of them twice).
pub struct Rope {
    /// Device copies of cos and sin (`None` on the CPU).
    device_tables: Option<(Tensor, Tensor)>,
    dev: Device,
    cos_host: Vec<f32>,
    sin_host: Vec<f32>,
    half: usize,
    /// GPT-NeoX layout (pairs `i, i + d/2`) instead of interleaved pairs `(2i, 2i + 1)`.
    neox: bool,
}

impl Rope {
    /// Tables for heads of `head_dim`, frequencies `base^(-2i/d) / linear / factors[i]` (linear position
    /// scaling, and per-frequency factors as Llama 3.1's rope scaling sets them), for `positions` positions.
    pub fn new(
        head_dim: usize,
        base: f32,
        linear: f32,
        factors: Option<&[f32]>,
        positions: usize,
        neox: bool,
        dev: &Device,
    ) -> Result<Self> {
        if factors.is_some_and(|f| f.len() != head_dim / 2) {
            candle_core::bail!(
                "rope: {} frequency factors for heads of {head_dim}",
                factors.map_or(0, |f| f.len())
            );
        }
        let inv: Vec<f32> = (0..head_dim / 2)
            .map(|i| {
                let ff = factors.map_or(1.0, |f| f[i]);
                1.0 / base.powf((2 * i) as f32 / head_dim as f32) / linear / ff
            })
            .collect();
        let inv = Tensor::from_vec(inv, (1, head_dim / 2), dev)?;
        let t = Tensor::arange(0u32, positions as u32, dev)?
            .to_dtype(DType::F32)?
            .reshape((positions, 1))?;
        let freqs = t.matmul(&inv)?;
        let (cos, sin) = (freqs.cos()?, freqs.sin()?);
        let (cos_host, sin_host) = (cos.flatten_all()?.to_vec1()?, sin.flatten_all()?.to_vec1()?);
        Ok(Self {
            device_tables: (!dev.is_cpu()).then_some((cos, sin)),
            dev: dev.clone(),
            cos_host,
            sin_host,
            half: head_dim / 2,
            neox,
        })
    }

    /// The tables with cos and sin multiplied by `f` (LongRoPE's attention factor); unchanged for 1.
    pub fn with_attn_factor(self, f: f32) -> Result<Self> {
        if f == 1.0 {
            return Ok(self);
        }
        let scale = |v: Vec<f32>| v.into_iter().map(|x| x * f).collect::<Vec<f32>>();
        let device_tables = match self.device_tables {
            Some((cos, sin)) => Some(((cos * f as f64)?, (sin * f as f64)?)),
            None => None,
        };
        Ok(Self {
            device_tables,
            cos_host: scale(self.cos_host),
            sin_host: scale(self.sin_host),
            ..self
        })
    }

    /// The device copies of the cos and sin tables (`[positions, head_dim / 2]`), off the CPU.
    pub fn device_tables(&self) -> Option<(&Tensor, &Tensor)> {
        self.device_tables.as_ref().map(|(c, s)| (c, s))
    }

    /// Whether pairs are `(i, i + d/2)` (GPT-NeoX) rather than `(2i, 2i + 1)`.
    pub fn neox(&self) -> bool {
        self.neox
    }

    /// Rotates one token's heads (`n * head_dim` values) in place, at `pos`.
    pub fn rotate_host(&self, x: &mut [f32], pos: usize) {
        let h = self.half;
        let (cos, sin) = (
            &self.cos_host[pos * h..(pos + 1) * h],
            &self.sin_host[pos * h..(pos + 1) * h],
        );
        rotate_row(x, cos, sin, self.neox);
    }

    /// Rotates `x` (`[heads, len, head_dim]`) whose first row is at absolute position `pos`.
    pub fn rotate(&self, x: &Tensor, pos: usize) -> Result<Tensor> {
        let len = x.dim(1)?;
        let (cos, sin) = match &self.device_tables {
            Some((cos, sin)) => (cos.narrow(0, pos, len)?, sin.narrow(0, pos, len)?),
            None => {
                let rows = |t: &[f32]| {
                    let h = self.half;
                    let part = t.get(pos * h..(pos + len) * h).ok_or_else(|| {
                        candle_core::Error::Msg(format!(
                            "rope: positions {pos}..{} past the table",
                            pos + len
                        ))
                    })?;
                    Tensor::from_slice(part, (len, h), &self.dev)
                };
                (rows(&self.cos_host)?, rows(&self.sin_host)?)
            }
        };
        let x = x.unsqueeze(0)?.contiguous()?;
        let y = if self.neox {
            candle_nn::rotary_emb::rope(&x, &cos, &sin)?
        } else {
            candle_nn::rotary_emb::rope_i(&x, &cos, &sin)?
        };
        y.squeeze(0)
    }
}

/// Rotates each head of `x` (heads of `2 * cos.len()` values) by one position's `cos`/`sin` row; the same
/// arithmetic as candle's `rope_i` / `rope`.
fn rotate_row(x: &mut [f32], cos: &[f32], sin: &[f32], neox: bool) {
    let half = cos.len();
    for head in x.chunks_exact_mut(2 * half) {
        for i in 0..half {
            let (a, b) = if neox {
                (i, i + half)
            } else {
                (2 * i, 2 * i + 1)
            };
            let (x0, x1) = (head[a], head[b]);
            head[a] = x0 * cos[i] - x1 * sin[i];
            head[b] = x0 * sin[i] + x1 * cos[i];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The host rotation gives candle's kernels' bits, in both pair layouts.
    #[test]
    fn host_rope_matches_candle() -> Result<()> {
        let dev = Device::Cpu;
        let (heads, hd, pos) = (3, 8, 5);
        for neox in [false, true] {
            let rope = Rope::new(hd, 10_000.0, 1.0, None, 16, neox, &dev)?;
            let x = Tensor::randn(0f32, 1.0, (heads, 1, hd), &dev)?;
            let want = rope.rotate(&x, pos)?;
            let mut got = x.flatten_all()?.to_vec1::<f32>()?;
            rope.rotate_host(&mut got, pos);
            assert_eq!(got, want.flatten_all()?.to_vec1::<f32>()?, "neox: {neox}");
        }
        Ok(())
    }
}
