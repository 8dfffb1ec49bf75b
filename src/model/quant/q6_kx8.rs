//! Q6_K weights interleaved eight rows at a time (see [`super::x8`]).
//!
//! A Q6_K super-block holds 256 weights `d·sc·(q − 32)`: f16 `d`, one signed 8-bit `sc` per 16 weights, 6-bit
//! `q`. Repacked, a 32-value block of eight rows is 128 bytes of low nibbles (laid out as Q4_1's, see
//! [`super::q4_1x8`]) and 64 bytes of high bit pairs; the kernel rebuilds each `q` (0..63, a valid unsigned
//! operand of the byte multiply-add) with a shift, a mask and an or, and dots eight rows at once; the two
//! 16-value halves keep their own scales. Activations are quantized per 32 values (llama.cpp's Q8_0 rounding)
//! with the sums of each half, which take the `−32` offset back out exactly: `Σ(q − 32)·y = Σq·y − 32·Σy`.
//! 6.6 bits a weight in memory, as in the file.

use half::f16;

use super::x8::{dispatch_rows, k_quant_groups, Ahead, Format, Interleaved, Kernel, QK_K, ROWS};
use super::QK;

/// The size of a Q6_K super-block in a GGUF file.
const Q6_K_BYTES: usize = 210;

/// Super-block `b` of eight consecutive rows.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Q6KGroup {
    d: [f16; ROWS],
    /// `sc[2i + h][c]`: the scale of half `h` of 32-value block `i`, row `c`.
    sc: [[i8; ROWS]; 16],
    /// Low nibbles of block `i`: byte `32t + 4c + j` holds weight `4t + j` of row `c` (low) and weight
    /// `16 + 4t + j` (high).
    nib: [[u8; ROWS * QK / 2]; 8],
    /// High bit pairs of block `i`: bits `2u, 2u + 1` of byte `32h + 4c + j` are bits 4 and 5 of weight
    /// `16h + 4u + j` of row `c`.
    high: [[u8; ROWS * QK / 4]; 8],
}

impl Q6KGroup {
    /// `q` (0..63) of weight `v` (0..32) of block `i`, row `c`.
    fn q(&self, i: usize, c: usize, v: usize) -> u8 {
        let (half, u, j) = (v / 16, (v % 16) / 4, v % 4);
        let nib = self.nib[i][32 * u + 4 * c + j] >> (4 * half) & 0x0F;
        let high = self.high[i][32 * half + 4 * c + j] >> (2 * u) & 0x03;
        nib | high << 4
    }
}

/// Activations quantized per 32 values, with the sums of the two 16-value halves.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ActHalves {
    d: f32,
    sums: [i32; 2],
    qs: [i8; QK],
}

impl ActHalves {
    const ZERO: Self = Self {
        d: 0.0,
        sums: [0; 2],
        qs: [0; QK],
    };
}

/// The Q6_K interleaved format.
pub enum Q6Kx8 {}

/// Repacks the Q6_K bytes of an `[n, k]` weight (row-major super-blocks: 128 bytes of low nibbles, 64 of
/// high bit pairs, 16 signed scales, f16 `d`); `None` when `n` is not a multiple of eight or `k` of 256.
pub fn pack(bytes: &[u8], n: usize, k: usize) -> Option<Interleaved<Q6Kx8>> {
    let groups = k_quant_groups(bytes, n, k, Q6_K_BYTES, |blk| {
        let mut p = Q6KGroup {
            d: std::array::from_fn(|c| f16::from_le_bytes([blk(c)[208], blk(c)[209]])),
            sc: std::array::from_fn(|s| std::array::from_fn(|c| blk(c)[192 + s] as i8)),
            nib: [[0; ROWS * QK / 2]; 8],
            high: [[0; ROWS * QK / 4]; 8],
        };
        for i in 0..8 {
            for c in 0..ROWS {
                for v in 0..QK {
                    let q = q6_k_value(blk(c), 32 * i + v);
                    let (half, u, j) = (v / 16, (v % 16) / 4, v % 4);
                    p.nib[i][32 * u + 4 * c + j] |= (q & 0x0F) << (4 * half);
                    p.high[i][32 * half + 4 * c + j] |= (q >> 4) << (2 * u);
                }
            }
        }
        p
    })?;
    Some(Interleaved::new(groups, n.next_multiple_of(ROWS), k))
}

/// The 6-bit `q` (0..63) of weight `v` of a Q6_K super-block, as ggml lays them out: each 128-weight half
/// takes 64 bytes of low nibbles and 32 of high bit pairs.
fn q6_k_value(blk: &[u8], v: usize) -> u8 {
    let (half, which, l) = (v / 128, (v % 128) / 32, v % 32);
    let low = blk[half * 64 + l + (which & 1) * 32] >> ((which >> 1) * 4) & 0x0F;
    let high = blk[128 + half * 32 + l] >> (which * 2) & 0x03;
    low | high << 4
}

/// The scale index (0..16) of weight `v` of a super-block.
#[cfg(test)]
fn q6_k_scale_index(v: usize) -> usize {
    let (half, which, l) = (v / 128, (v % 128) / 32, v % 32);
    half * 8 + which * 2 + l / 16
}

/// Quantizes activations per 32 values as llama.cpp's Q8_0 does (halves rounded away from zero, the scale
/// rounded to f16), keeping the sums of each half.
fn quantize(x: &[f32], out: &mut [ActHalves]) {
    for (xb, ob) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        for (q, v) in ob.qs.iter_mut().zip(xb) {
            *q = (v * id).round() as i8;
        }
        ob.d = f16::from_f32(d).to_f32();
        for h in 0..2 {
            ob.sums[h] = ob.qs[16 * h..16 * h + 16].iter().map(|&q| q as i32).sum();
        }
    }
}

impl Format for Q6Kx8 {
    const VALUES: usize = QK_K;
    type Block = Q6KGroup;
    type Act = ActHalves;
    const ZERO_ACT: ActHalves = ActHalves::ZERO;
    /// The kernels fetch ahead at each of a block's eight 32-value parts.
    const FETCH_STEPS: usize = 8;

    fn quantize_acts(x: &[f32], out: &mut [ActHalves]) {
        quantize(x, out)
    }

    unsafe fn rows<const R: usize>(
        kernel: Kernel,
        xs: [&[ActHalves]; R],
        w: &[Q6KGroup],
        ahead: Ahead,
        dst: *mut f32,
        stride: usize,
    ) {
        dispatch_rows!(kernel, xs, w, ahead, dst, stride)
    }

    #[cfg(target_arch = "x86_64")]
    unsafe fn rows_pair_avx512<const R: usize>(
        xs: [&[ActHalves]; R],
        w: [&[Q6KGroup]; 2],
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
unsafe fn rows_scalar(x: &[ActHalves], w: &[Q6KGroup], dst: *mut f32) {
    let mut acc = [0f32; ROWS];
    for (b, p) in w.iter().enumerate() {
        for i in 0..8 {
            let y = &x[8 * b + i];
            for (c, a) in acc.iter_mut().enumerate() {
                let mut isum = [0i32; 2];
                for v in 0..QK {
                    isum[v / 16] += p.q(i, c, v) as i32 * y.qs[v] as i32;
                }
                for (h, (sum, ysum)) in isum.iter().zip(y.sums).enumerate() {
                    let scale = p.d[c].to_f32() * p.sc[2 * i + h][c] as f32 * y.d;
                    *a += scale * (sum - 32 * ysum) as f32;
                }
            }
        }
    }
    std::ptr::copy_nonoverlapping(acc.as_ptr(), dst, ROWS);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{ActHalves, Q6KGroup};
    use crate::model::quant::x8::Ahead;
    use crate::model::quant::x86::{
        dot_avx2_u8, dot_avx512vnni, dot_avxvnni, pair_bytes, pair_ps, unsigned_rows_kernels,
    };
    use std::arch::x86_64::*;

    /// Generates the kernel for `R` activation rows against one weight group, `$dot` being the
    /// `acc += Σ₄ u8·i8` step per 32-bit lane (valid for weights below 64: at most 2·63·128 per pair).
    macro_rules! rows_kernel {
        ($name:ident, $features:literal, $dot:ident) => {
            /// Writes `dst[r * stride + c]`, `c < 8`, for the `R` activation rows `xs` against the weight group
            /// `w`, fetching `ahead` as it goes: `Format::rows` for one instruction set.
            ///
            /// # Safety
            /// The CPU must have the target features this instance is generated with: AVX2, FMA and F16C, and for
            /// the VNNI kernels AVX-512 VNNI and VL, or AVX-VNNI. `dst` is valid for writes of `R` rows of eight
            /// values, `stride` apart.
            #[target_feature(enable = $features)]
            pub unsafe fn $name<const R: usize>(
                xs: [&[ActHalves]; R],
                w: &[Q6KGroup],
                ahead: Ahead,
                dst: *mut f32,
                stride: usize,
            ) {
                let mut acc = [_mm256_setzero_ps(); R];
                for (b, p) in w.iter().enumerate() {
                    let d = _mm256_cvtph_ps(_mm_loadu_si128(p.d.as_ptr() as *const __m128i));
                    let (m4, m2) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(0x03));
                    for i in 0..8 {
                        ahead.fetch(b * 8 + i);
                        let mut isum = [[_mm256_setzero_si256(); R]; 2];
                        let high = [
                            _mm256_loadu_si256(p.high[i].as_ptr() as *const __m256i),
                            _mm256_loadu_si256(p.high[i].as_ptr().add(32) as *const __m256i),
                        ];
                        for u in 0..4 {
                            let n =
                                _mm256_loadu_si256(p.nib[i].as_ptr().add(32 * u) as *const __m256i);
                            let shift = _mm_cvtsi32_si128(2 * u as i32);
                            let lows = [
                                _mm256_and_si256(n, m4),
                                _mm256_and_si256(_mm256_srli_epi16(n, 4), m4),
                            ];
                            for (h, &low) in lows.iter().enumerate() {
                                let top = _mm256_and_si256(_mm256_srl_epi16(high[h], shift), m2);
                                let q = _mm256_or_si256(low, _mm256_slli_epi16(top, 4));
                                for r in 0..R {
                                    let a = xs[r][8 * b + i].qs.as_ptr() as *const i32;
                                    let a = _mm256_set1_epi32(a.add(4 * h + u).read_unaligned());
                                    isum[h][r] = $dot(isum[h][r], q, a);
                                }
                            }
                        }
                        for h in 0..2 {
                            let sc = _mm_loadl_epi64(p.sc[2 * i + h].as_ptr() as *const __m128i);
                            let dsc =
                                _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(sc)));
                            for r in 0..R {
                                let y = &xs[r][8 * b + i];
                                let offset = _mm256_set1_epi32(32 * y.sums[h]);
                                let exact = _mm256_sub_epi32(isum[h][r], offset);
                                let scale = _mm256_mul_ps(dsc, _mm256_set1_ps(y.d));
                                acc[r] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(exact), acc[r]);
                            }
                        }
                    }
                }
                for r in 0..R {
                    _mm256_storeu_ps(dst.add(r * stride), acc[r]);
                }
            }
        };
    }

    unsigned_rows_kernels!(rows_kernel);

    /// Two weight groups at once on 512-bit vectors, lanes 0–7 the first group's rows and 8–15 the
    /// second's, each lane through exactly the 256-bit kernel's operations (so the same bits).
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA, F16C and AVX-512 F, BW, VNNI and VL; `dst` is valid for writes of `R` rows of
    /// sixteen values, `stride` apart.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni,avx512vl")]
    pub unsafe fn rows_pair_avx512<const R: usize>(
        xs: [&[ActHalves]; R],
        w: [&[Q6KGroup]; 2],
        ahead: Ahead,
        dst: *mut f32,
        stride: usize,
    ) {
        let (m4, m2) = (_mm512_set1_epi8(0x0F), _mm512_set1_epi8(0x03));
        let mut acc = [_mm512_setzero_ps(); R];
        for (b, (p0, p1)) in w[0].iter().zip(w[1]).enumerate() {
            let half_d =
                |p: &Q6KGroup| _mm256_cvtph_ps(_mm_loadu_si128(p.d.as_ptr() as *const __m128i));
            let d = pair_ps(half_d(p0), half_d(p1));
            for i in 0..8 {
                ahead.fetch(b * 8 + i);
                let mut isum = [[_mm512_setzero_si512(); R]; 2];
                let high = [
                    pair_bytes(p0.high[i].as_ptr(), p1.high[i].as_ptr()),
                    pair_bytes(p0.high[i].as_ptr().add(32), p1.high[i].as_ptr().add(32)),
                ];
                for u in 0..4 {
                    let n = pair_bytes(
                        p0.nib[i].as_ptr().add(32 * u),
                        p1.nib[i].as_ptr().add(32 * u),
                    );
                    let shift = _mm_cvtsi32_si128(2 * u as i32);
                    let lows = [
                        _mm512_and_si512(n, m4),
                        _mm512_and_si512(_mm512_srli_epi16(n, 4), m4),
                    ];
                    for (h, &low) in lows.iter().enumerate() {
                        let top = _mm512_and_si512(_mm512_srl_epi16(high[h], shift), m2);
                        let q = _mm512_or_si512(low, _mm512_slli_epi16(top, 4));
                        for r in 0..R {
                            let a = xs[r][8 * b + i].qs.as_ptr() as *const i32;
                            let a = _mm512_set1_epi32(a.add(4 * h + u).read_unaligned());
                            isum[h][r] = _mm512_dpbusd_epi32(isum[h][r], q, a);
                        }
                    }
                }
                for h in 0..2 {
                    let sc = |p: &Q6KGroup| {
                        let sc = _mm_loadl_epi64(p.sc[2 * i + h].as_ptr() as *const __m128i);
                        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(sc))
                    };
                    let dsc = _mm512_mul_ps(d, pair_ps(sc(p0), sc(p1)));
                    for r in 0..R {
                        let y = &xs[r][8 * b + i];
                        let offset = _mm512_set1_epi32(32 * y.sums[h]);
                        let exact = _mm512_sub_epi32(isum[h][r], offset);
                        let scale = _mm512_mul_ps(dsc, _mm512_set1_ps(y.d));
                        acc[r] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(exact), acc[r]);
                    }
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
    use crate::model::quant::x8::{testing, Kernel, ROWS};

    fn weight() -> (Vec<u8>, Vec<f32>, usize, usize) {
        testing::candle_weight(candle_core::quantized::GgmlDType::Q6K)
    }

    /// The repacked bytes and scales hold exactly the weights candle's dequantization gives.
    #[test]
    fn repacking_keeps_every_weight() {
        let (bytes, deq, n, k) = weight();
        let packed = pack(&bytes, n, k).unwrap();
        for (gi, g) in packed.blocks_for_test().iter().enumerate() {
            let (group, sb) = (gi / (k / QK_K), gi % (k / QK_K));
            for c in 0..ROWS {
                for v in 0..QK_K {
                    let (i, j) = (v / QK, v % QK);
                    let q = g.q(i, c, j) as i32;
                    let sc = g.sc[2 * i + j / 16][c];
                    assert_eq!(sc, g.sc[q6_k_scale_index(v)][c], "scale layout");
                    let w = g.d[c].to_f32() * sc as f32 * (q - 32) as f32;
                    let want = deq[(group * ROWS + c) * k + sb * QK_K + v];
                    assert_eq!(w, want, "group {gi}, row {c}, weight {v}");
                }
            }
        }
    }

    /// Every kernel, at several batch sizes, against the dequantized weights dotted in f64 with the quantized
    /// activations; a row alone gives its bits in a batch.
    /// The two-group pass gives each group's bits.
    #[test]
    fn group_pairs_give_single_group_bits() {
        let (bytes, _, n, k) = weight();
        testing::check_pairs(&pack(&bytes, n, k).unwrap());
    }

    #[test]
    fn kernels_match_the_dequantized_weights() {
        let (bytes, deq, n, k) = weight();
        testing::check(&pack(&bytes, n, k).unwrap(), |x, c| {
            let mut xq = vec![ActHalves::ZERO; k / QK];
            quantize(x, &mut xq);
            let mut sum = 0f64;
            for (b, y) in xq.iter().enumerate() {
                for j in 0..QK {
                    sum += deq[c * k + b * QK + j] as f64 * (y.d * y.qs[j] as f32) as f64;
                }
            }
            sum as f32
        });
    }

    /// At the largest sums (every weight 63 against activations of full magnitude, where a 16-bit
    /// accumulation of more than two steps would overflow), every kernel is within rounding of the f64 sum, and
    /// the SIMD kernels, which sum the same integers with the same float steps, agree bit for bit.
    #[test]
    fn extreme_sums_are_exact_and_simd_kernels_agree_bit_for_bit() {
        let (mut bytes, _, n, k) = weight();
        for blk in bytes.chunks_exact_mut(Q6_K_BYTES) {
            blk[..192].fill(0xFF); // the low nibbles and the high bits: every weight 63
        }
        let packed = pack(&bytes, n, k).unwrap();
        let groups = packed.blocks_for_test();
        let weight_at = |row: usize, col: usize| {
            let g = &groups[row / ROWS * (k / QK_K) + col / QK_K];
            let (c, v) = (row % ROWS, col % QK_K);
            let q = g.q(v / QK, c, v % QK) as i32;
            g.d[c].to_f32() * g.sc[q6_k_scale_index(v)][c] as f32 * (q - 32) as f32
        };
        testing::check(&packed, |x, c| {
            let mut xq = vec![ActHalves::ZERO; k / QK];
            quantize(x, &mut xq);
            let mut sum = 0f64;
            for (b, y) in xq.iter().enumerate() {
                for j in 0..QK {
                    sum += weight_at(c, b * QK + j) as f64 * (y.d * y.qs[j] as f32) as f64;
                }
            }
            sum as f32
        });
        let m = 3;
        let x: Vec<f32> = (0..m * k)
            .map(|i| if (i / 5) % 3 == 0 { -1.0 } else { 1.0 })
            .collect();
        let simd: Vec<(Kernel, Vec<u32>)> = Kernel::available()
            .into_iter()
            .filter(|kernel| !matches!(kernel, Kernel::Scalar))
            .map(|kernel| {
                let mut out = vec![0f32; m * n];
                packed.matmul_with(kernel, &x, m, &mut out);
                (kernel, out.iter().map(|v| v.to_bits()).collect())
            })
            .collect();
        for (kernel, bits) in simd.iter().skip(1) {
            assert_eq!(bits, &simd[0].1, "{kernel:?} against {:?}", simd[0].0);
        }
    }

    #[test]
    fn widths_that_are_not_whole_groups_are_padded_with_zero_rows() {
        let (bytes, _, n, k) = weight();
        let (full, part) = (pack(&bytes, n, k).unwrap(), 13);
        let short = pack(&bytes[..part * k / QK_K * Q6_K_BYTES], part, k).unwrap();
        assert_eq!(short.n(), 16);
        let m = 3;
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0)
            .collect();
        let (mut a, mut b) = (vec![0f32; m * n], vec![0f32; m * 16]);
        full.matmul(&x, m, &mut a);
        short.matmul(&x, m, &mut b);
        for r in 0..m {
            assert_eq!(a[r * n..r * n + part], b[r * 16..r * 16 + part], "row {r}");
            assert!(
                b[r * 16 + part..(r + 1) * 16].iter().all(|&v| v == 0.0),
                "padding rows are zero"
            );
        }
        assert!(
            pack(&bytes[..100], 1, k).is_none(),
            "bytes that are not the weight's"
        );
    }
}
