//! Causal scaled-dot-product attention against per-sequence KV caches, with grouped-query heads: a tensor
//! version for any number of new tokens, and a CPU kernel that does one new token of many sequences at once.

use candle_core::{CpuStorage, DType, Layout, Result, Storage, Tensor};

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

/// One decoding sequence's input to [`decode_batch`]: its new token's queries and its cached keys and values.
pub struct DecodeInput<'a> {
    /// The new token's queries, head after head: `heads * head_dim` values.
    pub q: &'a [f32],
    /// `[kv_heads, len, head_dim]`, the views [`crate::model::SeqCache::append`] returns.
    pub k: &'a Tensor,
    pub v: &'a Tensor,
}

/// Attention of one new token per sequence, for many sequences, on the CPU worker pool: one work item per
/// (sequence, kv head) reads that head's keys and values once for every query head of its group. Returns
/// `[sequences, heads * head_dim]` as a row-major buffer. Each sequence's result is computed alone, the same
/// whatever else is in the batch.
pub fn decode_batch(inputs: &[DecodeInput<'_>]) -> Result<Vec<f32>> {
    let Some(first) = inputs.first() else {
        return Ok(Vec::new());
    };
    let (n_kv, _, hd) = first.k.dims3()?;
    let n_heads = first.q.len() / hd;
    let group = n_heads / n_kv;
    let guards: Vec<_> = inputs
        .iter()
        .flat_map(|i| [i.k.storage_and_layout(), i.v.storage_and_layout()])
        .collect();
    let caches: Vec<CacheView<'_>> = guards
        .iter()
        .map(|(s, l)| CacheView::new(s, l, hd))
        .collect::<Result<_>>()?;
    let mut out = vec![0f32; inputs.len() * n_heads * hd];
    let out_addr = out.as_mut_ptr() as usize;
    let scale = 1.0 / (hd as f32).sqrt();
    candle_core::utils::barrier_pool().execute_chunked(inputs.len() * n_kv, |items| {
        let mut scores = Vec::new();
        for item in items {
            let (seq, kv) = (item / n_kv, item % n_kv);
            let (k, v) = (&caches[2 * seq], &caches[2 * seq + 1]);
            let heads = kv * group..(kv + 1) * group;
            let q = &inputs[seq].q[heads.start * hd..heads.end * hd];
            // SAFETY: item (seq, kv) alone writes these `group * hd` outputs, inside `out`.
            let o = unsafe {
                std::slice::from_raw_parts_mut(
                    (out_addr as *mut f32).add((seq * n_heads + heads.start) * hd),
                    group * hd,
                )
            };
            attend_one(q, k, v, kv, scale, &mut scores, o);
        }
    });
    drop(caches);
    Ok(out)
}

/// A `[kv_heads, len, head_dim]` f32 tensor on the CPU whose rows of `head_dim` are contiguous.
struct CacheView<'a> {
    data: &'a [f32],
    len: usize,
    hd: usize,
    /// Elements between heads, and between positions.
    head_stride: usize,
    pos_stride: usize,
}

impl<'a> CacheView<'a> {
    fn new(storage: &'a Storage, layout: &Layout, hd: usize) -> Result<Self> {
        let Storage::Cpu(CpuStorage::F32(all)) = storage else {
            candle_core::bail!("decode attention needs an f32 CPU cache");
        };
        let (dims, stride) = (layout.dims(), layout.stride());
        if dims.len() != 3 || dims[2] != hd || stride[2] != 1 {
            candle_core::bail!("decode attention: unexpected cache layout {layout:?}");
        }
        Ok(Self {
            data: &all[layout.start_offset()..],
            len: dims[1],
            hd,
            head_stride: stride[0],
            pos_stride: stride[1],
        })
    }

    fn row(&self, head: usize, pos: usize) -> &[f32] {
        let at = head * self.head_stride + pos * self.pos_stride;
        &self.data[at..at + self.hd]
    }
}

/// Softmax attention of a group of query heads `q` (`[group, hd]`) over kv head `kv`, into `out`.
fn attend_one(
    q: &[f32],
    k: &CacheView<'_>,
    v: &CacheView<'_>,
    kv: usize,
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let (hd, len) = (k.hd, k.len);
    let group = q.len() / hd;
    scores.clear();
    scores.resize(group * len, 0.0);
    for t in 0..len {
        let krow = k.row(kv, t);
        for (j, qh) in q.chunks_exact(hd).enumerate() {
            scores[j * len + t] = dot(qh, krow) * scale;
        }
    }
    for s in scores.chunks_exact_mut(len) {
        let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for x in s.iter_mut() {
            *x = (*x - max).exp();
            sum += *x;
        }
        let inv = 1.0 / sum;
        s.iter_mut().for_each(|x| *x *= inv);
    }
    out.fill(0.0);
    for t in 0..len {
        let vrow = v.row(kv, t);
        for (j, o) in out.chunks_exact_mut(hd).enumerate() {
            let p = scores[j * len + t];
            o.iter_mut().zip(vrow).for_each(|(o, v)| *o += p * v);
        }
    }
}

/// Dot product in eight independent lanes, so the compiler vectorizes it.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
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

    /// The batched one-token kernel gives the tensor version's result for each sequence, and the same bits
    /// alone as in a batch.
    #[test]
    fn decode_batch_matches_tensor_attention() -> Result<()> {
        let dev = Device::Cpu;
        let lens = [1, 5, 17];
        let qs: Vec<Tensor> = lens
            .iter()
            .map(|_| Tensor::randn(0f32, 1.0, (6, 1, 8), &dev))
            .collect::<Result<_>>()?;
        let ks: Vec<Tensor> = lens
            .iter()
            .map(|&l| Tensor::randn(0f32, 1.0, (2, 20, 8), &dev)?.narrow(1, 0, l))
            .collect::<Result<_>>()?;
        let vs: Vec<Tensor> = lens
            .iter()
            .map(|&l| Tensor::randn(0f32, 1.0, (2, 20, 8), &dev)?.narrow(1, 0, l))
            .collect::<Result<_>>()?;
        let q_rows: Vec<Vec<f32>> = qs
            .iter()
            .map(|q| q.flatten_all()?.to_vec1::<f32>())
            .collect::<Result<_>>()?;
        let inputs: Vec<DecodeInput> = (0..lens.len())
            .map(|i| DecodeInput {
                q: &q_rows[i],
                k: &ks[i],
                v: &vs[i],
            })
            .collect();
        let all = decode_batch(&inputs)?;
        for (i, input) in inputs.iter().enumerate() {
            let row = &all[i * 48..(i + 1) * 48];
            let want = causal_attention(&qs[i], input.k, input.v)?.flatten_all()?;
            let got = Tensor::from_slice(row, 48, &dev)?;
            assert!(max_abs_diff(&got, &want)? < 1e-5, "sequence {i}");
            let alone = decode_batch(std::slice::from_ref(input))?;
            assert_eq!(alone, row, "sequence {i} alone");
        }
        Ok(())
    }
}
