//! rill's own single-precision exponential, `e^x` from multiplies and adds only (no fused multiply-add): a
//! two-part `ln 2` reduction and a polynomial, in one fixed order, so that the portable function and its eight
//! AVX2 lanes ([`x86::exp8`]) give the same bits for every input. The softmax of attention scores and the SiLU
//! of gated layers use it; a call to the C library's `expf` per value cost more than the arithmetic around it.

/// The exponential's range: above `HI` it is clamped (the power of two `2^n` it is built from must keep
/// `n <= 127`, so `HI` must stay below `127.5 · ln 2 ≈ 88.37`), and below `LO` it is exactly 0 (`e^-87 ≈ 1.6e-38`
/// is the last value whose `2^n` is a normal float; a softmax input is `s - max <= 0`, and a weight that small
/// would only turn into a subnormal that slows the weighted sum down).
const HI: f32 = 88.0;
const LO: f32 = -87.0;
const LOG2E: f32 = std::f32::consts::LOG2_E;
/// `ln 2` split in two so that `n · LN2_HI` is exact for the `n` that occur.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Coefficients of a polynomial for `(e^r - 1 - r) / r²` on `|r| <= ln2 / 2`, highest degree first.
const POLY: [f32; 6] = [
    1.987_569_2e-4,
    1.398_2e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];

/// `e^x` to within one unit in the last place (the test measures it every 0.0007 over `LO..=HI`), 0 below
/// `LO`, NaN for NaN; the portable twin of the AVX2 lanes.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    if x < LO {
        return 0.0;
    }
    let x = if x > HI { HI } else { x };
    let n = (x * LOG2E).round_ties_even();
    let r = x - n * LN2_HI;
    let r = r - n * LN2_LO;
    let z = r * r;
    let mut p = POLY[0];
    for c in &POLY[1..] {
        p = p * r + c;
    }
    let y = p * z + r + 1.0;
    // `n` is in -126..=127 here (NaN becomes 0; `y` is NaN then anyway).
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use super::{HI, LN2_HI, LN2_LO, LO, LOG2E, POLY};
    use std::arch::x86_64::*;

    /// [`super::exp`] of eight lanes, operation for operation.
    ///
    /// # Safety
    /// The CPU must have AVX2 (callers are `#[target_feature(enable = "avx2")]` functions).
    #[inline(always)]
    pub(crate) unsafe fn exp8(x: __m256) -> __m256 {
        // `min_ps(a, b)` and `max_ps(a, b)` return `b` when either is NaN: the score is the second operand so
        // that NaN stays NaN. Lanes below `LO` are computed at `LO` and zeroed at the end.
        let low = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(LO));
        let x = _mm256_min_ps(_mm256_set1_ps(HI), x);
        let x = _mm256_max_ps(_mm256_set1_ps(LO), x);
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(x, _mm256_set1_ps(LOG2E)),
        );
        let r = _mm256_sub_ps(x, _mm256_mul_ps(n, _mm256_set1_ps(LN2_HI)));
        let r = _mm256_sub_ps(r, _mm256_mul_ps(n, _mm256_set1_ps(LN2_LO)));
        let z = _mm256_mul_ps(r, r);
        let mut p = _mm256_set1_ps(POLY[0]);
        for &c in &POLY[1..] {
            p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(c));
        }
        let y = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(p, z), r), _mm256_set1_ps(1.0));
        let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        ));
        _mm256_andnot_ps(low, _mm256_mul_ps(y, _mm256_castsi256_ps(bits)))
    }
}

/// Deterministic values spread over `-spread ..= spread`, for tests of functions built on [`exp`].
#[cfg(test)]
pub(crate) fn test_values(n: usize, spread: f32, seed: u32) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            ((s >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0) * spread
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units in the last place between `got` and the f32 nearest to `want`.
    fn ulps(got: f32, want: f64) -> u32 {
        (got.to_bits() as i64 - (want as f32).to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn exp_is_within_two_ulps_of_the_true_exponential() {
        let (mut x, mut worst) = (LO, 0);
        while x <= HI {
            let u = ulps(exp(x), (x as f64).exp());
            assert!(
                u <= 2,
                "exp({x}) = {} is {u} ulps from {}",
                exp(x),
                (x as f64).exp()
            );
            worst = worst.max(u);
            x += 0.000_7;
        }
        eprintln!("exp: at most {worst} ulps over {LO}..{HI}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(f32::NAN).is_nan());
        assert_eq!(exp(-87.5), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx2_lanes_give_the_portable_bits() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            return;
        }
        // The exponential alone, lane by lane, across and beyond its range.
        let mut xs: Vec<f32> = (0..40_000).map(|i| -100.0 + i as f32 * 0.005_01).collect();
        xs.extend([
            f32::NEG_INFINITY,
            f32::INFINITY,
            LO,
            HI,
            -0.0,
            0.0,
            1e-30,
            -1e-30,
        ]);
        for c in xs.chunks(8) {
            let mut lanes = [0f32; 8];
            lanes[..c.len()].copy_from_slice(c);
            let mut got = [0f32; 8];
            // SAFETY: AVX2 was just detected.
            unsafe {
                use std::arch::x86_64::*;
                /// Stores `exp8` of the eight lanes of `x` in `out`.
                ///
                /// # Safety
                /// The CPU must have AVX2.
                #[target_feature(enable = "avx2")]
                unsafe fn run(x: &[f32; 8], out: &mut [f32; 8]) {
                    _mm256_storeu_ps(out.as_mut_ptr(), x86::exp8(_mm256_loadu_ps(x.as_ptr())));
                }
                run(&lanes, &mut got);
            }
            for (x, g) in lanes.iter().zip(got) {
                assert_eq!(g.to_bits(), exp(*x).to_bits(), "exp({x})");
            }
        }
    }
}
