//! Q4_1 weights interleaved eight rows at a time (see [`super::x8`]), dotted with Q8_1 activations:
//! `dx·dy·Σ(qx·qy) + mx·sy` per block, as llama.cpp computes it, with exact integer sums.

use half::f16;

use super::q4_1::{quantize_row_q8_1, BlockQ4_1, BlockQ8_1};
use super::x8::{dispatch_rows, Format, Interleaved, Kernel, ROWS};
use super::QK;

/// Block `b` of eight consecutive Q4_1 weight rows.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Q4_1x8Block {
    d: [f16; ROWS],
    m: [f16; ROWS],
    /// Bytes `32t + 4c .. 32t + 4c + 4` are bytes `4t .. 4t + 4` of row `c`'s block: low nibbles are weights
    /// `4t .. 4t + 4`, high nibbles weights `16 + 4t .. 16 + 4t + 4`.
    qs: [u8; ROWS * QK / 2],
}

/// The Q4_1 interleaved format.
pub enum Q4_1x8 {}

/// Repacks row-major Q4_1 blocks of an `[n, k]` weight; `None` when `n` is not a multiple of eight.
pub fn pack(blocks: &[BlockQ4_1], n: usize, k: usize) -> Option<Interleaved<Q4_1x8>> {
    if n % ROWS != 0 || k % QK != 0 || blocks.len() != n * k / QK {
        return None;
    }
    let kb = k / QK;
    let mut out = Vec::with_capacity(n / ROWS * kb);
    for g in 0..n / ROWS {
        for b in 0..kb {
            let src = |c: usize| &blocks[(g * ROWS + c) * kb + b];
            let mut p = Q4_1x8Block {
                d: std::array::from_fn(|c| src(c).d),
                m: std::array::from_fn(|c| src(c).m),
                qs: [0; ROWS * QK / 2],
            };
            for t in 0..4 {
                for c in 0..ROWS {
                    let at = 32 * t + 4 * c;
                    p.qs[at..at + 4].copy_from_slice(&src(c).qs[4 * t..4 * t + 4]);
                }
            }
            out.push(p);
        }
    }
    Some(Interleaved::new(out, n, k))
}

impl Format for Q4_1x8 {
    type Block = Q4_1x8Block;
    type Act = BlockQ8_1;
    const ZERO_ACT: BlockQ8_1 = BlockQ8_1::ZERO;

    fn quantize_acts(x: &[f32], out: &mut [BlockQ8_1]) {
        quantize_row_q8_1(x, out)
    }

    unsafe fn rows<const R: usize>(
        kernel: Kernel,
        xs: [&[BlockQ8_1]; R],
        w: &[Q4_1x8Block],
        dst: *mut f32,
        stride: usize,
    ) {
        dispatch_rows!(kernel, xs, w, dst, stride)
    }
}

/// Portable kernel for one activation row.
unsafe fn rows_scalar(x: &[BlockQ8_1], w: &[Q4_1x8Block], dst: *mut f32) {
    let mut acc = [0f32; ROWS];
    for (p, y) in w.iter().zip(x) {
        for (c, a) in acc.iter_mut().enumerate() {
            let mut isum = 0i32;
            for t in 0..4 {
                for j in 0..4 {
                    let q = p.qs[32 * t + 4 * c + j];
                    isum += (q & 0x0F) as i32 * y.qs[4 * t + j] as i32;
                    isum += (q >> 4) as i32 * y.qs[16 + 4 * t + j] as i32;
                }
            }
            *a += p.d[c].to_f32() * y.d * isum as f32 + p.m[c].to_f32() * y.s;
        }
    }
    std::ptr::copy_nonoverlapping(acc.as_ptr(), dst, ROWS);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{BlockQ8_1, Q4_1x8Block};
    use crate::model::quant::x86::{dot_avx2_u8, dot_avx512vnni, dot_avxvnni};
    use std::arch::x86_64::*;

    /// Generates the kernel for `R` activation rows against one weight group, `$dot` being the
    /// `acc += Σ₄ u8·i8` step per 32-bit lane.
    macro_rules! rows_kernel {
        ($name:ident, $features:literal, $dot:ident) => {
            #[target_feature(enable = $features)]
            pub unsafe fn $name<const R: usize>(
                xs: [&[BlockQ8_1]; R],
                w: &[Q4_1x8Block],
                dst: *mut f32,
                stride: usize,
            ) {
                let mask = _mm256_set1_epi8(0x0F);
                let mut acc = [_mm256_setzero_ps(); R];
                for (b, p) in w.iter().enumerate() {
                    let dw = _mm256_cvtph_ps(_mm_loadu_si128(p.d.as_ptr() as *const __m128i));
                    let mw = _mm256_cvtph_ps(_mm_loadu_si128(p.m.as_ptr() as *const __m128i));
                    let mut isum = [_mm256_setzero_si256(); R];
                    for t in 0..4 {
                        let q = _mm256_loadu_si256(p.qs.as_ptr().add(32 * t) as *const __m256i);
                        let lo = _mm256_and_si256(q, mask);
                        let hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), mask);
                        for r in 0..R {
                            let a = xs[r][b].qs.as_ptr() as *const i32;
                            isum[r] =
                                $dot(isum[r], lo, _mm256_set1_epi32(a.add(t).read_unaligned()));
                            isum[r] = $dot(
                                isum[r],
                                hi,
                                _mm256_set1_epi32(a.add(t + 4).read_unaligned()),
                            );
                        }
                    }
                    for r in 0..R {
                        let y = &xs[r][b];
                        let scale = _mm256_mul_ps(dw, _mm256_set1_ps(y.d));
                        acc[r] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(isum[r]), acc[r]);
                        acc[r] = _mm256_fmadd_ps(mw, _mm256_set1_ps(y.s), acc[r]);
                    }
                }
                for r in 0..R {
                    _mm256_storeu_ps(dst.add(r * stride), acc[r]);
                }
            }
        };
    }

    rows_kernel!(
        rows_avx512vnni,
        "avx2,fma,f16c,avx512vnni,avx512vl",
        dot_avx512vnni
    );
    rows_kernel!(rows_avxvnni, "avx2,fma,f16c,avxvnni", dot_avxvnni);
    rows_kernel!(rows_avx2, "avx2,fma,f16c", dot_avx2_u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::quant::q4_1::tests::random_blocks;
    use crate::model::quant::q4_1::vec_dot_scalar;
    use crate::model::quant::x8::testing;

    /// Every kernel the CPU has, against the plain layout's scalar dot product.
    #[test]
    fn interleaved_matmul_matches_plain_dot_products() {
        let (n, k) = (40, 1536);
        let w = random_blocks(n * k / QK, 11);
        let kb = k / QK;
        testing::check(&pack(&w, n, k).unwrap(), |x, c| {
            let mut xq = vec![BlockQ8_1::ZERO; kb];
            quantize_row_q8_1(x, &mut xq);
            vec_dot_scalar(&w[c * kb..(c + 1) * kb], &xq)
        });
    }

    #[test]
    fn widths_that_are_not_a_multiple_of_eight_are_not_packed() {
        assert!(pack(&random_blocks(12, 1), 12, 32).is_none());
    }
}
