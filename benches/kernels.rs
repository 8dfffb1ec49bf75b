//! `cargo bench --bench kernels`: throughput of rill's quantized CPU matmul kernels (GMAC/s) for the shapes of
//! SmolLM2's layers, with 1 to 16 activation rows (batched decode) and 64 (a prefill chunk); and of the f32
//! kernel against candle's f32 matmul for GPT-2 124M's MLP shape; and the CPU attention kernel for a batched
//! decode step of SmolLM2's shape (`attn`: one or eight sequences, every layer's cache its own buffer).

use std::time::Instant;

use candle_core::{Device, Tensor};
use rill::model::attention::{attend_rows, Scoring, SeqRows};
use rill::model::dense::Dense;
use rill::model::quant::{matmul, q4_1::BlockQ4_1, q4_1x8, q8_0::BlockQ8_0, q8_0x8, QuantBlock};

/// Deterministic pseudo-random bytes, so every run times the same data.
fn bytes(n: usize, seed: u32) -> Vec<u8> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (s >> 16) as u8
        })
        .collect()
}

/// Weight blocks with small, finite f16 scales (raw random bytes could hold NaN or infinity).
fn weights<B: QuantBlock>(n: usize, k: usize) -> Vec<B> {
    let mut raw = bytes(n * k / 32 * B::BYTES, 7);
    for blk in raw.chunks_exact_mut(B::BYTES) {
        blk[0] = 0x00;
        blk[1] = 0x20; // f16 ≈ 0.0078
        if B::BYTES == 20 {
            blk[2] = 0x00;
            blk[3] = 0xA0; // Q4_1 min ≈ -0.0078
        }
    }
    rill::model::quant::blocks_from_bytes(&raw)
}

/// Times `f` (one `[m, k] × [k, n]` product) and prints its throughput.
/// (`cargo bench --bench kernels -- NAME` times only the kernels whose name starts with NAME.)
fn gmacs(name: &str, m: usize, k: usize, n: usize, mut f: impl FnMut(&[f32], &mut [f32])) {
    let filter = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    if filter.is_some_and(|p| !name.starts_with(&p)) {
        return;
    }
    let x: Vec<f32> = bytes(m * k, 3)
        .iter()
        .map(|&b| b as f32 / 64.0 - 2.0)
        .collect();
    let mut dst = vec![0f32; m * n];
    f(&x, &mut dst); // warm-up
    let reps = (2_000_000_000 / (m * k * n)).clamp(3, 2000);
    let t = Instant::now();
    for _ in 0..reps {
        f(&x, &mut dst);
    }
    let s = t.elapsed().as_secs_f64();
    let g = (reps * m * k * n) as f64 / s / 1e9;
    println!(
        "{name:<6} m={m:<3} k={k:<5} n={n:<6} {:>9.1} µs/call {g:>8.2} GMAC/s",
        s / reps as f64 * 1e6
    );
}

/// Times one decode step's attention for SmolLM2's shape (9 query heads over 3 kv heads of 64, 30 layers):
/// `seqs` sequences whose caches hold `positions` keys, each layer's cache a separate buffer as in a server,
/// and prints the time per step and per key read.
fn attention(seqs: usize, positions: usize, kv_dtype: candle_core::DType) {
    let filter = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    if filter.is_some_and(|p| !"attn".starts_with(&p) && !p.starts_with("attn")) {
        return;
    }
    let (heads, kv, hd, layers) = (9, 3, 64, 30);
    let values = |seed| -> Tensor {
        let v: Vec<f32> = bytes(kv * positions * hd, seed)
            .iter()
            .map(|&b| b as f32 / 128.0 - 1.0)
            .collect();
        Tensor::from_vec(v, (kv, positions, hd), &Device::Cpu)
            .unwrap()
            .to_dtype(kv_dtype)
            .unwrap()
    };
    let caches: Vec<Vec<(Tensor, Tensor)>> = (0..layers)
        .map(|l| {
            (0..seqs)
                .map(|s| {
                    (
                        values(11 + (l * seqs + s) as u32),
                        values(5000 + (l * seqs + s) as u32),
                    )
                })
                .collect()
        })
        .collect();
    let q: Vec<f32> = bytes(heads * hd, 9)
        .iter()
        .map(|&b| b as f32 / 64.0 - 2.0)
        .collect();
    let scoring = Scoring::plain(hd);
    let step = || {
        for layer in &caches {
            let rows: Vec<SeqRows<'_>> =
                layer.iter().map(|(k, v)| SeqRows { q: &q, k, v }).collect();
            std::hint::black_box(attend_rows(&rows, heads, &scoring).unwrap());
        }
    };
    step();
    let reps = (400_000 / (seqs * positions)).clamp(3, 1000);
    let t = Instant::now();
    for _ in 0..reps {
        step();
    }
    let s = t.elapsed().as_secs_f64() / reps as f64;
    println!(
        "attn   seqs={seqs:<2} positions={positions:<4} kv={kv_dtype:?} {:>9.1} µs/step {:>8.2} ns/key·kv-head",
        s * 1e6,
        s * 1e9 / (seqs * positions * layers * kv) as f64
    );
}

fn main() {
    rill::cli::set_cpu_threads(None);
    for (seqs, positions) in [(1, 100), (8, 100), (8, 400)] {
        for dt in [candle_core::DType::F32, candle_core::DType::F16] {
            attention(seqs, positions, dt);
        }
    }
    let (k, n) = (576, 3072);
    let w = weights::<BlockQ4_1>(n, k);
    let packed = q4_1x8::pack(&w, n, k).unwrap();
    for m in [1, 2, 4, 8, 16, 64] {
        gmacs("q4_1", m, k, n, |x, d| matmul(x, m, k, &w, n, d));
        gmacs("q4_1x8", m, k, n, |x, d| packed.matmul(x, m, d));
    }
    let (k, n) = (576, 49152);
    let w = weights::<BlockQ8_0>(n, k);
    let packed = q8_0x8::pack(&w, n, k).unwrap();
    for m in [1, 4, 8, 16] {
        gmacs("q8_0", m, k, n, |x, d| matmul(x, m, k, &w, n, d));
        gmacs("q8_0x8", m, k, n, |x, d| packed.matmul(x, m, d));
    }
    // f32 against candle's matmul (with its tensor in and out), for GPT-2 124M's MLP up-projection (9.4 MB of
    // weights: bigger than L2, smaller than a large L3) and its output head (154 MB, streamed from memory).
    for (k, n, ms) in [(768, 3072, &[1, 4, 8, 16][..]), (768, 50257, &[1, 8][..])] {
        let wv: Vec<f32> = bytes(n * k, 5)
            .iter()
            .map(|&b| b as f32 / 4096.0 - 0.03)
            .collect();
        let w = Tensor::from_vec(wv, (n, k), &Device::Cpu).unwrap();
        // [k, n], as GPT-2's Conv1D stores it (the head is used as `x · wteᵀ`, also a strided right operand).
        let wt = w.t().unwrap().contiguous().unwrap();
        let dense = Dense::new(w, None).unwrap();
        for &m in ms {
            gmacs("f32", m, k, n, |x, d| dense.matmul(x, m, d));
            gmacs("candle", m, k, n, |x, d| {
                let xt = Tensor::from_slice(x, (m, k), &Device::Cpu).unwrap();
                let y = xt.matmul(&wt).unwrap().flatten_all().unwrap();
                d.copy_from_slice(&y.to_vec1::<f32>().unwrap());
            });
        }
    }
}
