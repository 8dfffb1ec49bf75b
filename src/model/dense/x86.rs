//! The x86 micro-kernels of [`super`]: AVX-512F and AVX2 + FMA, each over f32, f16 or bf16 weights.

use super::{Elem, WeightElem};
use std::arch::x86_64::*;

/// Sixteen weights from `p` as f32 lanes (f16 and bf16 widened exactly).
macro_rules! load16 {
    ($w:ty, $p:expr) => {
        match <$w as WeightElem>::KIND {
            Elem::F32 => _mm512_loadu_ps($p as *const f32),
            Elem::F16 => _mm512_cvtph_ps(_mm256_loadu_si256($p as *const __m256i)),
            Elem::Bf16 => _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(
                _mm256_loadu_si256($p as *const __m256i),
            ))),
        }
    };
}

/// Eight weights from `p` as f32 lanes.
macro_rules! load8 {
    ($w:ty, $p:expr) => {
        match <$w as WeightElem>::KIND {
            Elem::F32 => _mm256_loadu_ps($p as *const f32),
            Elem::F16 => _mm256_cvtph_ps(_mm_loadu_si128($p as *const __m128i)),
            Elem::Bf16 => _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(
                _mm_loadu_si128($p as *const __m128i),
            ))),
        }
    };
}

/// Scalar tail and bias after a row's horizontal sum; shared so every kernel finishes the same way.
///
/// # Safety
/// `x` and `w` are valid for reads of elements `from .. k`, and `b` is null or valid for a read of one value.
#[inline(always)]
unsafe fn finish<W: WeightElem>(
    mut s: f32,
    x: *const f32,
    w: *const W,
    from: usize,
    k: usize,
    b: *const f32,
) -> f32 {
    for j in from..k {
        s += *x.add(j) * (*w.add(j)).to_f32();
    }
    if !b.is_null() {
        s += *b;
    }
    s
}

/// AVX-512F micro-kernel; see [`super::rows_scalar`] for the arguments.
///
/// # Safety
/// The CPU must have AVX-512F; the pointers are as [`super::rows_scalar`] requires.
#[target_feature(enable = "avx512f")]
pub unsafe fn rows_avx512<W: WeightElem, const R: usize, const C: usize>(
    x: *const f32,
    w: *const W,
    k: usize,
    b: *const f32,
    dst: *mut f32,
    stride: usize,
) {
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    let main = k - k % 16;
    let mut i = 0;
    while i < main {
        let mut wv = [_mm512_setzero_ps(); C];
        for (c, v) in wv.iter_mut().enumerate() {
            *v = load16!(W, w.add(c * k + i));
            // The same line of the next group's rows, so memory streams while this group computes (a
            // hint: it never faults, and past the end of the weight it is wasted, not wrong).
            _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add((C + c) * k + i) as *const i8);
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            let xv = _mm512_loadu_ps(x.add(r * k + i));
            for (a, &wv) in acc.iter_mut().zip(&wv) {
                *a = _mm512_fmadd_ps(xv, wv, *a);
            }
        }
        i += 16;
    }
    for (r, acc) in acc.iter().enumerate() {
        for (c, &a) in acc.iter().enumerate() {
            // Fixed tree: 16 → 8 → 4 → 2 → 1 lanes.
            let h = _mm256_add_ps(
                _mm512_castps512_ps256(a),
                _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(a))),
            );
            let s = hsum256(h);
            let bc = if b.is_null() { b } else { b.add(c) };
            *dst.add(r * stride + c) = finish(s, x.add(r * k), w.add(c * k), main, k, bc);
        }
    }
}

/// 8 → 4 → 2 → 1 lanes.
///
/// # Safety
/// The CPU must have AVX (the callers are the AVX2 and AVX-512F kernels).
#[inline(always)]
unsafe fn hsum256(h: __m256) -> f32 {
    let q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h));
    let d = _mm_add_ps(q, _mm_movehl_ps(q, q));
    let s = _mm_add_ss(d, _mm_shuffle_ps::<0b01>(d, d));
    _mm_cvtss_f32(s)
}

/// AVX2 + FMA micro-kernel; see [`super::rows_scalar`] for the arguments.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; the pointers are as [`super::rows_scalar`] requires.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn rows_avx2<W: WeightElem, const R: usize, const C: usize>(
    x: *const f32,
    w: *const W,
    k: usize,
    b: *const f32,
    dst: *mut f32,
    stride: usize,
) {
    let mut acc = [[_mm256_setzero_ps(); C]; R];
    let main = k - k % 8;
    let mut i = 0;
    while i < main {
        let mut wv = [_mm256_setzero_ps(); C];
        for (c, v) in wv.iter_mut().enumerate() {
            *v = load8!(W, w.add(c * k + i));
            // The same line of the next group's rows, so memory streams while this group computes (a
            // hint: it never faults, and past the end of the weight it is wasted, not wrong).
            _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add((C + c) * k + i) as *const i8);
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            let xv = _mm256_loadu_ps(x.add(r * k + i));
            for (a, &wv) in acc.iter_mut().zip(&wv) {
                *a = _mm256_fmadd_ps(xv, wv, *a);
            }
        }
        i += 8;
    }
    for (r, acc) in acc.iter().enumerate() {
        for (c, &a) in acc.iter().enumerate() {
            let s = hsum256(a);
            let bc = if b.is_null() { b } else { b.add(c) };
            *dst.add(r * stride + c) = finish(s, x.add(r * k), w.add(c * k), main, k, bc);
        }
    }
}
