//! Weights interleaved eight output rows at a time, and the matmul driver shared by the formats stored that
//! way ([`super::q4_1x8`], [`super::q8_0x8`]).
//!
//! The plain layout dots one weight row with one activation row, so every 32-value block ends in a float
//! conversion and a scaled add for a single output. Interleaved, one 32-byte load holds four weights of each
//! of eight rows; an integer multiply-add against four broadcast activation bytes yields partial sums for all
//! eight outputs at once, and the float work is done once per block for eight outputs. Every activation row
//! goes through the same instructions whatever the batch size, so a sequence's result does not depend on what
//! it is batched with.

use std::ops::Range;

use super::QK;

mod prefetch;
pub use prefetch::Ahead;
use prefetch::{fetch_steps, prefetch_on};

/// Output rows per interleaved group.
pub const ROWS: usize = 8;
/// Output columns per unit of parallel work (two groups).
const COL_TILE: usize = 16;
/// Activation rows that share one pass over a weight group: eight with AVX-512 (32 vector registers hold
/// eight rows' accumulators) and with plain AVX2, where the accumulators of eight rows spill but one pass over
/// a tile's weights instead of two still wins (decode bench, SmolLM2 Q4_1 capped at AVX2, alternating: eight
/// streams 449–473 → 487–501 tokens/s, a 256-token prefill 896–997 → 1005–1023; a Q4_K_M llama's eight streams
/// over HTTP 179–182 → 180–185); four on AVX-VNNI (not measured) and the portable path.
fn row_tile(kernel: Kernel) -> usize {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512Vnni | Kernel::Avx2 => 8,
        _ => 4,
    }
}

/// A block format stored interleaved: one `Block` holds block `b` of eight consecutive weight rows.
pub trait Format {
    /// Weights of one row covered by one `Block` (a multiple of [`QK`]).
    const VALUES: usize = QK;
    type Block: Copy + Send + Sync;
    /// Steps per `Block` at which the kernels fetch the next tile (one per 32-value part of a K-quant
    /// super-block, so that no step asks for more than a few cache lines).
    const FETCH_STEPS: usize = 1;
    /// One quantized block of activations.
    type Act: Copy + Send + Sync;
    const ZERO_ACT: Self::Act;
    /// Quantizes a row of activations (length a multiple of [`QK`]).
    fn quantize_acts(x: &[f32], out: &mut [Self::Act]);
    /// Writes `dst[r * stride + c]`, `c < 8`, for the `R` activation rows `xs` (all `k / 32` activation
    /// blocks of each row) against one weight group `w`; the x86 kernels fetch `ahead` into the cache as they
    /// go (step `b * FETCH_STEPS + s` at part `s` of block `b`), the portable one ignores it.
    ///
    /// # Safety
    /// `kernel` must be one of [`Kernel::available`], and `dst` valid for those writes by this thread alone.
    unsafe fn rows<const R: usize>(
        kernel: Kernel,
        xs: [&[Self::Act]; R],
        w: &[Self::Block],
        ahead: Ahead,
        dst: *mut f32,
        stride: usize,
    );

    /// [`Self::rows`] for two consecutive weight groups `w[0]` and `w[1]` (sixteen output columns from
    /// `dst`), with each output's bits exactly as [`Self::rows`] gives them: in one pass of 512-bit vectors
    /// where the format has such a kernel and the CPU runs it, else group by group.
    ///
    /// # Safety
    /// As [`Self::rows`], for sixteen columns.
    unsafe fn rows_pair<const R: usize>(
        kernel: Kernel,
        xs: [&[Self::Act]; R],
        w: [&[Self::Block]; 2],
        ahead: Ahead,
        dst: *mut f32,
        stride: usize,
    ) {
        #[cfg(target_arch = "x86_64")]
        if matches!(kernel, Kernel::Avx512Vnni)
            && has_avx512()
            && Self::rows_pair_avx512(xs, w, ahead, dst, stride)
        {
            return;
        }
        Self::rows(kernel, xs, w[0], ahead, dst, stride);
        Self::rows(kernel, xs, w[1], Ahead::NONE, dst.add(ROWS), stride);
    }

    /// The format's two-group kernel on 512-bit vectors, if it has one: writes what [`Self::rows_pair`]
    /// writes and returns true; the default has none and returns false.
    ///
    /// # Safety
    /// As [`Self::rows_pair`], on a CPU with AVX-512 F, BW, VL and VNNI.
    #[cfg(target_arch = "x86_64")]
    unsafe fn rows_pair_avx512<const R: usize>(
        _xs: [&[Self::Act]; R],
        _w: [&[Self::Block]; 2],
        _ahead: Ahead,
        _dst: *mut f32,
        _stride: usize,
    ) -> bool {
        false
    }
}

/// The body of [`Format::rows`] for a format module that defines `x86::rows_avx512vnni`, `x86::rows_avxvnni`
/// and `x86::rows_avx2` (all `R` rows at once, each fetching its [`Ahead`] block by block) and `rows_scalar`
/// (one row, no prefetch).
macro_rules! dispatch_rows {
    ($kernel:expr, $xs:expr, $w:expr, $ahead:expr, $dst:expr, $stride:expr) => {
        match $kernel {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni => x86::rows_avx512vnni($xs, $w, $ahead, $dst, $stride),
            #[cfg(target_arch = "x86_64")]
            Kernel::AvxVnni => x86::rows_avxvnni($xs, $w, $ahead, $dst, $stride),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => x86::rows_avx2($xs, $w, $ahead, $dst, $stride),
            Kernel::Scalar => {
                let _ = $ahead;
                for (r, x) in $xs.iter().enumerate() {
                    rows_scalar(x, $w, $dst.add(r * $stride))
                }
            }
        }
    };
}
pub(crate) use dispatch_rows;

/// Whether the CPU has the 512-bit instructions the two-group kernels need (AVX-512 F and BW besides the
/// VNNI that picked [`Kernel::Avx512Vnni`]).
#[cfg(target_arch = "x86_64")]
pub fn has_avx512() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw"))
}

/// The instruction set used for the integer multiply-adds.
#[derive(Clone, Copy, Debug)]
pub enum Kernel {
    /// AVX-512 VNNI on 256-bit vectors (`vpdpbusd`).
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
    /// AVX-VNNI (`vpdpbusd`, VEX-encoded).
    #[cfg(target_arch = "x86_64")]
    AvxVnni,
    /// AVX2 without VNNI (`vpmaddubsw` + `vpmaddwd`).
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Scalar,
}

impl Kernel {
    /// The fastest kernel this CPU runs (and `RILL_KERNELS` allows).
    pub fn detect() -> Self {
        static BEST: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| Self::available()[0])
    }

    /// Every kernel this CPU runs, fastest first; `RILL_KERNELS=avx2` (or `scalar`) leaves out the wider
    /// ones, to measure an AVX2-only machine's path on a newer CPU.
    pub fn available() -> Vec<Self> {
        #[allow(unused_mut)]
        let mut out = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let cap = crate::model::kernel_cap();
            let avx2 = has!("avx2") && has!("fma") && has!("f16c") && cap >= 1;
            if avx2 && has!("avx512vnni") && has!("avx512vl") && cap >= 2 {
                out.push(Self::Avx512Vnni);
            }
            if avx2 && has!("avxvnni") && cap >= 2 {
                out.push(Self::AvxVnni);
            }
            if avx2 {
                out.push(Self::Avx2);
            }
        }
        out.push(Self::Scalar);
        out
    }
}

/// An `[n, k]` weight (`n` a multiple of [`ROWS`]) stored interleaved in format `F`.
pub struct Interleaved<F: Format> {
    blocks: Vec<F::Block>,
    n: usize,
    k: usize,
}

impl<F: Format> Interleaved<F> {
    /// Builds the weight from its group blocks, `n / 8` groups of `k / F::VALUES` blocks each.
    pub fn new(blocks: Vec<F::Block>, n: usize, k: usize) -> Self {
        assert!(
            n.is_multiple_of(ROWS)
                && k.is_multiple_of(F::VALUES)
                && blocks.len() == n / ROWS * (k / F::VALUES)
        );
        Self { blocks, n, k }
    }

    /// Input width.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Output width, a multiple of eight (padded rows included).
    pub fn n(&self) -> usize {
        self.n
    }

    #[cfg(test)]
    pub fn blocks_for_test(&self) -> &[F::Block] {
        &self.blocks
    }

    /// `dst[r, c] = x[r] · w[c]` for `m` activation rows of `k`, split across rill's CPU worker pool by
    /// tiles of output columns.
    pub fn matmul(&self, x: &[f32], m: usize, dst: &mut [f32]) {
        self.matmul_with(Kernel::detect(), x, m, dst)
    }

    /// [`Self::matmul`] with a given kernel (tests compare them all).
    pub fn matmul_with(&self, kernel: Kernel, x: &[f32], m: usize, dst: &mut [f32]) {
        let n = self.n;
        assert!(x.len() == m * self.k && dst.len() == m * n);
        let xq = quantize_rows::<F>(x, m, self.k);
        let dst_addr = dst.as_mut_ptr() as usize;
        let xq = &xq;
        crate::pool::run(self.tiles(), move |tiles| {
            let col0 = self.tile_cols(tiles.clone()).start;
            // SAFETY: `dst` has `m * n` values; each tile's columns are written by the one thread running it.
            unsafe { self.tiles_into(kernel, xq, m, tiles, (dst_addr as *mut f32).add(col0), n) }
        });
    }

    /// Units of parallel work: tiles of sixteen output columns (the last may have eight).
    pub fn tiles(&self) -> usize {
        self.n.div_ceil(COL_TILE)
    }

    /// The output columns of `tiles`.
    pub fn tile_cols(&self, tiles: Range<usize>) -> Range<usize> {
        tiles.start * COL_TILE..(tiles.end * COL_TILE).min(self.n)
    }

    /// The activation rows `x` (`m` of `k`) as the kernels read them, for [`Self::tiles_into`].
    pub fn prepare(&self, x: &[f32], m: usize) -> Vec<F::Act> {
        assert_eq!(x.len(), m * self.k);
        quantize_rows::<F>(x, m, self.k)
    }

    /// The outputs of the columns of `tiles` ([`Self::tile_cols`]) for the `m` prepared activation rows `xq`:
    /// row `r`, column `tile_cols.start + j` at `dst[r * ld + j]`. Each output has the bits
    /// [`Self::matmul`] gives it, whatever the tiles.
    ///
    /// # Safety
    /// `kernel` must be one of [`Kernel::available`], and `dst` valid for those writes by this thread alone.
    pub unsafe fn tiles_into(
        &self,
        kernel: Kernel,
        xq: &[F::Act],
        m: usize,
        tiles: Range<usize>,
        dst: *mut f32,
        ld: usize,
    ) {
        let (n, kb, wb) = (self.n, self.k / QK, self.k / F::VALUES);
        assert!(xq.len() == m * kb && tiles.end <= self.tiles());
        let col0 = tiles.start * COL_TILE;
        let x = |r: usize| &xq[r * kb..(r + 1) * kb];
        let blocks = &self.blocks;
        // Tile by tile, every activation row passes over the tile while its weights are in L1.
        for tile in tiles {
            let groups = tile * COL_TILE / ROWS..((tile + 1) * COL_TILE).min(n) / ROWS;
            let mut r = 0;
            while r < m {
                let rows = row_tile(kernel).min(m - r);
                let mut g = groups.start;
                while g < groups.end {
                    let pair = g + 1 < groups.end;
                    let w = |g: usize| &blocks[g * wb..(g + 1) * wb];
                    // The last pass over this tile reads it from L1; meanwhile the kernel fetches the same
                    // groups of the next tile, which the first pass over it would otherwise wait for (a
                    // hardware prefetcher follows only the demand misses, and this pass makes none).
                    let ahead = if prefetch_on() && r + rows >= m {
                        let (next, count) = (g + COL_TILE / ROWS, if pair { 2 } else { 1 });
                        let end = ((next + count) * wb).min(blocks.len());
                        Ahead::over(
                            blocks.get(next * wb..end),
                            fetch_steps(wb * F::FETCH_STEPS, m),
                        )
                    } else {
                        Ahead::NONE
                    };
                    // SAFETY: the caller's contract; rows r.. and the group's columns are inside `dst`.
                    let d = dst.add(r * ld + g * ROWS - col0);
                    let xs = |i: usize| x(r + i);
                    macro_rules! go {
                        ($xs:expr) => {
                            if pair {
                                F::rows_pair(kernel, $xs, [w(g), w(g + 1)], ahead, d, ld)
                            } else {
                                F::rows(kernel, $xs, w(g), ahead, d, ld)
                            }
                        };
                    }
                    match rows {
                        8 => go!(std::array::from_fn::<_, 8, _>(xs)),
                        7 => go!(std::array::from_fn::<_, 7, _>(xs)),
                        6 => go!(std::array::from_fn::<_, 6, _>(xs)),
                        5 => go!(std::array::from_fn::<_, 5, _>(xs)),
                        4 => go!([x(r), x(r + 1), x(r + 2), x(r + 3)]),
                        3 => go!([x(r), x(r + 1), x(r + 2)]),
                        2 => go!([x(r), x(r + 1)]),
                        _ => go!([x(r)]),
                    }
                    g += if pair { 2 } else { 1 };
                }
                r += rows;
            }
        }
    }
}

/// The activation rows `x` (`m` of `k`) quantized for format `F`, row after row; a prompt's many rows are
/// shared out across the worker pool (each row is quantized whole by one thread, so the bits are the same).
fn quantize_rows<F: Format>(x: &[f32], m: usize, k: usize) -> Vec<F::Act> {
    let kb = k / QK;
    let mut xq = vec![F::ZERO_ACT; m * kb];
    if m < 8 {
        for (row, q) in x.chunks_exact(k).zip(xq.chunks_exact_mut(kb)) {
            F::quantize_acts(row, q);
        }
        return xq;
    }
    let out = xq.as_mut_ptr() as usize;
    crate::pool::run(m, |rows| {
        for r in rows {
            // SAFETY: row `r`'s `kb` blocks are written by this item alone, inside `xq`.
            let q = unsafe { std::slice::from_raw_parts_mut((out as *mut F::Act).add(r * kb), kb) };
            F::quantize_acts(&x[r * k..(r + 1) * k], q);
        }
    });
    xq
}

/// Values per K-quant super-block.
pub const QK_K: usize = 256;

/// The groups of a K-quant weight `[n, k]` stored as row-major super-blocks of `block_bytes`: `make(blk)`
/// builds the group of eight rows' super-blocks, `blk(c)` being row `c`'s bytes. A width that is not a
/// multiple of eight (a vocabulary of 50 257) is padded with all-zero rows (a zero scale: weights 0), so the
/// weight has `n.next_multiple_of(8)` rows. `None` unless `k` is a multiple of 256 and `bytes` exactly the
/// weight's.
pub fn k_quant_groups<'a, G: Send>(
    bytes: &'a [u8],
    n: usize,
    k: usize,
    block_bytes: usize,
    make: impl Fn(&dyn Fn(usize) -> &'a [u8]) -> G + Sync,
) -> Option<Vec<G>> {
    static ZERO: [u8; 256] = [0; 256];
    if !k.is_multiple_of(QK_K)
        || bytes.len() != n * k / QK_K * block_bytes
        || block_bytes > ZERO.len()
    {
        return None;
    }
    let per_row = k / QK_K;
    let total = n.div_ceil(ROWS) * per_row;
    let mut out = Vec::with_capacity(total);
    let dst = out.as_mut_ptr() as usize;
    // Group blocks are independent: the load repacks them across the worker pool.
    crate::pool::run(total, |items| {
        for i in items {
            let (g, b) = (i / per_row, i % per_row);
            let blk = |c: usize| match g * ROWS + c {
                row if row < n => &bytes[(row * per_row + b) * block_bytes..][..block_bytes],
                _ => &ZERO[..block_bytes],
            };
            // SAFETY: item `i` alone writes slot `i`, inside the `total` reserved.
            unsafe { (dst as *mut G).add(i).write(make(&blk)) };
        }
    });
    // SAFETY: `pool::run` returned (it re-raises a panic before this point), so every slot was written.
    unsafe { out.set_len(total) };
    Some(out)
}

/// Test helpers shared by the interleaved formats.
#[cfg(test)]
pub mod testing {
    use super::*;

    /// A `[24, 512]` weight quantized to `dtype` by candle (ggml's reference quantizers): its bytes and its
    /// dequantization.
    pub fn candle_weight(
        dtype: candle_core::quantized::GgmlDType,
    ) -> (Vec<u8>, Vec<f32>, usize, usize) {
        use candle_core::quantized::QTensor;
        use candle_core::{Device, Tensor};
        let (n, k) = (24, 512);
        let src: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919 % 1013) as f32 - 506.0) / 97.0)
            .collect();
        let t = Tensor::from_vec(src, (n, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&t, dtype).unwrap();
        let deq = q
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        (q.data().unwrap().into_owned(), deq, n, k)
    }

    /// Checks every available kernel and several batch sizes against `want(row, col)`, and that a row's
    /// result is bit-identical alone and in a batch.
    pub fn check<F: Format>(w: &Interleaved<F>, want: impl Fn(&[f32], usize) -> f32) {
        let (n, k) = (w.n, w.k);
        for kernel in Kernel::available() {
            let m = 9;
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 29 % 97) as f32 - 48.0) / 31.0)
                .collect();
            let mut all = vec![0f32; m * n];
            w.matmul_with(kernel, &x, m, &mut all);
            for r in 0..m {
                let row = &x[r * k..(r + 1) * k];
                for c in 0..n {
                    let (got, want) = (all[r * n + c], want(row, c));
                    assert!(
                        (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                        "{kernel:?} ({r},{c}): {got} vs {want}"
                    );
                }
                let mut one = vec![0f32; n];
                w.matmul_with(kernel, row, 1, &mut one);
                assert_eq!(one, all[r * n..(r + 1) * n], "{kernel:?} row {r} alone");
            }
        }
    }

    /// [`Format::rows_pair`] gives, on every available kernel and for 1 to 8 activation rows, the bits of
    /// [`Format::rows`] run on each of the two groups.
    pub fn check_pairs<F: Format>(w: &Interleaved<F>) {
        let (n, k) = (w.n, w.k);
        assert!(n >= 2 * ROWS);
        let (kb, wb) = (k / QK, k / F::VALUES);
        let x: Vec<f32> = (0..8 * k)
            .map(|i| ((i * 31 % 89) as f32 - 44.0) / 23.0)
            .collect();
        let mut xq = vec![F::ZERO_ACT; 8 * kb];
        for (row, q) in x.chunks_exact(k).zip(xq.chunks_exact_mut(kb)) {
            F::quantize_acts(row, q);
        }
        let xs = |i: usize| &xq[i * kb..(i + 1) * kb];
        let groups = [&w.blocks[..wb], &w.blocks[wb..2 * wb]];
        for kernel in Kernel::available() {
            macro_rules! compare {
                ($r:literal) => {{
                    let (mut pair, mut single) = (vec![0f32; $r * 16], vec![0f32; $r * 16]);
                    let rows: [&[F::Act]; $r] = std::array::from_fn(xs);
                    // SAFETY: the kernel is available; both buffers hold `$r` rows of 16 columns.
                    unsafe {
                        F::rows_pair(kernel, rows, groups, Ahead::NONE, pair.as_mut_ptr(), 16);
                        F::rows(
                            kernel,
                            rows,
                            groups[0],
                            Ahead::NONE,
                            single.as_mut_ptr(),
                            16,
                        );
                        F::rows(
                            kernel,
                            rows,
                            groups[1],
                            Ahead::NONE,
                            single.as_mut_ptr().add(ROWS),
                            16,
                        );
                    }
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&pair), bits(&single), "{kernel:?}, {} rows", $r);
                }};
            }
            compare!(1);
            compare!(3);
            compare!(4);
            compare!(8);
        }
        check_tiles(w);
    }

    /// Any range of tiles computed on its own ([`Interleaved::tiles_into`], as team steps do) gives the
    /// columns [`Interleaved::matmul_with`] gives, bit for bit.
    pub fn check_tiles<F: Format>(w: &Interleaved<F>) {
        let (n, k, t) = (w.n, w.k, w.tiles());
        for m in [1, 5] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 37 % 97) as f32 - 48.0) / 29.0)
                .collect();
            let xq = w.prepare(&x, m);
            for kernel in Kernel::available() {
                let mut full = vec![0f32; m * n];
                w.matmul_with(kernel, &x, m, &mut full);
                let splits: Vec<Vec<Range<usize>>> =
                    vec![(0..t).map(|i| i..i + 1).collect(), vec![0..t / 2, t / 2..t]];
                for split in splits {
                    for tiles in split.into_iter().filter(|r| !r.is_empty()) {
                        let cols = w.tile_cols(tiles.clone());
                        let mut part = vec![0f32; m * cols.len()];
                        // SAFETY: the kernel is available; `part` holds `m` rows of the tiles' columns.
                        unsafe {
                            w.tiles_into(kernel, &xq, m, tiles, part.as_mut_ptr(), cols.len())
                        };
                        for r in 0..m {
                            let want = &full[r * n + cols.start..r * n + cols.end];
                            let got = &part[r * cols.len()..(r + 1) * cols.len()];
                            let bits =
                                |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                            assert_eq!(
                                bits(got),
                                bits(want),
                                "{kernel:?}, {m} rows, columns {cols:?}"
                            );
                        }
                    }
                }
            }
        }
    }
}
