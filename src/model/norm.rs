//! RMSNorm and LayerNorm on the CPU, row by row on rill's worker pool. candle's own ops hand rows to rayon
//! (RMSNorm past 32 rows, LayerNorm always), whose wake-ups and waits stall the generation thread on a busy
//! machine.
//!
//! The arithmetic is candle's, operation for operation (sums in f32 in element order, then the same
//! expression per element), so results are bit-identical to `candle_nn::ops::rms_norm` and
//! `candle_nn::LayerNorm` and, like every kernel here, independent of the batch (one row is one work item).

use candle_core::{Result, Tensor};

use super::qlinear::with_f32_rows;

/// RMSNorm (`x / rms(x) * w` per row), on the pool on the CPU; the weight is copied to the host once, at load.
pub struct RmsNorm {
    weight: Tensor,
    eps: f32,
    w: Vec<f32>,
}

impl RmsNorm {
    pub fn new(weight: Tensor, eps: f32) -> Result<Self> {
        let w = weight.to_vec1()?;
        Ok(Self { weight, eps, w })
    }

    /// `xs`: `[rows, d]`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if !xs.device().is_cpu() {
            return candle_nn::ops::rms_norm(xs, &self.weight, self.eps);
        }
        per_row(xs, self.w.len(), |x, dst| {
            rms_row(x, &self.w, self.eps, dst)
        })
    }

    /// One row `x` into `dst`, with the bits [`Self::forward`] gives it on the CPU.
    pub fn row(&self, x: &[f32], dst: &mut [f32]) {
        rms_row(x, &self.w, self.eps, dst)
    }

    /// Normalizes each run of `width` values of `x` in place (one head at a time for per-head q/k norms).
    pub fn forward_host(&self, x: &mut [f32]) {
        let d = self.w.len();
        let mut tmp = vec![0f32; d];
        for chunk in x.chunks_exact_mut(d) {
            rms_row(chunk, &self.w, self.eps, &mut tmp);
            chunk.copy_from_slice(&tmp);
        }
    }

    /// Width of the normalized rows.
    pub fn width(&self) -> usize {
        self.w.len()
    }
}

/// GPT-2's LayerNorm (`(x - mean) / sqrt(var + eps) * w + b` per row), on the pool on the CPU.
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
    /// The same on the host.
    w: Vec<f32>,
    b: Vec<f32>,
}

impl LayerNorm {
    pub fn new(weight: Tensor, bias: Tensor, eps: f64) -> Result<Self> {
        let (w, b) = (weight.to_vec1()?, bias.to_vec1()?);
        Ok(Self {
            weight,
            bias,
            eps: eps as f32,
            w,
            b,
        })
    }

    /// One row `x` into `dst`, with the bits [`Self::forward`] gives it on the CPU.
    pub fn row(&self, x: &[f32], dst: &mut [f32]) {
        layer_row(x, &self.w, &self.b, self.eps, dst)
    }

    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if !xs.device().is_cpu() {
            return candle_nn::ops::layer_norm(
                &xs.contiguous()?,
                &self.weight,
                &self.bias,
                self.eps,
            );
        }
        per_row(xs, self.w.len(), |x, dst| {
            layer_row(x, &self.w, &self.b, self.eps, dst)
        })
    }
}

/// `f(row, out)` for every row of `xs` (`[rows, d]`, f32 on the CPU), one row per work item.
fn per_row(xs: &Tensor, d: usize, f: impl Fn(&[f32], &mut [f32]) + Sync) -> Result<Tensor> {
    let (rows, width) = xs.dims2()?;
    if width != d {
        candle_core::bail!("norm: weight of {d} for rows of {width}");
    }
    let mut out = vec![0f32; rows * d];
    let out_addr = out.as_mut_ptr() as usize;
    with_f32_rows(xs, |x| {
        crate::pool::run(rows, |rs| {
            for r in rs {
                // SAFETY: row `r` alone writes these `d` outputs, inside `out`.
                let dst =
                    unsafe { std::slice::from_raw_parts_mut((out_addr as *mut f32).add(r * d), d) };
                f(&x[r * d..(r + 1) * d], dst);
            }
        })
    })?;
    Tensor::from_vec(out, (rows, d), xs.device())
}

fn layer_row(x: &[f32], w: &[f32], b: &[f32], eps: f32, dst: &mut [f32]) {
    let (mut sum, mut sum2) = (0f32, 0f32);
    for &v in x {
        sum += v;
        sum2 += v * v;
    }
    let n = x.len() as f32;
    let mean = sum / n;
    let var = sum2 / n - mean * mean;
    let inv_std = (var + eps).sqrt().recip();
    for ((d, s), (a, b)) in dst.iter_mut().zip(x).zip(w.iter().zip(b)) {
        *d = (s - mean) * inv_std * a + b;
    }
}

fn rms_row(x: &[f32], w: &[f32], eps: f32, dst: &mut [f32]) {
    let sum2 = x.iter().map(|&v| v * v).sum::<f32>();
    let m = (sum2 / x.len() as f32 + eps).sqrt();
    for ((d, s), a) in dst.iter_mut().zip(x).zip(w) {
        *d = *s / m * *a;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// candle's bits, for few rows (its inline path) and many (its rayon path), and the same bits for a row
    /// alone as in a batch.
    #[test]
    fn matches_candle_bit_for_bit() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(1f32, 0.2, 96, &dev)?;
        for rows in [1, 7, 33, 200] {
            let xs = Tensor::randn(0f32, 3.0, (rows, 96), &dev)?;
            let norm = RmsNorm::new(w.clone(), 1e-5)?;
            let ours = norm.forward(&xs)?.flatten_all()?.to_vec1::<f32>()?;
            let theirs = candle_nn::ops::rms_norm(&xs, &w, 1e-5)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            assert_eq!(ours, theirs, "{rows} rows");
            let last = norm
                .forward(&xs.narrow(0, rows - 1, 1)?)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            assert_eq!(last, ours[(rows - 1) * 96..]);
        }
        Ok(())
    }

    #[test]
    fn layer_norm_matches_candle_bit_for_bit() -> Result<()> {
        let dev = Device::Cpu;
        let (w, b) = (
            Tensor::randn(1f32, 0.2, 64, &dev)?,
            Tensor::randn(0f32, 0.2, 64, &dev)?,
        );
        let ours = LayerNorm::new(w.clone(), b.clone(), 1e-5)?;
        let theirs = candle_nn::LayerNorm::new(w, b, 1e-5);
        for rows in [1, 5, 40] {
            let xs = Tensor::randn(0.5f32, 2.0, (rows, 64), &dev)?;
            let a = ours.forward(&xs)?.flatten_all()?.to_vec1::<f32>()?;
            let c = candle_core::Module::forward(&theirs, &xs)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            assert_eq!(a, c, "{rows} rows");
        }
        Ok(())
    }
}
