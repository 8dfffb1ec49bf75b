//! RMSNorm on the CPU, row by row on rill's worker pool (candle's own op hands batches of more than 32 rows
//! to rayon, whose wake-ups and waits stall the generation thread on a busy machine).
//!
//! The arithmetic is candle's, operation for operation: the sum of squares in f32 in element order, then
//! `x / sqrt(sum / n + eps) * w`, so results are bit-identical to `candle_nn::ops::rms_norm` and, like every
//! kernel here, independent of the batch (one row is one work item).

use candle_core::{Result, Tensor};

use super::qlinear::with_f32_rows;

/// `x / rms(x) * w` for every row of `xs` (`[rows, d]`, f32 on the CPU), with `w` of `d`; other devices go
/// through candle.
pub fn rms_norm(xs: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    if !xs.device().is_cpu() {
        return candle_nn::ops::rms_norm(xs, w, eps);
    }
    let (rows, d) = xs.dims2()?;
    let w: Vec<f32> = w.to_vec1()?;
    if w.len() != d {
        candle_core::bail!("rms norm: weight of {} for rows of {d}", w.len());
    }
    let mut out = vec![0f32; rows * d];
    let out_addr = out.as_mut_ptr() as usize;
    with_f32_rows(xs, |x| {
        crate::pool::run(rows, |rs| {
            for r in rs {
                // SAFETY: row `r` alone writes these `d` outputs, inside `out`.
                let dst =
                    unsafe { std::slice::from_raw_parts_mut((out_addr as *mut f32).add(r * d), d) };
                rms_row(&x[r * d..(r + 1) * d], &w, eps, dst);
            }
        })
    })?;
    Tensor::from_vec(out, (rows, d), xs.device())
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
            let ours = rms_norm(&xs, &w, 1e-5)?.flatten_all()?.to_vec1::<f32>()?;
            let theirs = candle_nn::ops::rms_norm(&xs, &w, 1e-5)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            assert_eq!(ours, theirs, "{rows} rows");
            let last = rms_norm(&xs.narrow(0, rows - 1, 1)?, &w, 1e-5)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            assert_eq!(last, ours[(rows - 1) * 96..]);
        }
        Ok(())
    }
}
