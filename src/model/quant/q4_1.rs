//! Q4_1 weights × Q8_1 activations: the GGML block formats and a SIMD dot product for them.
//!
//! A Q4_1 block stores 32 weights as `d * q + m` with 4-bit `q`; a Q8_1 block stores 32 activations as `d * q`
//! with 8-bit `q` and `s = d * Σq`. Their dot product is `dx·dy·Σ(qx·qy) + mx·sy`, the same arithmetic
//! llama.cpp uses. candle 0.11 only has a scalar path for this pair, which halves decode speed on Q4_1 files.

use half::f16;

use super::{QuantBlock, QK};

/// One GGML Q4_1 block (20 bytes, the on-disk layout).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ4_1 {
    pub d: f16,
    pub m: f16,
    /// Byte `j` holds weight `j` in its low nibble and weight `j + 16` in its high nibble.
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);

/// One Q8_1 block of quantized activations.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ8_1 {
    pub d: f32,
    /// `d * Σ qs`.
    pub s: f32,
    pub qs: [i8; QK],
}

impl BlockQ8_1 {
    pub const ZERO: Self = Self {
        d: 0.0,
        s: 0.0,
        qs: [0; QK],
    };
}

impl QuantBlock for BlockQ4_1 {
    type Act = BlockQ8_1;
    const BYTES: usize = 20;
    const ZERO_ACT: BlockQ8_1 = BlockQ8_1::ZERO;

    fn from_bytes(c: &[u8]) -> Self {
        Self {
            d: f16::from_le_bytes([c[0], c[1]]),
            m: f16::from_le_bytes([c[2], c[3]]),
            qs: c[4..20].try_into().expect("16 bytes"),
        }
    }

    fn quantize_acts(x: &[f32], out: &mut [BlockQ8_1]) {
        quantize_row_q8_1(x, out)
    }

    fn vec_dot(w: &[Self], x: &[BlockQ8_1]) -> f32 {
        vec_dot(w, x)
    }

    fn vec_dot4(w: &[Self], x: [&[BlockQ8_1]; 4]) -> [f32; 4] {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                // SAFETY: the features were just detected.
                return unsafe { avx2::vec_dot4(w, x) };
            }
        }
        x.map(|x| vec_dot_scalar(w, x))
    }
}

/// Quantizes one row of activations (`len` a multiple of 32) into Q8_1 blocks, with AVX2 when the CPU has
/// it (the same values as the portable version, rounding halves away from zero as ggml's reference does).
pub fn quantize_row_q8_1(x: &[f32], out: &mut [BlockQ8_1]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the features were just detected.
            return unsafe { avx2::quantize_row_q8_1(x, out) };
        }
    }
    quantize_row_q8_1_scalar(x, out)
}

/// Portable [`quantize_row_q8_1`].
pub fn quantize_row_q8_1_scalar(x: &[f32], out: &mut [BlockQ8_1]) {
    for (xb, ob) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for (q, v) in ob.qs.iter_mut().zip(xb) {
            let r = (v * id).round() as i32;
            *q = r as i8;
            sum += r;
        }
        // GGML stores both as f16; round the same way so results match llama.cpp's.
        ob.d = f16::from_f32(d).to_f32();
        ob.s = f16::from_f32(d * sum as f32).to_f32();
    }
}

/// Dequantizes Q4_1 blocks to f32 (used for embeddings and tests).
pub fn dequantize(blocks: &[BlockQ4_1], out: &mut [f32]) {
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
        let (d, m) = (b.d.to_f32(), b.m.to_f32());
        for j in 0..QK / 2 {
            o[j] = d * (b.qs[j] & 0x0F) as f32 + m;
            o[j + QK / 2] = d * (b.qs[j] >> 4) as f32 + m;
        }
    }
}

/// Portable dot product of a Q4_1 row with a Q8_1 row.
pub fn vec_dot_scalar(x: &[BlockQ4_1], y: &[BlockQ8_1]) -> f32 {
    let mut acc = 0f32;
    for (bx, by) in x.iter().zip(y) {
        let mut isum = 0i32;
        for j in 0..QK / 2 {
            isum += (bx.qs[j] & 0x0F) as i32 * by.qs[j] as i32;
            isum += (bx.qs[j] >> 4) as i32 * by.qs[j + QK / 2] as i32;
        }
        acc += bx.d.to_f32() * by.d * isum as f32 + bx.m.to_f32() * by.s;
    }
    acc
}

/// Dot product of a Q4_1 row with a Q8_1 row, using AVX2 when the CPU has it.
#[inline]
pub fn vec_dot(x: &[BlockQ4_1], y: &[BlockQ8_1]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the features were just detected.
            return unsafe { avx2::vec_dot(x, y) };
        }
    }
    vec_dot_scalar(x, y)
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{BlockQ4_1, BlockQ8_1};
    use half::f16;
    use std::arch::x86_64::*;

    /// [`super::vec_dot`] with AVX2 and FMA: one block pair per step, the scaled products kept in eight lanes.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA; that is the whole contract.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn vec_dot(x: &[BlockQ4_1], y: &[BlockQ8_1]) -> f32 {
        let low = _mm_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let mut acc = _mm256_setzero_ps();
        let mut summs = 0f32;
        for (bx, by) in x.iter().zip(y) {
            let packed = _mm_loadu_si128(bx.qs.as_ptr() as *const __m128i);
            let lo = _mm_and_si128(packed, low);
            let hi = _mm_and_si128(_mm_srli_epi16(packed, 4), low);
            let qx = _mm256_set_m128i(hi, lo);
            let qy = _mm256_loadu_si256(by.qs.as_ptr() as *const __m256i);
            // u8 × i8 → pairwise i16 sums (≤ 2·15·128, no overflow) → i32 sums.
            let p = _mm256_madd_epi16(_mm256_maddubs_epi16(qx, qy), ones);
            let scale = _mm256_set1_ps(bx.d.to_f32() * by.d);
            acc = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(p), acc);
            summs += bx.m.to_f32() * by.s;
        }
        hsum(acc) + summs
    }

    /// [`super::quantize_row_q8_1`] eight lanes at a time.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA; that is the whole contract.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn quantize_row_q8_1(x: &[f32], out: &mut [BlockQ8_1]) {
        let sign = _mm256_set1_ps(-0.0);
        for (xb, ob) in x.chunks_exact(32).zip(out.iter_mut()) {
            let v: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(xb.as_ptr().add(8 * i)));
            let abs = v.map(|v| _mm256_andnot_ps(sign, v));
            let m = _mm256_max_ps(_mm256_max_ps(abs[0], abs[1]), _mm256_max_ps(abs[2], abs[3]));
            let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
            let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
            let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
            let d = amax / 127.0;
            let id = _mm256_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
            let mut sum = _mm256_setzero_si256();
            let mut q = [_mm256_setzero_si256(); 4];
            for i in 0..4 {
                let x = _mm256_mul_ps(v[i], id);
                // Round half away from zero: truncate, then step away when the exact remainder is ≥ 0.5.
                let t = _mm256_round_ps(x, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
                let frac = _mm256_andnot_ps(sign, _mm256_sub_ps(x, t));
                let away = _mm256_cmp_ps(frac, _mm256_set1_ps(0.5), _CMP_GE_OQ);
                let step = _mm256_or_ps(_mm256_and_ps(x, sign), _mm256_set1_ps(1.0));
                q[i] = _mm256_cvtps_epi32(_mm256_add_ps(t, _mm256_and_ps(away, step)));
                sum = _mm256_add_epi32(sum, q[i]);
            }
            // i32 → i16 → i8 packs interleave 128-bit lanes; the permute puts the 32 bytes back in order.
            let p16 = [
                _mm256_packs_epi32(q[0], q[1]),
                _mm256_packs_epi32(q[2], q[3]),
            ];
            let p8 = _mm256_packs_epi16(p16[0], p16[1]);
            let p8 = _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            _mm256_storeu_si256(ob.qs.as_mut_ptr() as *mut __m256i, p8);
            let s = _mm_add_epi32(
                _mm256_castsi256_si128(sum),
                _mm256_extracti128_si256(sum, 1),
            );
            let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
            let s = _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01)));
            ob.d = f16::from_f32(d).to_f32();
            ob.s = f16::from_f32(d * s as f32).to_f32();
        }
    }

    /// One weight row against four activation rows: each weight block is unpacked once.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA; that is the whole contract (an activation row shorter than `x` panics).
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn vec_dot4(x: &[BlockQ4_1], ys: [&[BlockQ8_1]; 4]) -> [f32; 4] {
        let low = _mm_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut summs = [0f32; 4];
        for (b, bx) in x.iter().enumerate() {
            let packed = _mm_loadu_si128(bx.qs.as_ptr() as *const __m128i);
            let lo = _mm_and_si128(packed, low);
            let hi = _mm_and_si128(_mm_srli_epi16(packed, 4), low);
            let qx = _mm256_set_m128i(hi, lo);
            let (d, m) = (bx.d.to_f32(), bx.m.to_f32());
            for j in 0..4 {
                let by = &ys[j][b];
                let qy = _mm256_loadu_si256(by.qs.as_ptr() as *const __m256i);
                let p = _mm256_madd_epi16(_mm256_maddubs_epi16(qx, qy), ones);
                acc[j] = _mm256_fmadd_ps(_mm256_set1_ps(d * by.d), _mm256_cvtepi32_ps(p), acc[j]);
                summs[j] += m * by.s;
            }
        }
        [
            hsum(acc[0]) + summs[0],
            hsum(acc[1]) + summs[1],
            hsum(acc[2]) + summs[2],
            hsum(acc[3]) + summs[3],
        ]
    }

    /// The sum of the eight lanes of `v`.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA; that is the whole contract.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Blocks with pseudo-random nibbles, small positive scales and negative minimums.
    pub(crate) fn random_blocks(n: usize, seed: u32) -> Vec<BlockQ4_1> {
        let mut s = seed;
        let mut next = || {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            s >> 8
        };
        (0..n)
            .map(|_| BlockQ4_1 {
                d: f16::from_f32((next() % 1000) as f32 / 50_000.0),
                m: f16::from_f32(-((next() % 1000) as f32) / 20_000.0),
                qs: std::array::from_fn(|_| next() as u8),
            })
            .collect()
    }

    #[test]
    fn simd_dot_matches_scalar() {
        let w = random_blocks(24, 7);
        let x: Vec<f32> = (0..24 * QK)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 13.0)
            .collect();
        let mut xq = vec![BlockQ8_1::ZERO; 24];
        quantize_row_q8_1(&x, &mut xq);
        let (a, b) = (vec_dot(&w, &xq), vec_dot_scalar(&w, &xq));
        assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{a} vs {b}");
    }

    /// The SIMD quantizer gives the portable one's bits, exact halves included.
    #[test]
    fn simd_quantize_matches_scalar() {
        let mut x: Vec<f32> = (0..8 * QK)
            .map(|i| ((i * 7919 % 2003) as f32 - 1001.0) / 97.0)
            .collect();
        // A block whose values land on exact halves once scaled (amax 127 → scale 1).
        for (i, v) in x[..QK].iter_mut().enumerate() {
            *v = [127.0, 0.5, -0.5, 1.5, -2.5, 0.49999997, -126.5, 3.0][i % 8];
        }
        x[QK..2 * QK].fill(0.0);
        let (mut a, mut b) = (vec![BlockQ8_1::ZERO; 8], vec![BlockQ8_1::ZERO; 8]);
        quantize_row_q8_1(&x, &mut a);
        quantize_row_q8_1_scalar(&x, &mut b);
        for (a, b) in a.iter().zip(&b) {
            assert_eq!((a.d, a.s, a.qs), (b.d, b.s, b.qs));
        }
    }

    #[test]
    fn matmul_is_close_to_dequantized_f32() {
        use super::super::matmul;
        let (m, k, n) = (3, 64, 10);
        let w = random_blocks(n * k / QK, 3);
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 29 % 97) as f32 - 48.0) / 31.0)
            .collect();
        let mut dst = vec![0f32; m * n];
        matmul(&x, m, k, &w, n, &mut dst);
        let mut wf = vec![0f32; n * k];
        dequantize(&w, &mut wf);
        for r in 0..m {
            for c in 0..n {
                let exact: f32 = (0..k).map(|i| x[r * k + i] * wf[c * k + i]).sum();
                let tol = 0.02
                    * (0..k)
                        .map(|i| (x[r * k + i] * wf[c * k + i]).abs())
                        .sum::<f32>()
                    + 1e-3;
                assert!(
                    (dst[r * n + c] - exact).abs() < tol,
                    "({r},{c}): {} vs {exact}",
                    dst[r * n + c]
                );
            }
        }
    }
}
