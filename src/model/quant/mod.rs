//! rill's own CPU kernels for GGML block-quantized weights, with the arithmetic llama.cpp uses: activations
//! are quantized per 32-value block (Q8_1 for Q4_1 weights, Q8_0 for Q8_0 weights) and dotted in integers.
//! candle 0.11 has only a scalar Q4_1 kernel, and its fast Q8_0 path quantizes activations per 256 values,
//! which rounds differently from llama.cpp.

pub mod q4_1;
pub mod q8_0;

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
}

/// Parses GGUF tensor bytes into blocks (copied, so alignment is guaranteed).
pub fn blocks_from_bytes<B: QuantBlock>(bytes: &[u8]) -> Vec<B> {
    bytes.chunks_exact(B::BYTES).map(B::from_bytes).collect()
}

/// `dst[r, c] = x[r] · w[c]` for activations `x` (`m` rows of `k`) and weights `w` (`n` rows of `k`), split
/// across candle's CPU worker pool by output column, so each weight row is read once for all `m` rows.
pub fn matmul<B: QuantBlock>(x: &[f32], m: usize, k: usize, w: &[B], n: usize, dst: &mut [f32]) {
    assert!(k % QK == 0 && x.len() == m * k && w.len() == n * k / QK && dst.len() == m * n);
    let kb = k / QK;
    let mut xq = vec![B::ZERO_ACT; m * kb];
    for (row, q) in x.chunks_exact(k).zip(xq.chunks_exact_mut(kb)) {
        B::quantize_acts(row, q);
    }
    let dst_addr = dst.as_mut_ptr() as usize;
    let xq = &xq;
    candle_core::utils::barrier_pool().execute_chunked(n, move |cols| {
        let dst = dst_addr as *mut f32;
        for c in cols {
            let wrow = &w[c * kb..(c + 1) * kb];
            for r in 0..m {
                let v = B::vec_dot(wrow, &xq[r * kb..(r + 1) * kb]);
                // SAFETY: each (r, c) is written by exactly one worker, and dst has m * n elements.
                unsafe { *dst.add(r * n + c) = v };
            }
        }
    });
}
