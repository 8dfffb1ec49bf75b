//! Per-sequence KV cache: one growable key/value buffer per layer, owned by the engine's sequence.

use candle_core::{DType, Device, Result, Tensor};

/// Initial capacity, in positions, of a new cache; it grows on demand.
const INITIAL_POSITIONS: usize = 128;

/// One layer's keys and values: buffers `[kv_heads, capacity, head_dim]` (allocated at the first append, grown
/// by `grow_by` positions at a time, the new room zeroed) of which the first `len` positions are filled.
#[derive(Debug, Clone)]
struct LayerKv {
    k: Option<Tensor>,
    v: Option<Tensor>,
    len: usize,
    capacity: usize,
    grow_by: usize,
}

impl LayerKv {
    fn new(capacity: usize) -> Self {
        Self {
            k: None,
            v: None,
            len: 0,
            capacity,
            grow_by: capacity,
        }
    }

    /// Makes room for `n` more positions of heads shaped like `like` (`[kv_heads, _, head_dim]`), allocating
    /// or growing both buffers; returns them.
    fn room(
        &mut self,
        n: usize,
        like: (usize, usize),
        dtype: DType,
        dev: &Device,
    ) -> Result<(&Tensor, &Tensor)> {
        let (heads, hd) = like;
        if self.k.is_none() {
            while self.len + n > self.capacity {
                self.capacity += self.grow_by;
            }
            self.k = Some(Tensor::zeros((heads, self.capacity, hd), dtype, dev)?);
            self.v = Some(Tensor::zeros((heads, self.capacity, hd), dtype, dev)?);
        }
        let mut grow = 0;
        while self.len + n > self.capacity + grow {
            grow += self.grow_by;
        }
        if grow > 0 {
            for t in [&mut self.k, &mut self.v].into_iter().flatten() {
                let more = Tensor::zeros((heads, grow, hd), t.dtype(), t.device())?;
                *t = Tensor::cat(&[&*t, &more], 1)?;
            }
            self.capacity += grow;
        }
        match (&self.k, &self.v) {
            (Some(k), Some(v)) => Ok((k, v)),
            _ => unreachable!("both buffers were allocated above"),
        }
    }

    /// Writes `k`, `v` (`[kv_heads, new, head_dim]`) after the filled positions.
    fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<()> {
        let (heads, n, hd) = k.dims3()?;
        let len = self.len;
        let (kb, vb) = self.room(n, (heads, hd), k.dtype(), k.device())?;
        kb.slice_set(k, 1, len)?;
        vb.slice_set(v, 1, len)?;
        self.len += n;
        Ok(())
    }

    /// The filled positions, `[kv_heads, len, head_dim]` views.
    fn filled(&self) -> Result<Option<(Tensor, Tensor)>> {
        match (&self.k, &self.v) {
            (Some(k), Some(v)) => Ok(Some((k.narrow(1, 0, self.len)?, v.narrow(1, 0, self.len)?))),
            _ => Ok(None),
        }
    }
}

/// The keys and values of one sequence, every layer; `len` is the number of positions already processed.
pub struct SeqCache {
    layers: Vec<LayerKv>,
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
            .map(|_| LayerKv::new(INITIAL_POSITIONS))
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
        let l = &mut self.layers[layer];
        l.append(&k.to_dtype(self.dtype)?, &v.to_dtype(self.dtype)?)?;
        match l.filled()? {
            Some(kv) => Ok(kv),
            None => candle_core::bail!("a cache layer without a buffer after an append"),
        }
    }

    /// Counts `n` more positions in every layer without writing them (the room is zeroed when it is new), for a
    /// step that writes them itself (a team step, or a GPU step's kernels), and returns each layer's whole key
    /// and value buffers (`[kv_heads, allocated, head_dim]`, on `dev`). Every buffer stays where it is until the
    /// next call that grows the cache.
    pub fn reserve(
        &mut self,
        n: usize,
        kv_heads: usize,
        head_dim: usize,
        dev: &Device,
    ) -> Result<Vec<(Tensor, Tensor)>> {
        let mut all = Vec::with_capacity(self.layers.len());
        for l in &mut self.layers {
            let (k, v) = l.room(n, (kv_heads, head_dim), self.dtype, dev)?;
            all.push((k.clone(), v.clone()));
            l.len += n;
        }
        Ok(all)
    }

    /// The type keys and values are stored in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Keys and values of `layer` so far, if any were appended.
    pub fn layer(&self, layer: usize) -> Option<(Tensor, Tensor)> {
        self.layers[layer].filled().ok()?
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
            let mut copy = LayerKv::new(capacity);
            if let Some((k, v)) = l.filled()? {
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
        self.layers.first().map_or(self.len, |l| l.capacity)
    }

    /// Records that `n` more positions were appended to every layer.
    pub fn advance(&mut self, n: usize) {
        self.len += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Reserved room grows the buffers by the initial capacity at a time, keeps what was written, and is
    /// counted: the next append lands after it.
    #[test]
    fn reserve_grows_keeps_and_counts() -> Result<()> {
        let dev = Device::Cpu;
        let mut c = SeqCache::new(2);
        let k = Tensor::arange(0f32, 6.0, &dev)?.reshape((2, 1, 3))?;
        c.append(0, &k, &k)?;
        c.append(1, &k, &k)?;
        let bufs = c.reserve(INITIAL_POSITIONS, 2, 3, &dev)?;
        assert_eq!(bufs.len(), 2);
        assert_eq!(bufs[0].0.dims(), &[2, 2 * INITIAL_POSITIONS, 3]);
        assert_eq!(c.allocated_positions(), 2 * INITIAL_POSITIONS);
        let (k0, _) = c.layer(0).expect("layer 0 holds positions");
        assert_eq!(k0.dims(), &[2, 1 + INITIAL_POSITIONS, 3]);
        assert_eq!(
            k0.narrow(1, 0, 1)?.flatten_all()?.to_vec1::<f32>()?,
            k.flatten_all()?.to_vec1::<f32>()?
        );
        let (k1, _) = c.append(1, &k, &k)?;
        assert_eq!(k1.dims(), &[2, 2 + INITIAL_POSITIONS, 3]);
        let last = k1
            .narrow(1, 1 + INITIAL_POSITIONS, 1)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert_eq!(last, k.flatten_all()?.to_vec1::<f32>()?);
        Ok(())
    }
}
