//! Q8_0 weights × Q8_0 activations: 32 values per block as `d * q` with 8-bit `q`, dotted in integers.

use half::f16;

use super::q4_1::{quantize_row_q8_1, BlockQ8_1};
use super::{QuantBlock, QK};

/// One GGML Q8_0 block (34 bytes on disk).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ8_0 {
    pub d: f16,
    pub qs: [i8; QK],
}

/// Activations quantized the same way, with the scale kept as the f32 value of its f16 rounding.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ActQ8_0 {
    pub d: f32,
    pub qs: [i8; QK],
}

impl QuantBlock for BlockQ8_0 {
    type Act = ActQ8_0;
    const BYTES: usize = 34;
    const ZERO_ACT: ActQ8_0 = ActQ8_0 {
        d: 0.0,
        qs: [0; QK],
    };

    fn from_bytes(c: &[u8]) -> Self {
        Self {
            d: f16::from_le_bytes([c[0], c[1]]),
            qs: std::array::from_fn(|i| c[2 + i] as i8),
        }
    }

    fn quantize_acts(x: &[f32], out: &mut [ActQ8_0]) {
        quantize_row(x, out)
    }

    fn vec_dot(w: &[Self], x: &[ActQ8_0]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                // SAFETY: the features were just detected.
                return unsafe { avx2::vec_dot(w, x) };
            }
        }
        vec_dot_scalar(w, x)
    }

    fn vec_dot4(w: &[Self], x: [&[ActQ8_0]; 4]) -> [f32; 4] {
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

/// Quantizes one row of activations (`len` a multiple of 32) into Q8_0 blocks, rounding as ggml does: the
/// values and scale of Q8_1 quantization, without its sum.
pub fn quantize_row(x: &[f32], out: &mut [ActQ8_0]) {
    let mut q8_1 = vec![BlockQ8_1::ZERO; out.len()];
    quantize_row_q8_1(x, &mut q8_1);
    for (o, b) in out.iter_mut().zip(q8_1) {
        *o = ActQ8_0 { d: b.d, qs: b.qs };
    }
}

pub fn vec_dot_scalar(w: &[BlockQ8_0], x: &[ActQ8_0]) -> f32 {
    w.iter()
        .zip(x)
        .map(|(bw, bx)| {
            let isum: i32 = bw
                .qs
                .iter()
                .zip(&bx.qs)
                .map(|(a, b)| *a as i32 * *b as i32)
                .sum();
            bw.d.to_f32() * bx.d * isum as f32
        })
        .sum()
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{ActQ8_0, BlockQ8_0};
    use std::arch::x86_64::*;

    /// Dot product of a Q8_0 weight row with a Q8_0 activation row, with AVX2 and FMA.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA; that is the whole contract.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn vec_dot(w: &[BlockQ8_0], x: &[ActQ8_0]) -> f32 {
        let ones = _mm256_set1_epi16(1);
        let mut acc = _mm256_setzero_ps();
        for (bw, bx) in w.iter().zip(x) {
            let qw = _mm256_loadu_si256(bw.qs.as_ptr() as *const __m256i);
            let qx = _mm256_loadu_si256(bx.qs.as_ptr() as *const __m256i);
            // i8 × i8 via u8 × i8: |w| times x carrying w's sign (values stay within ±127, no i16 overflow).
            let p = _mm256_maddubs_epi16(_mm256_sign_epi8(qw, qw), _mm256_sign_epi8(qx, qw));
            let p = _mm256_madd_epi16(p, ones);
            let scale = _mm256_set1_ps(bw.d.to_f32() * bx.d);
            acc = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(p), acc);
        }
        hsum(acc)
    }

    /// One weight row against four activation rows: each weight block's magnitude is computed once.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA; that is the whole contract (an activation row shorter than `w` panics).
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn vec_dot4(w: &[BlockQ8_0], xs: [&[ActQ8_0]; 4]) -> [f32; 4] {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); 4];
        for (b, bw) in w.iter().enumerate() {
            let qw = _mm256_loadu_si256(bw.qs.as_ptr() as *const __m256i);
            let aw = _mm256_sign_epi8(qw, qw);
            let d = bw.d.to_f32();
            for j in 0..4 {
                let bx = &xs[j][b];
                let qx = _mm256_loadu_si256(bx.qs.as_ptr() as *const __m256i);
                let p = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, _mm256_sign_epi8(qx, qw)), ones);
                acc[j] = _mm256_fmadd_ps(_mm256_set1_ps(d * bx.d), _mm256_cvtepi32_ps(p), acc[j]);
            }
        }
        [hsum(acc[0]), hsum(acc[1]), hsum(acc[2]), hsum(acc[3])]
    }

    /// The sum of the eight lanes of `acc`.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA; that is the whole contract.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(acc: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simd_dot_matches_scalar_and_f32() {
        let n = 12;
        let w: Vec<BlockQ8_0> = (0..n)
            .map(|b| BlockQ8_0 {
                d: f16::from_f32(0.01 + b as f32 * 1e-3),
                qs: std::array::from_fn(|i| {
                    ((i * 7 + b * 13) % 255) as i32 as i8 - ((i * 7 + b * 13) % 255 == 128) as i8
                }),
            })
            .collect();
        let x: Vec<f32> = (0..n * QK)
            .map(|i| ((i * 31 % 89) as f32 - 44.0) / 17.0)
            .collect();
        let mut xq = vec![BlockQ8_0::ZERO_ACT; n];
        BlockQ8_0::quantize_acts(&x, &mut xq);
        let (a, b) = (BlockQ8_0::vec_dot(&w, &xq), vec_dot_scalar(&w, &xq));
        assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{a} vs {b}");
        let terms: Vec<f32> = (0..n * QK)
            .map(|i| w[i / QK].d.to_f32() * w[i / QK].qs[i % QK] as f32 * x[i])
            .collect();
        let (exact, scale) = (
            terms.iter().sum::<f32>(),
            terms.iter().map(|t| t.abs()).sum::<f32>(),
        );
        assert!(
            (a - exact).abs() < 0.01 * scale,
            "{a} vs {exact} (Σ|terms| = {scale})"
        );
    }
}
