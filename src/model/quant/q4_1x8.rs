//! 4-bit weights `d·q + m` in 32-value blocks, interleaved eight rows at a time (see [`super::x8`]), dotted
//! with Q8_1 activations: `dx·dy·Σ(qx·qy) + mx·sy` per block, as llama.cpp computes Q4_1, with exact integer
//! sums. Two formats share the kernels:
//! - Q4_1 itself: one f16 `d` and `m` per block;
//! - Q4_K: super-blocks of 256 whose eight 32-value sub-blocks are `d·sc·q − dmin·m` with f16 `d`, `dmin` and
//!   6-bit `sc`, `m`; the kernel multiplies the two scale levels out per sub-block in f32 (as llama.cpp's
//!   dequantization does), so the weights are exactly the file's while staying 4.625 bits each in memory.

use half::f16;

use super::q4_1::{quantize_row_q8_1, BlockQ4_1, BlockQ8_1};
use super::x8::{dispatch_rows, k_quant_groups, Ahead, Format, Interleaved, Kernel, ROWS};
use super::QK;

/// Interleaved nibbles of one 32-value block of eight rows: bytes `32t + 4c .. 32t + 4c + 4` are bytes
/// `4t .. 4t + 4` of row `c`'s block, whose low nibbles are weights `4t .. 4t + 4` and high nibbles weights
/// `16 + 4t .. 16 + 4t + 4`.
type Nibbles = [u8; ROWS * QK / 2];

/// A group block: `SUBS` 32-value blocks of eight rows, with their scales and offsets.
pub trait Q4Group: Copy + Send + Sync + 'static {
    const SUBS: usize;
    /// Scale and offset of row `c` in sub-block `s`.
    fn scales(&self, s: usize, c: usize) -> (f32, f32);
    /// The same for all eight rows, as f32 lanes.
    ///
    /// # Safety
    /// The CPU must have AVX2 and F16C.
    #[cfg(target_arch = "x86_64")]
    unsafe fn scales8(&self, s: usize) -> (std::arch::x86_64::__m256, std::arch::x86_64::__m256);
    fn nibbles(&self, s: usize) -> &Nibbles;
}

/// Block `b` of eight consecutive Q4_1 rows.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Q4_1Group {
    d: [f16; ROWS],
    m: [f16; ROWS],
    qs: Nibbles,
}

impl Q4Group for Q4_1Group {
    const SUBS: usize = 1;

    fn scales(&self, _: usize, c: usize) -> (f32, f32) {
        (self.d[c].to_f32(), self.m[c].to_f32())
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn scales8(&self, _: usize) -> (std::arch::x86_64::__m256, std::arch::x86_64::__m256) {
        use std::arch::x86_64::*;
        let load = |v: &[f16; ROWS]| _mm256_cvtph_ps(_mm_loadu_si128(v.as_ptr() as *const __m128i));
        (load(&self.d), load(&self.m))
    }

    fn nibbles(&self, _: usize) -> &Nibbles {
        &self.qs
    }
}

/// Super-block `b` of eight consecutive Q4_K rows.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Q4KGroup {
    d: [f16; ROWS],
    dmin: [f16; ROWS],
    /// `sc[s][c]`, `m[s][c]`: sub-block `s` of row `c`.
    sc: [[u8; ROWS]; 8],
    m: [[u8; ROWS]; 8],
    qs: [Nibbles; 8],
}

impl Q4Group for Q4KGroup {
    const SUBS: usize = 8;

    fn scales(&self, s: usize, c: usize) -> (f32, f32) {
        (
            self.d[c].to_f32() * self.sc[s][c] as f32,
            -(self.dmin[c].to_f32() * self.m[s][c] as f32),
        )
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn scales8(&self, s: usize) -> (std::arch::x86_64::__m256, std::arch::x86_64::__m256) {
        use std::arch::x86_64::*;
        let half = |v: &[f16; ROWS]| _mm256_cvtph_ps(_mm_loadu_si128(v.as_ptr() as *const __m128i));
        let bytes = |v: &[u8; ROWS]| {
            _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(
                v.as_ptr() as *const __m128i
            )))
        };
        let d = _mm256_mul_ps(half(&self.d), bytes(&self.sc[s]));
        let m = _mm256_mul_ps(half(&self.dmin), bytes(&self.m[s]));
        (d, _mm256_sub_ps(_mm256_setzero_ps(), m))
    }

    fn nibbles(&self, s: usize) -> &Nibbles {
        &self.qs[s]
    }
}

/// The interleaved 4-bit format with group blocks `G`.
pub struct Q4x8<G>(std::marker::PhantomData<G>);
/// Q4_1 weights, interleaved.
pub type Q4_1x8 = Q4x8<Q4_1Group>;
/// Q4_K weights, interleaved.
pub type Q4Kx8 = Q4x8<Q4KGroup>;

/// Interleaves the nibbles of eight rows' blocks, each in the Q4_1 layout (byte `j`: weight `j` low, `j + 16`
/// high).
fn interleave_nibbles(rows: [[u8; QK / 2]; ROWS]) -> Nibbles {
    let mut out = [0u8; ROWS * QK / 2];
    for t in 0..4 {
        for (c, r) in rows.iter().enumerate() {
            out[32 * t + 4 * c..32 * t + 4 * c + 4].copy_from_slice(&r[4 * t..4 * t + 4]);
        }
    }
    out
}

/// Repacks row-major Q4_1 blocks of an `[n, k]` weight; `None` when `n` is not a multiple of eight.
pub fn pack(blocks: &[BlockQ4_1], n: usize, k: usize) -> Option<Interleaved<Q4_1x8>> {
    if !n.is_multiple_of(ROWS) || !k.is_multiple_of(QK) || blocks.len() != n * k / QK {
        return None;
    }
    let kb = k / QK;
    let mut out = Vec::with_capacity(n / ROWS * kb);
    for g in 0..n / ROWS {
        for b in 0..kb {
            let src = |c: usize| &blocks[(g * ROWS + c) * kb + b];
            out.push(Q4_1Group {
                d: std::array::from_fn(|c| src(c).d),
                m: std::array::from_fn(|c| src(c).m),
                qs: interleave_nibbles(std::array::from_fn(|c| src(c).qs)),
            });
        }
    }
    Some(Interleaved::new(out, n, k))
}

/// The size of a Q4_K super-block in a GGUF file.
const Q4_K_BYTES: usize = 144;

/// Repacks the Q4_K bytes of an `[n, k]` weight (row-major super-blocks: f16 `d`, f16 `dmin`, 12 bytes of
/// 6-bit sub-block scales and mins, 128 bytes of nibbles); `None` when `n` is not a multiple of eight.
pub fn pack_q4_k(bytes: &[u8], n: usize, k: usize) -> Option<Interleaved<Q4Kx8>> {
    let groups = k_quant_groups(bytes, n, k, Q4_K_BYTES, |blk| {
        let half = |c: usize, at: usize| f16::from_le_bytes([blk(c)[at], blk(c)[at + 1]]);
        Q4KGroup {
            d: std::array::from_fn(|c| half(c, 0)),
            dmin: std::array::from_fn(|c| half(c, 2)),
            sc: std::array::from_fn(|s| {
                std::array::from_fn(|c| q4_k_scale_min(s, &blk(c)[4..16]).0)
            }),
            m: std::array::from_fn(|s| {
                std::array::from_fn(|c| q4_k_scale_min(s, &blk(c)[4..16]).1)
            }),
            qs: std::array::from_fn(|s| {
                interleave_nibbles(std::array::from_fn(|c| {
                    // Sub-blocks 2j and 2j + 1 are the low and high nibbles of bytes 32j .. 32j + 32.
                    let q = &blk(c)[16 + 32 * (s / 2)..][..32];
                    let nib = |l: usize| if s % 2 == 0 { q[l] & 0x0F } else { q[l] >> 4 };
                    std::array::from_fn(|j| nib(j) | (nib(j + 16) << 4))
                }))
            }),
        }
    })?;
    Some(Interleaved::new(groups, n.next_multiple_of(ROWS), k))
}

/// The 6-bit scale and min of Q4_K sub-block `j` from the 12 packed bytes.
fn q4_k_scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

impl<G: Q4Group> Format for Q4x8<G> {
    const VALUES: usize = QK * G::SUBS;
    type Block = G;
    type Act = BlockQ8_1;
    const ZERO_ACT: BlockQ8_1 = BlockQ8_1::ZERO;
    /// The kernels fetch ahead at each of a block's sub-blocks.
    const FETCH_STEPS: usize = G::SUBS;

    fn quantize_acts(x: &[f32], out: &mut [BlockQ8_1]) {
        quantize_row_q8_1(x, out)
    }

    unsafe fn rows<const R: usize>(
        kernel: Kernel,
        xs: [&[BlockQ8_1]; R],
        w: &[G],
        ahead: Ahead,
        dst: *mut f32,
        stride: usize,
    ) {
        dispatch_rows!(kernel, xs, w, ahead, dst, stride)
    }

    #[cfg(target_arch = "x86_64")]
    unsafe fn rows_pair_avx512<const R: usize>(
        xs: [&[BlockQ8_1]; R],
        w: [&[G]; 2],
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
unsafe fn rows_scalar<G: Q4Group>(x: &[BlockQ8_1], w: &[G], dst: *mut f32) {
    let mut acc = [0f32; ROWS];
    for (b, p) in w.iter().enumerate() {
        for s in 0..G::SUBS {
            let (y, qs) = (&x[b * G::SUBS + s], p.nibbles(s));
            for (c, a) in acc.iter_mut().enumerate() {
                let mut isum = 0i32;
                for t in 0..4 {
                    for j in 0..4 {
                        let q = qs[32 * t + 4 * c + j];
                        isum += (q & 0x0F) as i32 * y.qs[4 * t + j] as i32;
                        isum += (q >> 4) as i32 * y.qs[16 + 4 * t + j] as i32;
                    }
                }
                let (d, m) = p.scales(s, c);
                *a += d * y.d * isum as f32 + m * y.s;
            }
        }
    }
    std::ptr::copy_nonoverlapping(acc.as_ptr(), dst, ROWS);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{BlockQ8_1, Q4Group};
    use crate::model::quant::x8::Ahead;
    use crate::model::quant::x86::{dot_avx512vnni, dot_avxvnni, pair_bytes, pair_ps};
    use std::arch::x86_64::*;

    /// Generates the kernel for `R` activation rows against one weight group: `$step(part, u8, i8)` adds a
    /// step's byte products to a block's partial sums, and `$widen(part)` turns those into the block's
    /// 32-bit sums, four bytes a lane.
    macro_rules! rows_kernel {
        ($name:ident, $features:literal, $step:ident, $widen:ident) => {
            /// Writes `dst[r * stride + c]`, `c < 8`, for the `R` activation rows `xs` against the weight group
            /// `w`, fetching `ahead` as it goes: `Format::rows` for one instruction set.
            ///
            /// # Safety
            /// The CPU must have the target features this instance is generated with: AVX2, FMA and F16C, and for
            /// the VNNI kernels AVX-512 VNNI and VL, or AVX-VNNI. `dst` is valid for writes of `R` rows of eight
            /// values, `stride` apart.
            #[target_feature(enable = $features)]
            pub unsafe fn $name<G: Q4Group, const R: usize>(
                xs: [&[BlockQ8_1]; R],
                w: &[G],
                ahead: Ahead,
                dst: *mut f32,
                stride: usize,
            ) {
                let mask = _mm256_set1_epi8(0x0F);
                let mut acc = [_mm256_setzero_ps(); R];
                for (b, p) in w.iter().enumerate() {
                    for s in 0..G::SUBS {
                        ahead.fetch(b * G::SUBS + s);
                        let (dw, mw) = p.scales8(s);
                        let qs = p.nibbles(s);
                        let blk = b * G::SUBS + s;
                        let mut isum = [_mm256_setzero_si256(); R];
                        for t in 0..4 {
                            let q = _mm256_loadu_si256(qs.as_ptr().add(32 * t) as *const __m256i);
                            let lo = _mm256_and_si256(q, mask);
                            let hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), mask);
                            for r in 0..R {
                                let a = xs[r][blk].qs.as_ptr() as *const i32;
                                isum[r] = $step(
                                    isum[r],
                                    lo,
                                    _mm256_set1_epi32(a.add(t).read_unaligned()),
                                );
                                isum[r] = $step(
                                    isum[r],
                                    hi,
                                    _mm256_set1_epi32(a.add(t + 4).read_unaligned()),
                                );
                            }
                        }
                        for r in 0..R {
                            let y = &xs[r][blk];
                            let scale = _mm256_mul_ps(dw, _mm256_set1_ps(y.d));
                            let isum = $widen(isum[r]);
                            acc[r] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(isum), acc[r]);
                            acc[r] = _mm256_fmadd_ps(mw, _mm256_set1_ps(y.s), acc[r]);
                        }
                    }
                }
                for r in 0..R {
                    _mm256_storeu_ps(dst.add(r * stride), acc[r]);
                }
            }
        };
    }

    /// The VNNI kernels sum in 32 bits from the start.
    #[inline(always)]
    fn same(sums: __m256i) -> __m256i {
        sums
    }

    /// AVX2 without VNNI: `vpmaddubsw` gives each 16-bit lane a pair's sum (at most 2·15·128 = 3 840 in
    /// magnitude for 4-bit weights), so a block's eight steps add up in 16 bits without overflow (30 720), and
    /// [`widen_pairs`] widens them once per block.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C; that is the whole contract.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn pairs_avx2(part: __m256i, u: __m256i, s: __m256i) -> __m256i {
        _mm256_add_epi16(part, _mm256_maddubs_epi16(u, s))
    }

    /// One `vpmaddwd` per block and row widens [`pairs_avx2`]'s 16-bit sums: the integer sums are exactly the
    /// VNNI kernels', for a quarter of the widening multiplies of doing it step by step.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C; that is the whole contract.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn widen_pairs(part: __m256i) -> __m256i {
        _mm256_madd_epi16(part, _mm256_set1_epi16(1))
    }

    rows_kernel!(
        rows_avx512vnni,
        "avx2,fma,f16c,avx512vnni,avx512vl",
        dot_avx512vnni,
        same
    );
    rows_kernel!(rows_avxvnni, "avx2,fma,f16c,avxvnni", dot_avxvnni, same);
    rows_kernel!(rows_avx2, "avx2,fma,f16c", pairs_avx2, widen_pairs);

    /// Two weight groups at once on 512-bit vectors: lanes 0–7 are the first group's eight rows, lanes 8–15
    /// the second's, and every lane goes through exactly the 256-bit kernel's operations, so each output has
    /// the same bits as there (`vpdpbusd` on 512 bits does twice the multiply-adds per instruction).
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA, F16C and AVX-512 F, BW, VNNI and VL; `dst` is valid for writes of `R` rows of
    /// sixteen values, `stride` apart.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni,avx512vl")]
    pub unsafe fn rows_pair_avx512<G: Q4Group, const R: usize>(
        xs: [&[BlockQ8_1]; R],
        w: [&[G]; 2],
        ahead: Ahead,
        dst: *mut f32,
        stride: usize,
    ) {
        let mask = _mm512_set1_epi8(0x0F);
        let mut acc = [_mm512_setzero_ps(); R];
        for (b, (p0, p1)) in w[0].iter().zip(w[1]).enumerate() {
            for s in 0..G::SUBS {
                ahead.fetch(b * G::SUBS + s);
                let ((d0, m0), (d1, m1)) = (p0.scales8(s), p1.scales8(s));
                let (dw, mw) = (pair_ps(d0, d1), pair_ps(m0, m1));
                let (q0, q1) = (p0.nibbles(s), p1.nibbles(s));
                let blk = b * G::SUBS + s;
                let mut isum = [_mm512_setzero_si512(); R];
                for t in 0..4 {
                    let q = pair_bytes(q0.as_ptr().add(32 * t), q1.as_ptr().add(32 * t));
                    let lo = _mm512_and_si512(q, mask);
                    let hi = _mm512_and_si512(_mm512_srli_epi16(q, 4), mask);
                    for r in 0..R {
                        let a = xs[r][blk].qs.as_ptr() as *const i32;
                        isum[r] = _mm512_dpbusd_epi32(
                            isum[r],
                            lo,
                            _mm512_set1_epi32(a.add(t).read_unaligned()),
                        );
                        isum[r] = _mm512_dpbusd_epi32(
                            isum[r],
                            hi,
                            _mm512_set1_epi32(a.add(t + 4).read_unaligned()),
                        );
                    }
                }
                for r in 0..R {
                    let y = &xs[r][blk];
                    let scale = _mm512_mul_ps(dw, _mm512_set1_ps(y.d));
                    acc[r] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(isum[r]), acc[r]);
                    acc[r] = _mm512_fmadd_ps(mw, _mm512_set1_ps(y.s), acc[r]);
                }
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
    use crate::model::quant::q4_1::tests::random_blocks;
    use crate::model::quant::q4_1::vec_dot_scalar;
    use crate::model::quant::x8::{testing, QK_K};

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

    /// The two-group pass gives each group's bits, Q4_1 and Q4_K.
    #[test]
    fn group_pairs_give_single_group_bits() {
        let (n, k) = (16, 1536);
        testing::check_pairs(&pack(&random_blocks(n * k / QK, 5), n, k).unwrap());
        let (bytes, _, n, k) = q4_k_weight();
        testing::check_pairs(&pack_q4_k(&bytes, n, k).unwrap());
    }

    /// At the largest sums (every nibble 15 against activations of full magnitude, where a 16-bit
    /// accumulation would overflow if it held more than a block), every kernel's result is the block formula's
    /// with exact integer sums, and the SIMD kernels, which sum the same integers and do the same float steps,
    /// agree bit for bit.
    #[test]
    fn extreme_sums_are_exact_and_simd_kernels_agree_bit_for_bit() {
        let (n, k) = (16, 512);
        let mut w = random_blocks(n * k / QK, 9);
        for b in w.iter_mut().step_by(2) {
            b.qs = [0xFF; QK / 2];
        }
        let packed = pack(&w, n, k).unwrap();
        let (m, kb) = (5, k / QK);
        let x: Vec<f32> = (0..m * k)
            .map(|i| if (i / 7) % 3 == 0 { -1.0 } else { 1.0 })
            .collect();
        let mut simd: Vec<(Kernel, Vec<u32>)> = Vec::new();
        for kernel in Kernel::available() {
            let mut out = vec![0f32; m * n];
            packed.matmul_with(kernel, &x, m, &mut out);
            for r in 0..m {
                let mut xq = vec![BlockQ8_1::ZERO; kb];
                quantize_row_q8_1(&x[r * k..(r + 1) * k], &mut xq);
                for c in 0..n {
                    let want = vec_dot_scalar(&w[c * kb..(c + 1) * kb], &xq);
                    let got = out[r * n + c];
                    assert!(
                        (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                        "{kernel:?} ({r},{c}): {got} vs {want}"
                    );
                }
            }
            if !matches!(kernel, Kernel::Scalar) {
                simd.push((kernel, out.iter().map(|v| v.to_bits()).collect()));
            }
        }
        for (kernel, bits) in simd.iter().skip(1) {
            assert_eq!(bits, &simd[0].1, "{kernel:?} against {:?}", simd[0].0);
        }
    }

    #[test]
    fn widths_that_are_not_a_multiple_of_eight_are_not_packed() {
        assert!(pack(&random_blocks(12, 1), 12, 32).is_none());
    }

    fn q4_k_weight() -> (Vec<u8>, Vec<f32>, usize, usize) {
        testing::candle_weight(candle_core::quantized::GgmlDType::Q4K)
    }

    /// The repacked sub-blocks hold exactly the weights candle's dequantization gives.
    #[test]
    fn q4_k_repacking_keeps_every_weight() {
        let (bytes, deq, n, k) = q4_k_weight();
        let packed = pack_q4_k(&bytes, n, k).unwrap();
        for (gi, g) in packed.blocks_for_test().iter().enumerate() {
            let (group, sb) = (gi / (k / QK_K), gi % (k / QK_K));
            for s in 0..8 {
                for c in 0..ROWS {
                    let (d, m) = g.scales(s, c);
                    for j in 0..QK {
                        let (t, i) = ((j % 16) / 4, j % 4);
                        let byte = g.nibbles(s)[32 * t + 4 * c + i];
                        let q = if j < 16 { byte & 0x0F } else { byte >> 4 };
                        let want = deq[(group * ROWS + c) * k + sb * QK_K + s * QK + j];
                        assert_eq!(
                            d * q as f32 + m,
                            want,
                            "group {gi}, sub-block {s}, row {c}, value {j}"
                        );
                    }
                }
            }
        }
    }

    /// Every kernel, at several batch sizes, against the block formula in f64; a row alone gives its bits in a
    /// batch.
    #[test]
    fn q4_k_kernels_match_the_block_formula() {
        let (bytes, _, n, k) = q4_k_weight();
        let packed = pack_q4_k(&bytes, n, k).unwrap();
        let groups = packed.blocks_for_test();
        testing::check(&packed, |x, c| {
            let mut xq = vec![BlockQ8_1::ZERO; k / QK];
            quantize_row_q8_1(x, &mut xq);
            let mut sum = 0f64;
            for (b, y) in xq.iter().enumerate() {
                let g = &groups[(c / ROWS) * (k / QK_K) + b / 8];
                let (d, m) = g.scales(b % 8, c % ROWS);
                let mut isum = 0i64;
                for j in 0..QK {
                    let (t, i) = ((j % 16) / 4, j % 4);
                    let byte = g.nibbles(b % 8)[32 * t + 4 * (c % ROWS) + i];
                    let q = if j < 16 { byte & 0x0F } else { byte >> 4 };
                    isum += q as i64 * y.qs[j] as i64;
                }
                sum += d as f64 * y.d as f64 * isum as f64 + m as f64 * y.s as f64;
            }
            sum as f32
        });
    }
}
