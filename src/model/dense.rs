//! rill's own CPU kernel for small-batch float linears: `y = x · Wᵀ (+ b)` with `W` stored `[out, in]` in f32,
//! f16 or bf16 (half-width weights are widened to f32 as they are loaded, which is exact, so a half weight gives
//! the bits its f32 copy would, from half the memory traffic), activations and sums in f32.
//!
//! candle's f32 matmul goes through the `gemm` crate, which packs its operands for every call and is tuned for
//! large products; a decode step multiplies a handful of activation rows by weights far bigger than the cache,
//! so the product is bound by reading the weights. Here output columns are split into tiles across rill's
//! worker pool, and within a tile a few weight rows at a time are read once and dotted with every activation
//! row while they are in cache: four activation rows against four weight rows (AVX-512) or two (AVX2), one
//! vector accumulator per pair, with the horizontal sums at the end.
//!
//! Every output is computed by the same instructions whatever the batch size or the row's place in it: lane-wise
//! fused multiply-adds over the input in order, the same horizontal-sum tree, a scalar tail for an input width
//! that is not a multiple of the vector width, then the bias. So a sequence's result does not depend on what it
//! is batched with.

use candle_core::{CpuStorage, DType, Device, Result, Storage, Tensor};
use half::{bf16, f16};
use std::ops::Range;

use super::qlinear::with_f32_rows;

/// Output columns per unit of parallel work.
const COL_TILE: usize = 16;
/// Activation rows that share one pass over a group of weight rows.
const ROW_TILE: usize = 4;

/// The instruction set used for the multiply-adds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// AVX-512F: 16 lanes, four weight rows per group.
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// AVX2 with FMA (and F16C): 8 lanes, two weight rows per group.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// Portable code: 8 lanes emulated, two weight rows per group.
    Scalar,
}

impl Kernel {
    /// The fastest kernel this CPU runs (cached after the first call).
    pub fn detect() -> Self {
        static BEST: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| Self::available()[0])
    }

    /// Every kernel this CPU runs, fastest first.
    pub fn available() -> Vec<Self> {
        #[allow(unused_mut)]
        let mut out = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let cap = crate::model::kernel_cap();
            if has!("avx512f") && cap >= 2 {
                out.push(Self::Avx512);
            }
            if has!("avx2") && has!("fma") && has!("f16c") && cap >= 1 {
                out.push(Self::Avx2);
            }
        }
        out.push(Self::Scalar);
        out
    }

    /// Weight rows per group (the micro-kernel's width).
    fn cols(self) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Self::Avx512 => 4,
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => 2,
            Self::Scalar => 2,
        }
    }
}

/// A weight element type the kernels read: f32, or f16 / bf16 widened exactly as loaded.
pub trait WeightElem: Copy + Send + Sync + 'static {
    const KIND: Elem;
    fn to_f32(self) -> f32;
}

/// Which [`WeightElem`] (a constant the kernels branch on at compile time).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Elem {
    F32,
    F16,
    Bf16,
}

impl WeightElem for f32 {
    const KIND: Elem = Elem::F32;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
}

impl WeightElem for f16 {
    const KIND: Elem = Elem::F16;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}

impl WeightElem for bf16 {
    const KIND: Elem = Elem::Bf16;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
}

/// A float linear layer on the CPU: weight `[n, k]` (out, in) in f32, f16 or bf16, optional bias `[n]`.
///
/// The weight is kept as a tensor, so a weight shared with something else (GPT-2's output head is its token
/// embedding table) is not copied.
pub struct Dense {
    w: Tensor,
    b: Option<Vec<f32>>,
    n: usize,
    k: usize,
}

impl Dense {
    /// `w`: `[out, in]` on the CPU, kept in its own type when that is f32, f16 or bf16 (any other becomes f32),
    /// made contiguous if it is not; `b`: `[out]`.
    pub fn new(w: Tensor, b: Option<&Tensor>) -> Result<Self> {
        if !matches!(w.device(), Device::Cpu) {
            candle_core::bail!("Dense: the weight must be on the CPU");
        }
        let (n, k) = w.dims2()?;
        let w = match w.dtype() {
            DType::F32 | DType::F16 | DType::BF16 => w,
            _ => w.to_dtype(DType::F32)?,
        }
        .contiguous()?;
        let b = match b {
            Some(b) => {
                let b = b.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
                if b.len() != n {
                    candle_core::bail!("Dense: bias of {} for {n} outputs", b.len());
                }
                Some(b)
            }
            None => None,
        };
        Ok(Self { w, b, n, k })
    }

    /// From a `[in, out]` weight (GPT-2's Conv1D), transposed once.
    pub fn from_in_out(w: &Tensor, b: Option<&Tensor>) -> Result<Self> {
        Self::new(w.t()?.contiguous()?, b)
    }

    /// Output width.
    pub fn out_dim(&self) -> usize {
        self.n
    }

    /// Input width.
    pub fn in_dim(&self) -> usize {
        self.k
    }

    /// The weight's element type.
    pub fn dtype(&self) -> DType {
        self.w.dtype()
    }

    /// `x`: `[rows, in]` → `[rows, out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, None)
    }

    /// [`Self::forward`] followed by `post` over each finished run of outputs (an element-wise activation),
    /// applied by the worker that computed them while they are in cache.
    pub fn forward_with(&self, x: &Tensor, post: Option<&Post>) -> Result<Tensor> {
        let (m, k) = x.dims2()?;
        if k != self.k {
            candle_core::bail!(
                "dense linear: input width {k} does not match the weight's {}",
                self.k
            );
        }
        let mut dst = vec![0f32; m * self.n];
        with_f32_rows(x, |xs| {
            self.matmul_post(Kernel::detect(), xs, m, &mut dst, post)
        })?;
        Tensor::from_vec(dst, (m, self.n), x.device())
    }

    /// `dst[r, c] = x[r] · w[c] + b[c]` for `m` activation rows of `k`.
    pub fn matmul(&self, x: &[f32], m: usize, dst: &mut [f32]) {
        self.matmul_with(Kernel::detect(), x, m, dst)
    }

    /// [`Self::matmul`] with a given kernel (tests compare them all).
    pub fn matmul_with(&self, kernel: Kernel, x: &[f32], m: usize, dst: &mut [f32]) {
        self.matmul_post(kernel, x, m, dst, None)
    }

    /// Units of parallel work: tiles of output columns.
    pub fn tiles(&self) -> usize {
        self.n.div_ceil(COL_TILE)
    }

    /// [`tiles_into`] for this weight and its bias with the detected kernel: the columns of `tiles`
    /// ([`tile_cols`]) for `m` activation rows `x`, row `r` at `dst[r * ld ..]`.
    ///
    /// # Safety
    /// `dst` must be valid for those writes by this thread alone.
    pub unsafe fn tiles_into(
        &self,
        x: &[f32],
        m: usize,
        tiles: Range<usize>,
        dst: *mut f32,
        ld: usize,
    ) {
        assert!(x.len() == m * self.k && tiles.end <= self.tiles());
        let (storage, layout) = self.w.storage_and_layout();
        let Some((s, e)) = layout.contiguous_offsets() else {
            unreachable!("made contiguous in new")
        };
        let (b, k, n, kernel) = (self.b.as_deref(), self.k, self.n, Kernel::detect());
        match &*storage {
            Storage::Cpu(CpuStorage::F32(v)) => {
                tiles_into(kernel, x, m, k, &v[s..e], n, b, tiles, dst, ld)
            }
            Storage::Cpu(CpuStorage::F16(v)) => {
                tiles_into(kernel, x, m, k, &v[s..e], n, b, tiles, dst, ld)
            }
            Storage::Cpu(CpuStorage::BF16(v)) => {
                tiles_into(kernel, x, m, k, &v[s..e], n, b, tiles, dst, ld)
            }
            _ => unreachable!("an f32, f16 or bf16 CPU weight, as made in new"),
        }
    }

    fn matmul_post(
        &self,
        kernel: Kernel,
        x: &[f32],
        m: usize,
        dst: &mut [f32],
        post: Option<&Post>,
    ) {
        let (storage, layout) = self.w.storage_and_layout();
        let Some((s, e)) = layout.contiguous_offsets() else {
            unreachable!("made contiguous in new")
        };
        let (b, k, n) = (self.b.as_deref(), self.k, self.n);
        match &*storage {
            Storage::Cpu(CpuStorage::F32(v)) => matmul(kernel, x, m, k, &v[s..e], n, b, dst, post),
            Storage::Cpu(CpuStorage::F16(v)) => matmul(kernel, x, m, k, &v[s..e], n, b, dst, post),
            Storage::Cpu(CpuStorage::BF16(v)) => matmul(kernel, x, m, k, &v[s..e], n, b, dst, post),
            _ => unreachable!("an f32, f16 or bf16 CPU weight, as made in new"),
        }
    }
}

/// An element-wise function applied in place to finished outputs.
pub type Post = dyn Fn(&mut [f32]) + Sync;

/// `dst[r, c] = x[r] · w[c] (+ b[c])` for activations `x` (`m` rows of `k`) and weights `w` (`n` rows of `k`),
/// split across rill's CPU worker pool by tiles of output columns; then `post`, if any, over each row's part
/// of a finished tile.
#[allow(clippy::too_many_arguments)]
pub fn matmul<W: WeightElem>(
    kernel: Kernel,
    x: &[f32],
    m: usize,
    k: usize,
    w: &[W],
    n: usize,
    b: Option<&[f32]>,
    dst: &mut [f32],
    post: Option<&Post>,
) {
    assert!(x.len() == m * k && w.len() == n * k && dst.len() == m * n);
    assert!(b.is_none_or(|b| b.len() == n));
    if m == 0 || n == 0 {
        return;
    }
    let dst_addr = dst.as_mut_ptr() as usize;
    crate::pool::run(n.div_ceil(COL_TILE), move |tiles| {
        let dst = dst_addr as *mut f32;
        let cols = tile_cols(tiles.clone(), n);
        // SAFETY: `kernel` is available on this CPU (the caller's contract for `matmul_with`, checked by
        // detection otherwise); `dst` has `m * n` values and each tile's are written by one thread.
        unsafe { tiles_into(kernel, x, m, k, w, n, b, tiles, dst.add(cols.start), n) };
        if let Some(post) = post {
            for r in 0..m {
                // SAFETY: this worker alone wrote (and now owns) these outputs.
                let row = unsafe {
                    std::slice::from_raw_parts_mut(dst.add(r * n + cols.start), cols.len())
                };
                post(row);
            }
        }
    });
}

/// The output columns of `tiles` (units of parallel work) of an `n`-column output.
pub fn tile_cols(tiles: Range<usize>, n: usize) -> Range<usize> {
    tiles.start * COL_TILE..(tiles.end * COL_TILE).min(n)
}

/// [`matmul`]'s work for the columns of `tiles` ([`tile_cols`]): row `r`, column `cols.start + j` at
/// `dst[r * ld + j]`, each with the bits [`matmul`] gives it.
///
/// # Safety
/// `kernel` must be available on this CPU and `dst` valid for those writes by this thread alone; `x` is `m`
/// rows of `k`, `w` `n` rows of `k`, `b` (if any) `n` values.
#[allow(clippy::too_many_arguments)]
pub unsafe fn tiles_into<W: WeightElem>(
    kernel: Kernel,
    x: &[f32],
    m: usize,
    k: usize,
    w: &[W],
    n: usize,
    b: Option<&[f32]>,
    tiles: Range<usize>,
    dst: *mut f32,
    ld: usize,
) {
    let group = kernel.cols();
    let cols = tile_cols(tiles, n);
    // Group by group of weight rows, every activation row passes over the group while it is in cache.
    let mut c = cols.start;
    while c < cols.end {
        let width = if c + group <= cols.end { group } else { 1 };
        let mut r = 0;
        while r < m {
            let rows = ROW_TILE.min(m - r);
            // SAFETY: the caller's contract; rows r..r+rows and columns c..c+width are inside x, w and dst.
            block(
                kernel,
                rows,
                width,
                x,
                w,
                k,
                b,
                r,
                c,
                dst.add(c - cols.start),
                ld,
            );
            r += rows;
        }
        c += width;
    }
}

/// One micro-kernel call: `rows` activation rows from `r`, `width` weight rows from `c`; `dst` points at
/// column `c` of row 0, rows `n` apart.
///
/// # Safety
/// `kernel` must be one of [`Kernel::available`]. `x` holds at least `(r + rows) * k` values, `w` at least
/// `(c + width) * k` and `b`, if any, at least `c + width`; `dst` is valid for writes of `dst[i * n + j]` for
/// every row `i` in `r .. r + rows` and `j < width`, by this thread alone.
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn block<W: WeightElem>(
    kernel: Kernel,
    rows: usize,
    width: usize,
    x: &[f32],
    w: &[W],
    k: usize,
    b: Option<&[f32]>,
    r: usize,
    c: usize,
    dst: *mut f32,
    n: usize,
) {
    let xp = x.as_ptr().add(r * k);
    let wp = w.as_ptr().add(c * k);
    let bp = b.map_or(std::ptr::null(), |b| b.as_ptr().add(c));
    let d = dst.add(r * n);
    macro_rules! dispatch {
        ($f:ident, $($cw:literal),*) => {
            match (rows, width) {
                $(
                    (4, $cw) => $f::<W, 4, $cw>(xp, wp, k, bp, d, n),
                    (3, $cw) => $f::<W, 3, $cw>(xp, wp, k, bp, d, n),
                    (2, $cw) => $f::<W, 2, $cw>(xp, wp, k, bp, d, n),
                    (1, $cw) => $f::<W, 1, $cw>(xp, wp, k, bp, d, n),
                )*
                _ => unreachable!(),
            }
        };
    }
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => dispatch!(rows_avx512, 4, 1),
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => dispatch!(rows_avx2, 2, 1),
        Kernel::Scalar => dispatch!(rows_scalar, 2, 1),
    }
}

/// Lanes of the portable kernel.
const SCALAR_LANES: usize = 8;

/// Portable micro-kernel: `R` activation rows (stride `k` from `x`) against `C` weight rows (stride `k` from
/// `w`), writing `dst[r * stride + c]`. Lane-wise sums over chunks of eight, a pairwise tree, the tail, the bias.
///
/// # Safety
/// `x` is valid for reads of `R * k` values and `w` of `C * k` weights; `b` is null or valid for reads of `C`
/// values; `dst` is valid for writes of `R` rows of `C` values, `stride` apart.
unsafe fn rows_scalar<W: WeightElem, const R: usize, const C: usize>(
    x: *const f32,
    w: *const W,
    k: usize,
    b: *const f32,
    dst: *mut f32,
    stride: usize,
) {
    let mut acc = [[[0f32; SCALAR_LANES]; C]; R];
    let main = k - k % SCALAR_LANES;
    let mut i = 0;
    while i < main {
        for (r, acc) in acc.iter_mut().enumerate() {
            let xv = std::slice::from_raw_parts(x.add(r * k + i), SCALAR_LANES);
            for (c, acc) in acc.iter_mut().enumerate() {
                let wv = std::slice::from_raw_parts(w.add(c * k + i), SCALAR_LANES);
                for l in 0..SCALAR_LANES {
                    acc[l] += xv[l] * wv[l].to_f32();
                }
            }
        }
        i += SCALAR_LANES;
    }
    for (r, acc) in acc.iter().enumerate() {
        for (c, a) in acc.iter().enumerate() {
            let mut s = ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
            for j in main..k {
                s += *x.add(r * k + j) * (*w.add(c * k + j)).to_f32();
            }
            if !b.is_null() {
                s += *b.add(c);
            }
            *dst.add(r * stride + c) = s;
        }
    }
}

#[cfg(target_arch = "x86_64")]
use x86::{rows_avx2, rows_avx512};

#[cfg(target_arch = "x86_64")]
mod x86;

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| (((i * 29 + seed * 7) % 97) as f32 - 48.0) / 31.0)
            .collect()
    }

    /// Every kernel against an f64 reference, and each row bit-identical alone, at every position of batches
    /// of several sizes; widths that leave both a column and an input tail.
    #[test]
    fn matches_reference_and_is_batch_invariant() -> Result<()> {
        for (n, k) in [(37, 64), (21, 83), (16, 768)] {
            let w = Tensor::from_vec(data(n * k, 1), (n, k), &Device::Cpu)?;
            let bias = Tensor::from_vec(data(n, 2), n, &Device::Cpu)?;
            for with_bias in [false, true] {
                let dense = Dense::new(w.clone(), with_bias.then_some(&bias))?;
                let (wv, bv) = (data(n * k, 1), data(n, 2));
                let m = 9;
                let x = data(m * k, 3);
                for kernel in Kernel::available() {
                    let mut all = vec![0f32; m * n];
                    dense.matmul_with(kernel, &x, m, &mut all);
                    for r in 0..m {
                        for c in 0..n {
                            let mut want: f64 = (0..k)
                                .map(|j| x[r * k + j] as f64 * wv[c * k + j] as f64)
                                .sum();
                            if with_bias {
                                want += bv[c] as f64;
                            }
                            let got = all[r * n + c] as f64;
                            assert!(
                                (got - want).abs()
                                    <= 1e-5 * want.abs().max(1.0) * (k as f64).sqrt(),
                                "{kernel:?} ({r},{c}) k={k}: {got} vs {want}"
                            );
                        }
                    }
                    for size in 1..=m {
                        for start in 0..=m - size {
                            let mut part = vec![0f32; size * n];
                            dense.matmul_with(
                                kernel,
                                &x[start * k..(start + size) * k],
                                size,
                                &mut part,
                            );
                            assert_eq!(
                                part,
                                all[start * n..(start + size) * n],
                                "{kernel:?} rows {start}..{} (n={n}, k={k})",
                                start + size
                            );
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// f16 and bf16 weights give, on every kernel and at every batch size, exactly the bits of the f32 kernel
    /// over the same weights widened to f32.
    #[test]
    fn half_weights_give_the_bits_of_their_f32_widening() -> Result<()> {
        for (n, k) in [(37, 64), (21, 83), (16, 768)] {
            let w32 = Tensor::from_vec(data(n * k, 5), (n, k), &Device::Cpu)?;
            let bias = Tensor::from_vec(data(n, 2), n, &Device::Cpu)?;
            for dtype in [DType::F16, DType::BF16] {
                let half = w32.to_dtype(dtype)?;
                let wide = Dense::new(half.to_dtype(DType::F32)?, Some(&bias))?;
                let dense = Dense::new(half, Some(&bias))?;
                assert_eq!(dense.dtype(), dtype);
                let m = 6;
                let x = data(m * k, 3);
                for kernel in Kernel::available() {
                    for rows in 1..=m {
                        let (mut got, mut want) = (vec![0f32; rows * n], vec![0f32; rows * n]);
                        dense.matmul_with(kernel, &x[..rows * k], rows, &mut got);
                        wide.matmul_with(kernel, &x[..rows * k], rows, &mut want);
                        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        assert_eq!(
                            bits(&got),
                            bits(&want),
                            "{kernel:?} {dtype:?} {rows} rows (n={n}, k={k})"
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// The tensor entry point, with a `[in, out]` weight transposed at load and a non-contiguous input.
    #[test]
    fn forward_matches_candle_matmul() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (48, 40), &dev)?; // [in, out]
        let b = Tensor::randn(0f32, 1.0, 40, &dev)?;
        let x = Tensor::randn(0f32, 1.0, (48, 5), &dev)?.t()?; // [5, 48], not contiguous
        let dense = Dense::from_in_out(&w, Some(&b))?;
        assert_eq!((dense.in_dim(), dense.out_dim()), (48, 40));
        let got = dense.forward(&x)?;
        let want = x.matmul(&w)?.broadcast_add(&b)?;
        let diff = (got - want)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-4, "{diff}");
        Ok(())
    }
}
