//! rill's own CPU kernels for GGML block-quantized weights (Q4_1, Q4_K, Q6_K, Q8_0), with the arithmetic
//! llama.cpp uses: activations are quantized per 32-value block (Q8_1 for the 4-bit formats, Q8_0 for Q6_K and
//! Q8_0) and dotted in integers.
//! candle 0.11 has only a scalar Q4_1 kernel, and its fast Q8_0 path quantizes activations per 256 values,
//! which rounds differently from llama.cpp.

pub mod q4_1;
pub mod q4_1x8;
pub mod q6_kx8;
pub mod q8_0;
pub mod q8_0x8;
pub mod x8;
#[cfg(target_arch = "x86_64")]
mod x86;

/// Values per block, for every format here.
pub const QK: usize = 32;

/// A GGML weight block and the activation block it is dotted with.
pub trait QuantBlock: Copy + Send + Sync + Sized {
    type Act: Copy + Send + Sync;
    /// Size of one block in a GGUF file.
    const BYTES: usize;
    const ZERO_ACT: Self::Act;
    /// Parses one block from its on-disk bytes.
    fn from_bytes(bytes: &[u8]) -> Self;
    /// Quantizes a row of activations (length a multiple of [`QK`]).
    fn quantize_acts(x: &[f32], out: &mut [Self::Act]);
    /// Dot product of a weight row with an activation row.
    fn vec_dot(w: &[Self], x: &[Self::Act]) -> f32;
    /// Dot products of one weight row with four activation rows (prefill and batched decode), unpacking each
    /// weight block once.
    fn vec_dot4(w: &[Self], x: [&[Self::Act]; 4]) -> [f32; 4] {
        x.map(|x| Self::vec_dot(w, x))
    }
}

/// Parses GGUF tensor bytes into blocks (copied, so alignment is guaranteed).
pub fn blocks_from_bytes<B: QuantBlock>(bytes: &[u8]) -> Vec<B> {
    bytes.chunks_exact(B::BYTES).map(B::from_bytes).collect()
}

/// Output columns per unit of parallel work: a tile of weight rows small enough to stay in L1 while every
/// activation row passes over it.
const COL_TILE: usize = 16;

/// `dst[r, c] = x[r] · w[c]` for activations `x` (`m` rows of `k`) and weights `w` (`n` rows of `k`), split
/// across rill's CPU worker pool by tiles of output columns. Within a tile, activation rows go four at a
/// time across the tile's weight rows, so both stay in cache and each weight row is read from memory once.
pub fn matmul<B: QuantBlock>(x: &[f32], m: usize, k: usize, w: &[B], n: usize, dst: &mut [f32]) {
    assert!(
        k.is_multiple_of(QK) && x.len() == m * k && w.len() == n * k / QK && dst.len() == m * n
    );
    let kb = k / QK;
    let mut xq = vec![B::ZERO_ACT; m * kb];
    for (row, q) in x.chunks_exact(k).zip(xq.chunks_exact_mut(kb)) {
        B::quantize_acts(row, q);
    }
    let dst_addr = dst.as_mut_ptr() as usize;
    let xq = &xq;
    crate::pool::run(n.div_ceil(COL_TILE), move |tiles| {
        let dst = dst_addr as *mut f32;
        let xrow = |r: usize| &xq[r * kb..(r + 1) * kb];
        let wrow = |c: usize| &w[c * kb..(c + 1) * kb];
        let cols = tiles.start * COL_TILE..(tiles.end * COL_TILE).min(n);
        // SAFETY (writes below): each (r, c) is written by exactly one worker, and dst has m * n elements.
        let mut r = 0;
        while r + 4 <= m {
            let rows = [xrow(r), xrow(r + 1), xrow(r + 2), xrow(r + 3)];
            for c in cols.clone() {
                for (i, v) in B::vec_dot4(wrow(c), rows).into_iter().enumerate() {
                    unsafe { *dst.add((r + i) * n + c) = v };
                }
            }
            r += 4;
        }
        for r in r..m {
            for c in cols.clone() {
                unsafe { *dst.add(r * n + c) = B::vec_dot(wrow(c), xrow(r)) };
            }
        }
    });
}
