//! The softmax of one row of attention scores, in place: the largest score, `e^(s - max)` for every score with
//! rill's own exponential ([`crate::model::exp`]), their sum in eight lanes, and each divided by the sum.
//!
//! The portable loop and the AVX2 loop give the same bits for every score, so a row's result does not depend
//! on which path ran it. A call to the C library's `expf` per score was half of a decoding step's attention
//! time; eight lanes at once take a few instructions a score.

use crate::model::exp::exp;

/// Replaces the scores `s` by their softmax. `simd` (AVX2 checked by the caller) picks the vector loop, which
/// gives the same bits.
pub(super) fn softmax(s: &mut [f32], simd: bool) {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: the caller checked AVX2 (`simd_rows`).
        unsafe { x86::softmax(s) };
        return;
    }
    let _ = simd;
    let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut lanes = [0f32; 8];
    let mut chunks = s.chunks_exact_mut(8);
    for c in &mut chunks {
        for (x, l) in c.iter_mut().zip(&mut lanes) {
            *x = exp(*x - max);
            *l += *x;
        }
    }
    let tail = chunks.into_remainder();
    for x in tail.iter_mut() {
        *x = exp(*x - max);
    }
    scale(s, 1.0 / total(&lanes, &s[s.len() - s.len() % 8..]));
}

/// The sum of the exponentials: the eight lanes in order, then the scores past the last whole eight.
#[inline(always)]
fn total(lanes: &[f32; 8], tail: &[f32]) -> f32 {
    let mut sum = 0.0;
    for l in lanes.iter().chain(tail) {
        sum += l;
    }
    sum
}

#[inline(always)]
fn scale(s: &mut [f32], by: f32) {
    s.iter_mut().for_each(|x| *x *= by);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{scale, total};
    use crate::model::exp::{exp, x86::exp8};
    use std::arch::x86_64::*;

    /// [`super::softmax`] eight scores at a time.
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn softmax(s: &mut [f32]) {
        let whole = s.len() - s.len() % 8;
        let p = s.as_mut_ptr();
        // The largest score: the same value as the portable fold for any scores without NaN (a NaN score
        // makes the row NaN either way).
        let mut m = _mm256_set1_ps(f32::NEG_INFINITY);
        for i in (0..whole).step_by(8) {
            m = _mm256_max_ps(m, _mm256_loadu_ps(p.add(i)));
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), m);
        let max = lanes
            .iter()
            .chain(&s[whole..])
            .copied()
            .fold(f32::NEG_INFINITY, f32::max);
        let mv = _mm256_set1_ps(max);
        let mut sum = _mm256_setzero_ps();
        for i in (0..whole).step_by(8) {
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), mv));
            _mm256_storeu_ps(p.add(i), e);
            sum = _mm256_add_ps(sum, e);
        }
        for x in &mut s[whole..] {
            *x = exp(*x - max);
        }
        _mm256_storeu_ps(lanes.as_mut_ptr(), sum);
        scale(s, 1.0 / total(&lanes, &s[whole..]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::model::exp::test_values as scores;

    #[test]
    fn softmax_sums_to_one_and_matches_the_definition() {
        for len in [1, 2, 7, 8, 9, 31, 100, 257] {
            let mut s = scores(len, 12.0, len as u32);
            let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let sum: f64 = s.iter().map(|&x| (x as f64 - max).exp()).sum();
            let want: Vec<f64> = s.iter().map(|&x| (x as f64 - max).exp() / sum).collect();
            softmax(&mut s, false);
            for (g, w) in s.iter().zip(&want) {
                assert!((*g as f64 - w).abs() <= 1e-6 * w.max(1e-3), "{g} vs {w}");
            }
            assert!((s.iter().map(|&x| x as f64).sum::<f64>() - 1.0).abs() < 1e-5);
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx2_loop_gives_the_portable_bits() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            return;
        }
        for len in [1, 3, 8, 15, 16, 64, 100, 129, 1000] {
            for spread in [0.5, 10.0, 200.0] {
                let base = scores(len, spread, 7 * len as u32 + spread as u32);
                let (mut a, mut b) = (base.clone(), base);
                softmax(&mut a, false);
                softmax(&mut b, true);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&a), bits(&b), "len {len}, spread {spread}");
            }
        }
    }
}
