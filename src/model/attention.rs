//! Causal scaled-dot-product attention for one sequence against its cache, with grouped-query heads.

use candle_core::{DType, Result, Tensor};

/// Attends `q` (`[heads, new, head_dim]`) over all cached `k`, `v` (`[kv_heads, total, head_dim]`), where the
/// new tokens are the last `new` positions; returns `[new, heads * head_dim]`.
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let (n_heads, new, head_dim) = q.dims3()?;
    let (n_kv, total, _) = k.dims3()?;
    let group = n_heads / n_kv;
    // Grouped-query attention: view the query heads as `[kv_heads, group * new, head_dim]` so each kv head
    // serves its group without copying keys and values.
    let q = q.reshape((n_kv, group * new, head_dim))?;
    let scale = 1.0 / (head_dim as f64).sqrt();
    let att = (q.matmul(&k.t()?)? * scale)?;
    let att = if new > 1 {
        let mask = causal_mask(new, total, group, q.device())?;
        att.broadcast_add(&mask)?
    } else {
        att
    };
    let att = candle_nn::ops::softmax_last_dim(&att)?;
    let y = att.matmul(v)?; // [kv, group*new, hd]
    y.reshape((n_heads, new, head_dim))?
        .transpose(0, 1)?
        .reshape((new, n_heads * head_dim))
}

/// Additive mask `[group * new, total]`: row `r` is query `r % new`, at absolute position `total - new + r % new`.
fn causal_mask(
    new: usize,
    total: usize,
    group: usize,
    dev: &candle_core::Device,
) -> Result<Tensor> {
    let past = total - new;
    let mut m = vec![0f32; group * new * total];
    for r in 0..group * new {
        let pos = past + r % new;
        for c in pos + 1..total {
            m[r * total + c] = f32::NEG_INFINITY;
        }
    }
    Tensor::from_vec(m, (group * new, total), dev)?.to_dtype(DType::F32)
}

/// Softmax-free helper used by tests: the maximum absolute difference between two tensors.
#[cfg(test)]
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    (a - b)?
        .abs()?
        .flatten_all()?
        .max(candle_core::D::Minus1)?
        .to_scalar::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Reference: plain per-head attention with repeated kv heads, computed one query at a time.
    fn naive(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let (h, new, hd) = q.dims3()?;
        let (kv, total, _) = k.dims3()?;
        let mut rows = Vec::new();
        for i in 0..new {
            let mut heads = Vec::new();
            for hh in 0..h {
                let kk = k.get(hh / (h / kv))?.narrow(0, 0, total - new + i + 1)?;
                let vv = v.get(hh / (h / kv))?.narrow(0, 0, total - new + i + 1)?;
                let qq = q.get(hh)?.get(i)?.unsqueeze(0)?;
                let a = (qq.matmul(&kk.t()?)? / (hd as f64).sqrt())?;
                let a = candle_nn::ops::softmax_last_dim(&a)?;
                heads.push(a.matmul(&vv)?.squeeze(0)?);
            }
            rows.push(Tensor::cat(&heads, 0)?);
        }
        Tensor::stack(&rows, 0)
    }

    #[test]
    fn matches_naive_attention_with_gqa_and_past() -> Result<()> {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (6, 3, 8), &dev)?;
        // Keys and values are views into a larger buffer, as the KV cache hands them out.
        let k = Tensor::randn(0f32, 1.0, (2, 9, 8), &dev)?.narrow(1, 0, 5)?;
        let v = Tensor::randn(0f32, 1.0, (2, 9, 8), &dev)?.narrow(1, 0, 5)?;
        let got = causal_attention(&q, &k, &v)?;
        let want = naive(&q, &k.contiguous()?, &v.contiguous()?)?;
        assert!(max_abs_diff(&got, &want)? < 1e-5);
        Ok(())
    }
}
