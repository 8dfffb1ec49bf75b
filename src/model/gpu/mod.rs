//! Batched attention on a GPU: each step's rows (every new token of every sequence) and its sequences' cache
//! buffers go to the device in one table, and each layer then runs two kernels whatever the number of
//! sequences: one rotates queries and keys and writes keys and values into the caches, one attends. Without
//! it, candle's operations run one sequence at a time (about ten launches per sequence and layer), and a step
//! of many sequences costs many times one of a few.
//!
//! CUDA builds only (the kernels are in `attention.cu`, compiled at load with NVRTC). [`Kernels::load`] finds
//! none elsewhere, on other devices, or with `RILL_GPU_ATTENTION=0`, and the models keep candle's path.

#[cfg(feature = "cuda")]
mod cuda;

use std::sync::Arc;

use candle_core::{Device, Result, Tensor};

use super::attention::Scoring;
use super::rope::Rope;
use super::SeqStep;

/// The compiled kernels for one device.
pub struct Kernels {
    #[cfg(feature = "cuda")]
    inner: cuda::Kernels,
    #[cfg(not(feature = "cuda"))]
    never: std::convert::Infallible,
}

/// One step's table, made by [`Kernels::begin`]: the caches' room for the step's rows is reserved and counted.
pub struct Step {
    #[cfg(feature = "cuda")]
    inner: cuda::Step,
    #[cfg(not(feature = "cuda"))]
    never: std::convert::Infallible,
}

/// Whether `RILL_GPU_ATTENTION` leaves batched GPU attention on (anything but `0`).
fn wanted() -> bool {
    std::env::var("RILL_GPU_ATTENTION").as_deref() != Ok("0")
}

impl Kernels {
    /// The kernels for `dev` when it is a CUDA device and they compile; `None` otherwise (the reason logged
    /// when a CUDA device could not have them).
    pub fn load(dev: &Device) -> Option<Arc<Kernels>> {
        if dev.is_cpu() || !wanted() {
            return None;
        }
        #[cfg(feature = "cuda")]
        {
            match cuda::Kernels::load(dev) {
                Ok(inner) => {
                    tracing::info!("batched GPU attention: kernels compiled and loaded");
                    Some(Arc::new(Kernels { inner }))
                }
                Err(e) => {
                    tracing::warn!(
                        "batched GPU attention unavailable, using candle's per-sequence path: {e}"
                    );
                    None
                }
            }
        }
        #[cfg(not(feature = "cuda"))]
        None
    }

    /// Reserves room for every row of `batch` (`spans`: each sequence's rows, in order) in its cache and
    /// uploads the step's table. `None`, with nothing reserved, when the caches are of a type the kernels do
    /// not read (f32 and f16 they do) or heads are wider than 256.
    pub fn begin(
        &self,
        batch: &mut [SeqStep<'_>],
        spans: &[(usize, usize)],
        kv_heads: usize,
        head_dim: usize,
    ) -> Result<Option<Step>> {
        #[cfg(feature = "cuda")]
        {
            Ok(self
                .inner
                .begin(batch, spans, kv_heads, head_dim)?
                .map(|inner| Step { inner }))
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (batch, spans, kv_heads, head_dim);
            match self.never {}
        }
    }
}

/// The model's forward pass over a step's inputs, for [`Kernels::replay`]: given the batch, each input as a u32
/// tensor on the device, and the step, it returns the logits.
pub type DeviceForward<'a> = dyn FnMut(&mut [SeqStep<'_>], &[Tensor], &Step) -> Result<Tensor> + 'a;

impl Kernels {
    /// A decode step (every sequence one token, logits of its last row only) run from a CUDA graph of `forward`
    /// for this batch size: the first step of a size runs `forward` on the graph's input buffers, the second
    /// captures it, and every later one only refreshes the buffers (`inputs`: one u32 per row each, such as
    /// token ids and positions; the step's table) and replays the graph, one launch instead of hundreds. The
    /// room for the rows is reserved in the caches, as [`Self::begin`] does. `None`, with nothing reserved,
    /// for other steps, sizes whose capture failed (logged once; they run as before), and unless
    /// `RILL_GPU_GRAPHS=1`: graphs are opt-in until a GPU run has checked them (the first one, before candle's
    /// upload cache was used, replayed single streams 1.5× faster and then failed with an illegal address).
    pub fn replay(
        &self,
        batch: &mut [SeqStep<'_>],
        spans: &[(usize, usize)],
        kv_heads: usize,
        head_dim: usize,
        inputs: &[&[u32]],
        forward: &mut DeviceForward<'_>,
    ) -> Result<Option<Tensor>> {
        #[cfg(feature = "cuda")]
        {
            self.inner
                .replay(batch, spans, kv_heads, head_dim, inputs, forward)
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (batch, spans, kv_heads, head_dim, inputs, forward);
            match self.never {}
        }
    }
}

impl Step {
    /// One layer's attention for every row: `q` (`[rows, heads * head_dim]`), `k` and `v` (`[rows, kv_heads *
    /// head_dim]`, f32, rows may be strided views of one QKV product) are rotated by `rope` when given, keys
    /// and values written at each row's position, and each row attends over its sequence up to itself.
    /// Returns `[rows, heads * head_dim]`.
    pub fn attend(
        &self,
        layer: usize,
        (q, k, v): (&Tensor, &Tensor, &Tensor),
        rope: Option<&Rope>,
        scoring: &Scoring,
    ) -> Result<Tensor> {
        #[cfg(feature = "cuda")]
        {
            self.inner.attend(layer, (q, k, v), rope, scoring)
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (layer, q, k, v, rope, scoring);
            match self.never {}
        }
    }
}
