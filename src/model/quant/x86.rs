//! x86 integer dot-product steps shared by the interleaved kernels: `acc += Σ₄ u·s` in each 32-bit lane, for
//! unsigned bytes `u` and signed bytes `s`.

use std::arch::x86_64::*;

/// `vpdpbusd` with AVX-512 VNNI on 256-bit vectors.
///
/// # Safety
/// The CPU must have AVX2, FMA, F16C, AVX-512 VNNI and AVX-512 VL; that is the whole contract.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
pub unsafe fn dot_avx512vnni(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(acc, u, s)
}

/// `vpdpbusd` with AVX-VNNI.
///
/// # Safety
/// The CPU must have AVX2, FMA, F16C and AVX-VNNI; that is the whole contract.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
pub unsafe fn dot_avxvnni(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
    _mm256_dpbusd_avx_epi32(acc, u, s)
}

/// AVX2 without VNNI: byte pairs into i16, then pairs into i32. Exact only while a pair's sum fits i16, i.e.
/// for `u < 128` (4-bit weights: at most 2·15·128).
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; that is the whole contract (`u < 128` is for exactness, not safety).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_avx2_u8(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
    let p = _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
    _mm256_add_epi32(acc, p)
}

/// Two 256-bit float vectors as one 512-bit vector (`lo` in lanes 0–7): the two weight groups' per-row
/// values side by side in the two-group kernels.
///
/// # Safety
/// The CPU must have AVX-512F; that is the whole contract.
#[inline]
#[target_feature(enable = "avx512f")]
pub unsafe fn pair_ps(lo: __m256, hi: __m256) -> __m512 {
    _mm512_castpd_ps(_mm512_insertf64x4::<1>(
        _mm512_castpd256_pd512(_mm256_castps_pd(lo)),
        _mm256_castps_pd(hi),
    ))
}

/// 32 bytes from `lo` and 32 from `hi` as one 512-bit vector.
///
/// # Safety
/// The CPU must have AVX-512F, and `lo` and `hi` are each valid for reads of 32 bytes (no alignment needed).
#[inline]
#[target_feature(enable = "avx512f")]
pub unsafe fn pair_bytes(lo: *const u8, hi: *const u8) -> __m512i {
    _mm512_inserti64x4::<1>(
        _mm512_castsi256_si512(_mm256_loadu_si256(lo as *const __m256i)),
        _mm256_loadu_si256(hi as *const __m256i),
    )
}

/// Instantiates a format's `rows_kernel!` (name, target features, byte multiply-add) as `rows_avx512vnni`,
/// `rows_avxvnni` and `rows_avx2`, for weights that are unsigned bytes below 128.
macro_rules! unsigned_rows_kernels {
    ($kernel:ident) => {
        $kernel!(
            rows_avx512vnni,
            "avx2,fma,f16c,avx512vnni,avx512vl",
            dot_avx512vnni
        );
        $kernel!(rows_avxvnni, "avx2,fma,f16c,avxvnni", dot_avxvnni);
        $kernel!(rows_avx2, "avx2,fma,f16c", dot_avx2_u8);
    };
}
pub(crate) use unsigned_rows_kernels;
