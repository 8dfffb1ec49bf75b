//! Causal scaled-dot-product attention against per-sequence KV caches, with grouped-query heads: a tensor
//! version (GPUs), and the CPU kernel [`attend_rows`] that computes every new row of a batch, prompt chunks and
//! decoding tokens alike, along one arithmetic path so that a position's result never depends on the batch.

use candle_core::{CpuStorage, DType, Layout, Result, Storage, Tensor};

mod softmax;
mod team;
#[cfg(target_arch = "x86_64")]
mod x86;

pub(crate) use team::{attend_item, ItemScratch, RawCache};

/// How one layer scores keys: the scale of `q·k`, an optional soft cap `c·tanh(s / c)` on the scaled scores
/// (gemma2), and an optional sliding window (a query at position `p` sees keys `p - window < t <= p`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scoring {
    pub scale: f32,
    pub softcap: Option<f32>,
    pub window: Option<usize>,
}

impl Scoring {
    /// Plain causal attention scaled by `1/√head_dim`.
    pub fn plain(head_dim: usize) -> Self {
        Self {
            scale: 1.0 / (head_dim as f32).sqrt(),
            softcap: None,
            window: None,
        }
    }

    /// The first key position a query at `pos` sees.
    fn first_key(&self, pos: usize) -> usize {
        match self.window {
            Some(w) => (pos + 1).saturating_sub(w),
            None => 0,
        }
    }
}

/// Attends `q` (`[heads, new, head_dim]`) over all cached `k`, `v` (`[kv_heads, total, head_dim]`), where the
/// new tokens are the last `new` positions; returns `[new, heads * head_dim]`.
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor, scoring: &Scoring) -> Result<Tensor> {
    let (n_heads, new, head_dim) = q.dims3()?;
    let (n_kv, total, _) = k.dims3()?;
    let group = n_heads / n_kv;
    // Grouped-query attention: view the query heads as `[kv_heads, group * new, head_dim]` so each kv head
    // serves its group without copying keys and values.
    let q = q.reshape((n_kv, group * new, head_dim))?;
    let (k, v) = (&k.to_dtype(q.dtype())?, &v.to_dtype(q.dtype())?);
    let att = (q.matmul(&k.t()?)? * scoring.scale as f64)?;
    let att = match scoring.softcap {
        Some(c) => ((att / c as f64)?.tanh()? * c as f64)?,
        None => att,
    };
    let att = if new > 1 || scoring.window.is_some_and(|w| w < total) {
        let mask = causal_mask(new, total, group, scoring, q.device())?;
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
    scoring: &Scoring,
    dev: &candle_core::Device,
) -> Result<Tensor> {
    let past = total - new;
    let mut m = vec![0f32; group * new * total];
    for r in 0..group * new {
        let pos = past + r % new;
        let first = scoring.first_key(pos);
        for c in (0..first).chain(pos + 1..total) {
            m[r * total + c] = f32::NEG_INFINITY;
        }
    }
    Tensor::from_vec(m, (group * new, total), dev)?.to_dtype(DType::F32)
}

/// One sequence's part of [`attend_rows`]: the queries of its new tokens and its cache with their keys and
/// values already appended.
pub struct SeqRows<'a> {
    /// The new tokens' queries, row after row, each row head after head: `new * heads * head_dim` values.
    pub q: &'a [f32],
    /// `[kv_heads, len, head_dim]`, the views [`crate::model::SeqCache::append`] returns; the new tokens are
    /// the last positions.
    pub k: &'a Tensor,
    pub v: &'a Tensor,
}

/// Causal attention on the CPU worker pool for any mix of prompt chunks and single decoding tokens: every new
/// row of every sequence, at its own position, over the cached keys up to and including that position.
/// Returns `[rows, heads * head_dim]` row-major, rows in the order of `seqs`.
///
/// **One arithmetic path.** A row's result is computed by one work item (row, kv head), by the same code,
/// whether the row is a lone decoding token or the 200th row of a prompt chunk, whatever else is in the
/// batch and whichever thread runs it: the scores in key order, one max, one sum of exponentials in a fixed order (eight lanes),
/// one weighted sum of values in key order. So a position's attention output, and with it its keys and values
/// in the next layer, have the same bits whether the position was computed in a prefill chunk, alone, after a
/// prefix-cache copy or beside other sequences (the idea of batch-invariant kernels: the reduction order of
/// each output value never depends on the shape of the batch).
pub fn attend_rows(seqs: &[SeqRows<'_>], n_heads: usize, scoring: &Scoring) -> Result<Vec<f32>> {
    let Some(first) = seqs.first() else {
        return Ok(Vec::new());
    };
    let (n_kv, _, hd) = first.k.dims3()?;
    let width = n_heads * hd;
    let group = n_heads / n_kv;
    let guards: Vec<_> = seqs
        .iter()
        .flat_map(|i| [i.k.storage_and_layout(), i.v.storage_and_layout()])
        .collect();
    let caches: Vec<CacheView<'_>> = guards
        .iter()
        .map(|(s, l)| CacheView::new(s, l, hd))
        .collect::<Result<_>>()?;
    // Every new row: (sequence, row within it, absolute position).
    let mut rows = Vec::new();
    for (s, seq) in seqs.iter().enumerate() {
        let (total, new) = (caches[2 * s].len, seq.q.len() / width);
        if seq.q.len() % width != 0 || new > total || seq.k.dim(0)? != n_kv {
            candle_core::bail!(
                "attention: sequence {s} has {} query values for a cache of shape {:?}",
                seq.q.len(),
                seq.k.shape()
            );
        }
        rows.extend((0..new).map(|r| (s, r, total - new + r)));
    }
    let mut out = vec![0f32; rows.len() * width];
    let simd = simd_rows(hd);
    let out_addr = out.as_mut_ptr() as usize;
    crate::pool::run(rows.len() * n_kv, |items| {
        // Scratch reused by every item of this chunk: the scores, and a row converted from an f16 cache.
        let (mut scores, mut row_buf) = (Vec::new(), vec![0f32; hd]);
        for item in items {
            let (row, kv) = (item / n_kv, item % n_kv);
            let (seq, r, pos) = rows[row];
            let (k, v) = (&caches[2 * seq], &caches[2 * seq + 1]);
            let heads = kv * group..(kv + 1) * group;
            let q = &seqs[seq].q[r * width + heads.start * hd..r * width + heads.end * hd];
            // SAFETY: item (row, kv) alone writes these `group * hd` outputs, inside `out`.
            let o = unsafe {
                std::slice::from_raw_parts_mut(
                    (out_addr as *mut f32).add(row * width + heads.start * hd),
                    group * hd,
                )
            };
            attend_one(
                q,
                k,
                v,
                kv,
                pos,
                scoring,
                &mut scores,
                &mut row_buf,
                o,
                simd,
            );
        }
    });
    drop(caches);
    Ok(out)
}

/// [`attend_rows`] for the shapes the models hold: each sequence's query rows and its cache after the append,
/// as a `[rows, heads * head_dim]` tensor on the caches' device.
pub fn attend_rows_tensor(
    queries: &[Vec<f32>],
    caches: &[(Tensor, Tensor)],
    n_heads: usize,
    scoring: &Scoring,
) -> Result<Tensor> {
    let seqs: Vec<SeqRows<'_>> = queries
        .iter()
        .zip(caches)
        .map(|(q, (k, v))| SeqRows { q, k, v })
        .collect();
    let out = attend_rows(&seqs, n_heads, scoring)?;
    let Some((k, _)) = caches.first() else {
        candle_core::bail!("attention: an empty batch");
    };
    let width = n_heads * k.dim(2)?;
    Tensor::from_vec(
        out,
        (queries.iter().map(Vec::len).sum::<usize>() / width, width),
        k.device(),
    )
}

/// A `[kv_heads, len, head_dim]` f32 tensor on the CPU whose rows of `head_dim` are contiguous.
struct CacheView<'a> {
    data: CacheData<'a>,
    len: usize,
    hd: usize,
    /// Elements between heads, and between positions.
    head_stride: usize,
    pos_stride: usize,
}

impl<'a> CacheView<'a> {
    fn new(storage: &'a Storage, layout: &Layout, hd: usize) -> Result<Self> {
        let data = match storage {
            Storage::Cpu(CpuStorage::F32(all)) => CacheData::F32(&all[layout.start_offset()..]),
            Storage::Cpu(CpuStorage::F16(all)) => CacheData::F16(&all[layout.start_offset()..]),
            _ => candle_core::bail!("attention needs an f32 or f16 CPU cache"),
        };
        let (dims, stride) = (layout.dims(), layout.stride());
        if dims.len() != 3 || dims[2] != hd || stride[2] != 1 {
            candle_core::bail!("decode attention: unexpected cache layout {layout:?}");
        }
        Ok(Self {
            data,
            len: dims[1],
            hd,
            head_stride: stride[0],
            pos_stride: stride[1],
        })
    }

    /// The `head_dim` values of `head` at `pos`, as f32 (an f16 cache's converted into `buf`).
    #[inline(always)]
    fn row<'s>(&'s self, head: usize, pos: usize, buf: &'s mut [f32]) -> &'s [f32] {
        let at = head * self.head_stride + pos * self.pos_stride;
        match self.data {
            CacheData::F32(d) => &d[at..at + self.hd],
            CacheData::F16(d) => {
                half::slice::HalfFloatSliceExt::convert_to_f32_slice(&d[at..at + self.hd], buf);
                buf
            }
        }
    }
}

/// A cache's values: f32, or f16 (`--kv-dtype f16`, half the memory; converted to f32 row by row).
#[derive(Clone, Copy)]
enum CacheData<'a> {
    F32(&'a [f32]),
    F16(&'a [half::f16]),
}

/// Softmax attention of a group of query heads `q` (`[group, hd]`) at position `pos` over the keys of kv head
/// `kv` it sees, into `out`. The scores and the weighted sum run in position order and the exponentials' sum in
/// eight lanes, the same whatever the caller; `simd` (from [`simd_rows`]) picks the AVX2 loops, which give the
/// same bits.
#[allow(clippy::too_many_arguments)]
fn attend_one(
    q: &[f32],
    k: &CacheView<'_>,
    v: &CacheView<'_>,
    kv: usize,
    pos: usize,
    scoring: &Scoring,
    scores: &mut Vec<f32>,
    row_buf: &mut [f32],
    out: &mut [f32],
    simd: bool,
) {
    let hd = k.hd;
    let group = q.len() / hd;
    let first = scoring.first_key(pos);
    let len = pos + 1 - first;
    scores.clear();
    scores.resize(group * len, 0.0);
    // Keys the SIMD kernel scored; the portable loop does the rest (all of them without AVX2).
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: `simd_rows` checked AVX2 and F16C and the head width; `q` is `group` heads and `scores`
        // `group * len`, and keys `first .. first + len` are in the cache.
        unsafe { x86::scaled_scores8(q, k, kv, first, len, scoring.scale, scores) };
        done = len - len % 8;
    }
    for t in done..len {
        let krow = k.row(kv, first + t, row_buf);
        for (j, qh) in q.chunks_exact(hd).enumerate() {
            scores[j * len + t] = dot(qh, krow) * scoring.scale;
        }
    }
    if let Some(c) = scoring.softcap {
        scores.iter_mut().for_each(|s| *s = (*s / c).tanh() * c);
    }
    for s in scores.chunks_exact_mut(len) {
        softmax::softmax(s, simd);
    }
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: as above; `out` is `group * hd`.
        unsafe { x86::weighted_values(scores, v, kv, first, len, out) };
        return;
    }
    out.fill(0.0);
    for t in 0..len {
        let vrow = v.row(kv, first + t, row_buf);
        for (j, o) in out.chunks_exact_mut(hd).enumerate() {
            let p = scores[j * len + t];
            o.iter_mut().zip(vrow).for_each(|(o, v)| *o += p * v);
        }
    }
}

/// Whether [`x86`]'s kernels run attention rows of width `hd`: AVX2 and F16C present (and allowed by
/// `RILL_KERNELS`), and `hd` a multiple of eight. They give the portable loops' bits either way.
fn simd_rows(hd: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVX2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let avx2 = *AVX2.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("f16c")
                && crate::model::kernel_cap() >= 1
        });
        avx2 && hd.is_multiple_of(8)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = hd;
        false
    }
}

/// Dot product in eight independent lanes, so the compiler vectorizes it.
#[inline(always)]
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
        let got = causal_attention(&q, &k, &v, &Scoring::plain(8))?;
        let want = naive(&q, &k.contiguous()?, &v.contiguous()?)?;
        assert!(max_abs_diff(&got, &want)? < 1e-5);
        Ok(())
    }

    fn rows_of(q: &Tensor) -> Result<Vec<f32>> {
        // `[heads, new, hd]` → rows of `heads * hd`.
        q.transpose(0, 1)?.flatten_all()?.to_vec1::<f32>()
    }

    /// The row kernel gives the tensor version's result for prompt chunks with a past and for single tokens,
    /// plain, soft-capped and with a sliding window.
    #[test]
    fn attend_rows_matches_tensor_attention() -> Result<()> {
        let dev = Device::Cpu;
        let plain = Scoring::plain(8);
        let capped = Scoring {
            scale: 0.3,
            softcap: Some(1.5),
            window: Some(3),
        };
        for ((new, total), scoring) in [(1, 1), (1, 17), (4, 4), (5, 9), (1, 2), (6, 11)]
            .into_iter()
            .flat_map(|s| [(s, plain), (s, capped)])
        {
            let q = Tensor::randn(0f32, 1.0, (6, new, 8), &dev)?;
            let k = Tensor::randn(0f32, 1.0, (2, 20, 8), &dev)?.narrow(1, 0, total)?;
            let v = Tensor::randn(0f32, 1.0, (2, 20, 8), &dev)?.narrow(1, 0, total)?;
            let qr = rows_of(&q)?;
            let got = attend_rows(
                &[SeqRows {
                    q: &qr,
                    k: &k,
                    v: &v,
                }],
                6,
                &scoring,
            )?;
            let want = causal_attention(&q, &k, &v, &scoring)?;
            let got = Tensor::from_vec(got, (new, 48), &dev)?;
            assert!(
                max_abs_diff(&got, &want)? < 1e-5,
                "new {new}, total {total}, {scoring:?}"
            );
        }
        Ok(())
    }

    /// A row's bits do not depend on how it was computed: inside a prompt chunk, alone over the cache cut at
    /// its position, or in a batch beside other sequences.
    #[test]
    fn a_row_is_the_same_alone_in_a_chunk_and_in_a_batch() -> Result<()> {
        let dev = Device::Cpu;
        let (new, total) = (7, 12);
        let q = Tensor::randn(0f32, 1.0, (6, new, 8), &dev)?;
        let k = Tensor::randn(0f32, 1.0, (2, 32, 8), &dev)?;
        let v = Tensor::randn(0f32, 1.0, (2, 32, 8), &dev)?;
        let (kt, vt) = (k.narrow(1, 0, total)?, v.narrow(1, 0, total)?);
        let qr = rows_of(&q)?;
        let chunk = attend_rows(
            &[SeqRows {
                q: &qr,
                k: &kt,
                v: &vt,
            }],
            6,
            &Scoring::plain(8),
        )?;
        let other_q = rows_of(&Tensor::randn(0f32, 1.0, (6, 3, 8), &dev)?)?;
        let (ok, ov) = (k.narrow(1, 0, 30)?, v.narrow(1, 0, 30)?);
        for r in 0..new {
            let pos = total - new + r;
            let (kc, vc) = (k.narrow(1, 0, pos + 1)?, v.narrow(1, 0, pos + 1)?);
            let q1 = &qr[r * 48..(r + 1) * 48];
            let alone = attend_rows(
                &[SeqRows {
                    q: q1,
                    k: &kc,
                    v: &vc,
                }],
                6,
                &Scoring::plain(8),
            )?;
            assert_eq!(alone, chunk[r * 48..(r + 1) * 48], "row {r} alone");
            let batch = attend_rows(
                &[
                    SeqRows {
                        q: &other_q,
                        k: &ok,
                        v: &ov,
                    },
                    SeqRows {
                        q: q1,
                        k: &kc,
                        v: &vc,
                    },
                ],
                6,
                &Scoring::plain(8),
            )?;
            assert_eq!(
                batch[3 * 48..],
                chunk[r * 48..(r + 1) * 48],
                "row {r} in a batch"
            );
        }
        Ok(())
    }

    /// The AVX2 loops give the portable loops' bits: f32 and f16 caches, head widths of 64 and 96 (a
    /// 64 + 32 column split), key counts on and off multiples of eight, plain and soft-capped with a window.
    #[test]
    fn simd_loops_give_the_portable_bits() -> Result<()> {
        let dev = Device::Cpu;
        let capped = Scoring {
            scale: 0.3,
            softcap: Some(1.5),
            window: Some(13),
        };
        for (hd, dtype) in [
            (64, DType::F32),
            (96, DType::F32),
            (64, DType::F16),
            (8, DType::F32),
        ] {
            if !simd_rows(hd) {
                return Ok(()); // nothing to compare on this CPU
            }
            let k = Tensor::randn(0f32, 1.0, (2, 40, hd), &dev)?.to_dtype(dtype)?;
            let v = Tensor::randn(0f32, 1.0, (2, 40, hd), &dev)?.to_dtype(dtype)?;
            let q = Tensor::randn(0f32, 1.0, (3 * hd,), &dev)?.to_vec1::<f32>()?;
            let ((ks, kl), (vs, vl)) = (k.storage_and_layout(), v.storage_and_layout());
            let (kc, vc) = (CacheView::new(&ks, kl, hd)?, CacheView::new(&vs, vl, hd)?);
            for pos in [0, 6, 7, 8, 15, 16, 23, 39] {
                for scoring in [Scoring::plain(hd), capped] {
                    let run = |simd| {
                        let (mut scores, mut buf, mut out) =
                            (Vec::new(), vec![0f32; hd], vec![0f32; 3 * hd]);
                        attend_one(
                            &q,
                            &kc,
                            &vc,
                            1,
                            pos,
                            &scoring,
                            &mut scores,
                            &mut buf,
                            &mut out,
                            simd,
                        );
                        out
                    };
                    let (fast, portable) = (run(true), run(false));
                    let same = fast
                        .iter()
                        .zip(&portable)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "hd {hd} {dtype:?} pos {pos} {scoring:?}");
                }
            }
        }
        Ok(())
    }
}
