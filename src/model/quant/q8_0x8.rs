//! Q8_0 weights interleaved eight rows at a time (see [`super::x8`]), dotted with Q8_0 activations:
//! `dx·dy·Σ(qx·qy)` per block, as llama.cpp computes it, with exact integer sums.
//!
//! The byte multiply-add takes one unsigned operand, so weights are stored offset by 128 (`q + 128` as a
//! `u8`); `Σ(q + 128)·y = Σq·y + 128·Σy`, and each activation block carries `Σy` to take the excess back out.

use half::f16;

use super::q8_0::{quantize_row, ActQ8_0, BlockQ8_0};
use super::x8::{dispatch_rows, Ahead, Format, Interleaved, Kernel, ROWS};
use super::{QuantBlock, QK};

/// Block `b` of eight consecutive Q8_0 weight rows.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Q8_0x8Block {
    d: [f16; ROWS],
    /// Bytes `32t + 4c .. 32t + 4c + 4` are weights `4t .. 4t + 4` of row `c`, plus 128.
    qs: [u8; ROWS * QK],
}

/// A Q8_0 activation block with the sum of its quantized values.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ActQ8_0Sum {
    d: f32,
    sum: i32,
    qs: [i8; QK],
}

/// The Q8_0 interleaved format.
pub enum Q8_0x8 {}

/// Repacks row-major Q8_0 blocks of an `[n, k]` weight; `None` when `n` is not a multiple of eight.
pub fn pack(blocks: &[BlockQ8_0], n: usize, k: usize) -> Option<Interleaved<Q8_0x8>> {
    if !n.is_multiple_of(ROWS) || !k.is_multiple_of(QK) || blocks.len() != n * k / QK {
        return None;
    }
    let kb = k / QK;
    let mut out = Vec::with_capacity(n / ROWS * kb);
    for g in 0..n / ROWS {
        for b in 0..kb {
            let src = |c: usize| &blocks[(g * ROWS + c) * kb + b];
            let mut p = Q8_0x8Block {
                d: std::array::from_fn(|c| src(c).d),
                qs: [0; ROWS * QK],
            };
            for t in 0..QK / 4 {
                for c in 0..ROWS {
                    for j in 0..4 {
                        p.qs[32 * t + 4 * c + j] = (src(c).qs[4 * t + j] as u8) ^ 0x80;
                    }
                }
            }
            out.push(p);
        }
    }
    Some(Interleaved::new(out, n, k))
}

impl Format for Q8_0x8 {
    type Block = Q8_0x8Block;
    type Act = ActQ8_0Sum;
    const ZERO_ACT: ActQ8_0Sum = ActQ8_0Sum {
        d: 0.0,
        sum: 0,
        qs: [0; QK],
    };

    fn quantize_acts(x: &[f32], out: &mut [ActQ8_0Sum]) {
        let mut q = vec![BlockQ8_0::ZERO_ACT; out.len()];
        quantize_row(x, &mut q);
        for (o, ActQ8_0 { d, qs }) in out.iter_mut().zip(q) {
            let sum = qs.iter().map(|&v| v as i32).sum();
            *o = ActQ8_0Sum { d, sum, qs };
        }
    }

    unsafe fn rows<const R: usize>(
        kernel: Kernel,
        xs: [&[ActQ8_0Sum]; R],
        w: &[Q8_0x8Block],
        ahead: Ahead,
        dst: *mut f32,
        stride: usize,
    ) {
        dispatch_rows!(kernel, xs, w, ahead, dst, stride)
    }

    #[cfg(target_arch = "x86_64")]
    unsafe fn rows_pair_avx512<const R: usize>(
        xs: [&[ActQ8_0Sum]; R],
        w: [&[Q8_0x8Block]; 2],
        ahead: Ahead,
        dst: *mut f32,
        stride: usize,
    ) -> bool {
        x86::rows_pair_avx512(xs, w, ahead, dst, stride);
        true
    }
}

/// Portable kernel for one activation row.
///
/// # Safety
/// `dst` is valid for writes of eight values, one for each row of the group.
unsafe fn rows_scalar(x: &[ActQ8_0Sum], w: &[Q8_0x8Block], dst: *mut f32) {
    let mut acc = [0f32; ROWS];
    for (p, y) in w.iter().zip(x) {
        for (c, a) in acc.iter_mut().enumerate() {
            let mut isum = 0i32;
            for t in 0..QK / 4 {
                for j in 0..4 {
                    let q = (p.qs[32 * t + 4 * c + j] ^ 0x80) as i8;
                    isum += q as i32 * y.qs[4 * t + j] as i32;
                }
            }
            *a += p.d[c].to_f32() * y.d * isum as f32;
        }
    }
    std::ptr::copy_nonoverlapping(acc.as_ptr(), dst, ROWS);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{ActQ8_0Sum, Q8_0x8Block};
    use crate::model::quant::x8::Ahead;
    use crate::model::quant::x86::{dot_avx512vnni, dot_avxvnni, pair_bytes, pair_ps};
    use std::arch::x86_64::*;

    /// Generates the kernel for `R` activation rows against one weight group. `$dot(acc, w, y)` adds
    /// `Σ₄ w'·y` for offset weights `w'`; `$excess` is how many times `Σy` that leaves in the sum.
    macro_rules! rows_kernel {
        ($name:ident, $features:literal, $dot:ident, $excess:expr) => {
            /// Writes `dst[r * stride + c]`, `c < 8`, for the `R` activation rows `xs` against the weight group
            /// `w`, fetching `ahead` as it goes: `Format::rows` for one instruction set.
            ///
            /// # Safety
            /// The CPU must have the target features this instance is generated with: AVX2, FMA and F16C, and for
            /// the VNNI kernels AVX-512 VNNI and VL, or AVX-VNNI. `dst` is valid for writes of `R` rows of eight
            /// values, `stride` apart.
            #[target_feature(enable = $features)]
            pub unsafe fn $name<const R: usize>(
                xs: [&[ActQ8_0Sum]; R],
                w: &[Q8_0x8Block],
                ahead: Ahead,
                dst: *mut f32,
                stride: usize,
            ) {
                let mut acc = [_mm256_setzero_ps(); R];
                for (b, p) in w.iter().enumerate() {
                    ahead.fetch(b);
                    let dw = _mm256_cvtph_ps(_mm_loadu_si128(p.d.as_ptr() as *const __m128i));
                    let mut isum = [_mm256_setzero_si256(); R];
                    for t in 0..8 {
                        let q = _mm256_loadu_si256(p.qs.as_ptr().add(32 * t) as *const __m256i);
                        for r in 0..R {
                            let a = xs[r][b].qs.as_ptr() as *const i32;
                            isum[r] =
                                $dot(isum[r], q, _mm256_set1_epi32(a.add(t).read_unaligned()));
                        }
                    }
                    for r in 0..R {
                        let y = &xs[r][b];
                        let exact = _mm256_sub_epi32(isum[r], _mm256_set1_epi32($excess * y.sum));
                        let scale = _mm256_mul_ps(dw, _mm256_set1_ps(y.d));
                        acc[r] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(exact), acc[r]);
                    }
                }
                for r in 0..R {
                    _mm256_storeu_ps(dst.add(r * stride), acc[r]);
                }
            }
        };
    }

    /// AVX2 without VNNI: a pair of offset weights times activations can overflow i16, so the weights go
    /// back to signed and the sign is moved onto the activations (`|w|·(y·sign w)`); no excess remains.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C; that is the whole contract.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_avx2_signed(acc: __m256i, w_offset: __m256i, y: __m256i) -> __m256i {
        let w = _mm256_xor_si256(w_offset, _mm256_set1_epi8(-128));
        let p = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(y, w));
        _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)))
    }

    rows_kernel!(
        rows_avx512vnni,
        "avx2,fma,f16c,avx512vnni,avx512vl",
        dot_avx512vnni,
        128
    );
    rows_kernel!(rows_avxvnni, "avx2,fma,f16c,avxvnni", dot_avxvnni, 128);
    rows_kernel!(rows_avx2, "avx2,fma,f16c", dot_avx2_signed, 0);

    /// Two weight groups at once on 512-bit vectors, lanes 0–7 the first group's rows and 8–15 the
    /// second's, each lane through exactly the 256-bit VNNI kernel's operations (so the same bits).
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA, F16C and AVX-512 F, BW, VNNI and VL; `dst` is valid for writes of `R` rows of
    /// sixteen values, `stride` apart.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni,avx512vl")]
    pub unsafe fn rows_pair_avx512<const R: usize>(
        xs: [&[ActQ8_0Sum]; R],
        w: [&[Q8_0x8Block]; 2],
        ahead: Ahead,
        dst: *mut f32,
        stride: usize,
    ) {
        let half_d =
            |p: &Q8_0x8Block| _mm256_cvtph_ps(_mm_loadu_si128(p.d.as_ptr() as *const __m128i));
        let mut acc = [_mm512_setzero_ps(); R];
        for (b, (p0, p1)) in w[0].iter().zip(w[1]).enumerate() {
            ahead.fetch(b);
            let dw = pair_ps(half_d(p0), half_d(p1));
            let mut isum = [_mm512_setzero_si512(); R];
            for t in 0..8 {
                let q = pair_bytes(p0.qs.as_ptr().add(32 * t), p1.qs.as_ptr().add(32 * t));
                for r in 0..R {
                    let a = xs[r][b].qs.as_ptr() as *const i32;
                    isum[r] = _mm512_dpbusd_epi32(
                        isum[r],
                        q,
                        _mm512_set1_epi32(a.add(t).read_unaligned()),
                    );
                }
            }
            for r in 0..R {
                let y = &xs[r][b];
                let exact = _mm512_sub_epi32(isum[r], _mm512_set1_epi32(128 * y.sum));
                let scale = _mm512_mul_ps(dw, _mm512_set1_ps(y.d));
                acc[r] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(exact), acc[r]);
            }
        }
        for r in 0..R {
            _mm512_storeu_ps(dst.add(r * stride), acc[r]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::quant::q8_0::vec_dot_scalar;
    use crate::model::quant::x8::testing;

    /// Weights at both extremes (-128 and 127), so an overflowing pair sum would show.
    fn extreme_weight(n: usize, k: usize) -> Vec<BlockQ8_0> {
        (0..n * k / QK)
            .map(|b| BlockQ8_0 {
                d: f16::from_f32(0.01 + (b % 7) as f32 * 1e-3),
                qs: std::array::from_fn(|i| match (i + b) % 5 {
                    0 => -128,
                    1 => 127,
                    _ => ((i * 7 + b * 13) % 255) as i32 as i8,
                }),
            })
            .collect()
    }

    /// The two-group pass gives each group's bits.
    #[test]
    fn group_pairs_give_single_group_bits() {
        let (n, k) = (16, 1024);
        testing::check_pairs(&pack(&extreme_weight(n, k), n, k).unwrap());
    }

    /// Every kernel the CPU has, against the plain layout's scalar dot product.
    #[test]
    fn interleaved_matmul_matches_plain_dot_products() {
        let (n, k) = (24, 96);
        let w = extreme_weight(n, k);
        let kb = k / QK;
        testing::check(&pack(&w, n, k).unwrap(), |x, c| {
            let mut xq = vec![BlockQ8_0::ZERO_ACT; kb];
            quantize_row(x, &mut xq);
            vec_dot_scalar(&w[c * kb..(c + 1) * kb], &xq)
        });
    }
}
