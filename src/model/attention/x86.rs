//! AVX2 versions of the two inner loops of [`super::attend_one`], with the portable code's arithmetic lane for
//! lane, so either gives the same bits: the raw scores `q·k` (eight lanes of products summed chunk by chunk,
//! then the lanes added in order) and the weighted sum of values (`o += p·v`, key by key). They differ in how
//! the work is laid out: the scores of eight keys at once, their lane sums done by a transpose and seven
//! vertical adds instead of eight horizontal chains; the weighted sum kept in registers across keys.

use std::arch::x86_64::*;

use super::{CacheData, CacheView};

/// A cache's values as eight-lane f32 loads.
trait Load8: Copy {
    /// Values `at .. at + 8`, an f16 cache's converted exactly.
    ///
    /// # Safety
    /// AVX2 and F16C; the eight values exist.
    unsafe fn load8(self, at: usize) -> __m256;

    /// Asks for the cache lines of the `n` values from `at` (a hint: it never faults, and lines past the data
    /// may be fetched for nothing).
    #[inline(always)]
    fn prefetch(self, at: usize, n: usize) {
        let (p, size) = self.addr(at);
        crate::model::prefetch::lines(p as usize, p as usize + n * size);
    }

    /// The address of value `at` and the bytes a value takes.
    fn addr(self, at: usize) -> (*const u8, usize);
}

impl Load8 for &[f32] {
    #[inline(always)]
    unsafe fn load8(self, at: usize) -> __m256 {
        _mm256_loadu_ps(self.as_ptr().add(at))
    }

    fn addr(self, at: usize) -> (*const u8, usize) {
        (self.as_ptr().wrapping_add(at) as *const u8, 4)
    }
}

impl Load8 for &[half::f16] {
    #[inline(always)]
    unsafe fn load8(self, at: usize) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(self.as_ptr().add(at) as *const __m128i))
    }

    fn addr(self, at: usize) -> (*const u8, usize) {
        (self.as_ptr().wrapping_add(at) as *const u8, 2)
    }
}

/// The lane sums `v[0][i] + v[1][i] + … + v[7][i]`, in that order, of eight vectors turned into one: lane `u`
/// of the result is the in-order sum of the eight lanes of `v[u]`.
///
/// # Safety
/// The CPU must have AVX (the callers are `#[target_feature(enable = "avx2,f16c")]` functions).
#[inline(always)]
unsafe fn lane_sums(v: [__m256; 8]) -> __m256 {
    // 8×8 transpose: row u = v[u]; afterwards column i (lane i of every v[u]) is one vector.
    let t0 = _mm256_unpacklo_ps(v[0], v[1]);
    let t1 = _mm256_unpackhi_ps(v[0], v[1]);
    let t2 = _mm256_unpacklo_ps(v[2], v[3]);
    let t3 = _mm256_unpackhi_ps(v[2], v[3]);
    let t4 = _mm256_unpacklo_ps(v[4], v[5]);
    let t5 = _mm256_unpackhi_ps(v[4], v[5]);
    let t6 = _mm256_unpacklo_ps(v[6], v[7]);
    let t7 = _mm256_unpackhi_ps(v[6], v[7]);
    let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    let c = [
        _mm256_permute2f128_ps::<0x20>(s0, s4),
        _mm256_permute2f128_ps::<0x20>(s1, s5),
        _mm256_permute2f128_ps::<0x20>(s2, s6),
        _mm256_permute2f128_ps::<0x20>(s3, s7),
        _mm256_permute2f128_ps::<0x31>(s0, s4),
        _mm256_permute2f128_ps::<0x31>(s1, s5),
        _mm256_permute2f128_ps::<0x31>(s2, s6),
        _mm256_permute2f128_ps::<0x31>(s3, s7),
    ];
    let mut sum = c[0];
    for x in &c[1..] {
        sum = _mm256_add_ps(sum, *x);
    }
    sum
}

/// `scores[j * len + t] = (q_j · k_{first + t}) · scale` for every head `j` of the group and the first
/// `len - len % 8` keys (the caller finishes the rest with the portable dot product). `hd` must be a
/// multiple of eight.
///
/// # Safety
/// The CPU must have AVX2 and F16C; `q` holds `group * hd` values, `scores` `group * len`, and the keys exist.
#[target_feature(enable = "avx2,f16c")]
pub unsafe fn scaled_scores8(
    q: &[f32],
    k: &CacheView<'_>,
    kv: usize,
    first: usize,
    len: usize,
    scale: f32,
    scores: &mut [f32],
) {
    let at = kv * k.head_stride + first * k.pos_stride;
    match k.data {
        CacheData::F32(d) => scores8(q, d, at, k.pos_stride, k.hd, len, scale, scores),
        CacheData::F16(d) => scores8(q, d, at, k.pos_stride, k.hd, len, scale, scores),
    }
}

/// [`scaled_scores8`] over keys `base + t * step`.
///
/// # Safety
/// The CPU must have AVX2 and F16C. `hd` is a multiple of eight, `scores` holds at least `q.len() / hd * len`
/// values, and `k` holds values `base + t * step .. base + t * step + hd` for every key `t < len - len % 8`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn scores8(
    q: &[f32],
    k: impl Load8,
    base: usize,
    step: usize,
    hd: usize,
    len: usize,
    scale: f32,
    scores: &mut [f32],
) {
    let scale = _mm256_set1_ps(scale);
    for t in (0..len - len % 8).step_by(8) {
        let at: [usize; 8] = std::array::from_fn(|u| base + (t + u) * step);
        // The keys two blocks on: the cache streams from memory, and a block's scores take long enough to
        // hide the wait. One key's row per step of the first head's loop, so that the requests do not queue
        // up in one burst (the rest after it when the head is narrower than eight steps).
        for (j, qh) in q.chunks_exact(hd).enumerate() {
            let mut acc = [_mm256_setzero_ps(); 8];
            for c in (0..hd).step_by(8) {
                if j == 0 && c / 8 < 8 {
                    k.prefetch(at[c / 8] + 16 * step, hd);
                }
                let qv = _mm256_loadu_ps(qh.as_ptr().add(c));
                for u in 0..8 {
                    let prod = _mm256_mul_ps(qv, k.load8(at[u] + c));
                    acc[u] = _mm256_add_ps(acc[u], prod);
                }
            }
            let s = _mm256_mul_ps(lane_sums(acc), scale);
            _mm256_storeu_ps(scores.as_mut_ptr().add(j * len + t), s);
            if j == 0 {
                for &a in &at[(hd / 8).min(8)..] {
                    k.prefetch(a + 16 * step, hd);
                }
            }
        }
    }
}

/// `out_j = Σ_t p_{j,t} · v_{first + t}` for every head `j`, summed key by key from zero; `p` is
/// `[group, len]`, `out` `[group, hd]`. `hd` must be a multiple of eight.
///
/// # Safety
/// The CPU must have AVX2 and F16C; the values exist for every key.
#[target_feature(enable = "avx2,f16c")]
pub unsafe fn weighted_values(
    p: &[f32],
    v: &CacheView<'_>,
    kv: usize,
    first: usize,
    len: usize,
    out: &mut [f32],
) {
    let base = kv * v.head_stride + first * v.pos_stride;
    let (hd, step) = (v.hd, v.pos_stride);
    for (j, oh) in out.chunks_exact_mut(hd).enumerate() {
        let pj = &p[j * len..(j + 1) * len];
        let mut c0 = 0;
        while c0 < hd {
            match (hd - c0) / 8 {
                1 => c0 += columns::<1>(pj, v.data, base + c0, step, &mut oh[c0..], j == 0),
                2 => c0 += columns::<2>(pj, v.data, base + c0, step, &mut oh[c0..], j == 0),
                3 => c0 += columns::<3>(pj, v.data, base + c0, step, &mut oh[c0..], j == 0),
                4..=7 => c0 += columns::<4>(pj, v.data, base + c0, step, &mut oh[c0..], j == 0),
                _ => c0 += columns::<8>(pj, v.data, base + c0, step, &mut oh[c0..], j == 0),
            }
        }
    }
}

/// `8 * N` columns of one head's weighted sum, kept in registers across the keys; returns `8 * N`.
///
/// # Safety
/// The CPU must have AVX2 and F16C. `data` holds values `base + t * step .. base + t * step + 8 * N` for every
/// key `t < p.len()`, and `out` holds at least `8 * N` values.
#[inline(always)]
unsafe fn columns<const N: usize>(
    p: &[f32],
    data: CacheData<'_>,
    base: usize,
    step: usize,
    out: &mut [f32],
    fetch: bool,
) -> usize {
    match data {
        CacheData::F32(d) => columns_of::<N>(p, d, base, step, out, fetch),
        CacheData::F16(d) => columns_of::<N>(p, d, base, step, out, fetch),
    }
    8 * N
}

/// [`columns`] for one cache element type: `out[..8 * N] = Σ_t p[t] · v[base + t * step ..][..8 * N]`.
///
/// # Safety
/// As [`columns`], with `v` the cache's values.
#[inline(always)]
unsafe fn columns_of<const N: usize>(
    p: &[f32],
    v: impl Load8,
    base: usize,
    step: usize,
    out: &mut [f32],
    fetch: bool,
) {
    let mut acc = [_mm256_setzero_ps(); N];
    for (t, &pt) in p.iter().enumerate() {
        let pv = _mm256_set1_ps(pt);
        let at = base + t * step;
        // The first head's pass brings the values in, eight keys ahead; the group's other heads find them
        // cached.
        if fetch {
            v.prefetch(at + 8 * step, 8 * N);
        }
        for (i, a) in acc.iter_mut().enumerate() {
            *a = _mm256_add_ps(*a, _mm256_mul_ps(pv, v.load8(at + 8 * i)));
        }
    }
    for (i, a) in acc.iter().enumerate() {
        _mm256_storeu_ps(out.as_mut_ptr().add(8 * i), *a);
    }
}
