//! Per-sequence KV cache: one growable key/value buffer per layer, owned by the engine's sequence.

use candle_core::{DType, Result, Tensor};
use candle_nn::kv_cache::KvCache;

/// Initial capacity, in positions, of a new cache; it grows on demand.
const INITIAL_POSITIONS: usize = 128;

/// The keys and values of one sequence, every layer; `len` is the number of positions already processed.
pub struct SeqCache {
    layers: Vec<KvCache>,
    len: usize,
    /// The type keys and values are stored in (f32, or f16 for half the memory).
    dtype: DType,
}

impl SeqCache {
    /// An f32 cache for `n_layers` layers; tensors are `[kv_heads, positions, head_dim]`, grown along dim 1.
    pub fn new(n_layers: usize) -> Self {
        Self::with_dtype(n_layers, DType::F32)
    }

    /// A cache storing keys and values as `dtype`.
    pub fn with_dtype(n_layers: usize, dtype: DType) -> Self {
        let layers = (0..n_layers)
            .map(|_| KvCache::new(1, INITIAL_POSITIONS))
            .collect();
        Self {
            layers,
            len: 0,
            dtype,
        }
    }

    /// The same empty cache, storing keys and values as `dtype` from now on.
    pub fn stored_as(mut self, dtype: DType) -> Self {
        assert!(self.len == 0, "stored_as on a cache that holds positions");
        self.dtype = dtype;
        self
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
        self.layers[layer].append(&k.to_dtype(self.dtype)?, &v.to_dtype(self.dtype)?)
    }

    /// Appends `n` zero positions (`kv_heads` heads of `head_dim`) to every layer, room that a team step then
    /// fills, and returns each layer's whole key and value buffers (`[kv_heads, allocated, head_dim]`).
    pub fn reserve(
        &mut self,
        n: usize,
        kv_heads: usize,
        head_dim: usize,
    ) -> Result<Vec<(Tensor, Tensor)>> {
        let zeros = Tensor::zeros(
            (kv_heads, n, head_dim),
            self.dtype,
            &candle_core::Device::Cpu,
        )?;
        let mut all = Vec::with_capacity(self.layers.len());
        for l in &mut self.layers {
            l.append(&zeros, &zeros)?;
            match (l.k_cache().all_data(), l.v_cache().all_data()) {
                (Some(k), Some(v)) => all.push((k.clone(), v.clone())),
                _ => candle_core::bail!("a cache layer without a buffer after an append"),
            }
        }
        Ok(all)
    }

    /// The type keys and values are stored in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Keys and values of `layer` so far, if any were appended.
    pub fn layer(&self, layer: usize) -> Option<(Tensor, Tensor)> {
        let l = &self.layers[layer];
        Some((l.k().ok()??, l.v().ok()??))
    }

    /// A new cache holding copies of this one's first `n` positions (`n` at most [`Self::len`]), with room for
    /// `room` positions (at least `n`) before it has to grow. Size `room` for everything the copy will hold:
    /// past it, the buffers grow by `room` at a time.
    pub fn prefix_copy(&self, n: usize, room: usize) -> Result<Self> {
        assert!(
            n <= self.len,
            "prefix_copy({n}) of a {}-position cache",
            self.len
        );
        let capacity = room
            .max(n)
            .next_multiple_of(INITIAL_POSITIONS)
            .max(INITIAL_POSITIONS);
        let mut layers = Vec::with_capacity(self.layers.len());
        for l in &self.layers {
            let mut copy = KvCache::new(1, capacity);
            if let (Some(k), Some(v)) = (l.k()?, l.v()?) {
                if n > 0 {
                    copy.append(
                        &k.narrow(1, 0, n)?.contiguous()?,
                        &v.narrow(1, 0, n)?.contiguous()?,
                    )?;
                }
            }
            layers.push(copy);
        }
        Ok(Self {
            layers,
            len: n,
            dtype: self.dtype,
        })
    }

    /// Positions the buffers have room for (what the cache's memory is sized by).
    pub fn allocated_positions(&self) -> usize {
        self.layers
            .first()
            .map_or(self.len, |l| l.k_cache().max_seq_len())
    }

    /// Records that `n` more positions were appended to every layer.
    pub fn advance(&mut self, n: usize) {
        self.len += n;
    }
}
