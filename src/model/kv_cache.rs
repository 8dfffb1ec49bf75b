//! Per-sequence KV cache: one growable key/value buffer per layer, owned by the engine's sequence.

use candle_core::{Result, Tensor};
use candle_nn::kv_cache::KvCache;

/// Initial capacity, in positions, of a new cache; it grows on demand.
const INITIAL_POSITIONS: usize = 128;

/// The keys and values of one sequence, every layer; `len` is the number of positions already processed.
pub struct SeqCache {
    layers: Vec<KvCache>,
    len: usize,
}

impl SeqCache {
    /// A cache for `n_layers` layers; tensors are `[kv_heads, positions, head_dim]`, grown along dim 1.
    pub fn new(n_layers: usize) -> Self {
        let layers = (0..n_layers)
            .map(|_| KvCache::new(1, INITIAL_POSITIONS))
            .collect();
        Self { layers, len: 0 }
    }

    /// Positions already in the cache: the position of the next token.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `k`, `v` (`[kv_heads, new, head_dim]`) to `layer` and returns all keys and values so far.
    pub fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        self.layers[layer].append(k, v)
    }

    /// Records that `n` more positions were appended to every layer.
    pub fn advance(&mut self, n: usize) {
        self.len += n;
    }
}
