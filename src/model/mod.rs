//! Model architectures behind one narrow trait: a batched causal LM whose KV caches belong to the caller.
//!
//! Every architecture takes a batch of sequences, each with its own [`SeqCache`] and position, runs one forward
//! pass over all of their new tokens together, and returns the logits of each sequence's last token (or of all
//! its new tokens, when asked, for prompt logprobs). The engine
//! owns the caches, so a cancelled or finished sequence frees its memory by dropping its cache.

pub mod attention;
pub mod decoder;
pub mod dense;
mod exp;
mod gate;
pub mod gpt2;
pub mod gpu;
pub mod kv_cache;
pub mod linear;
pub mod norm;
mod prefetch;
pub mod qlinear;
pub mod quant;
pub mod rope;
pub mod team;
pub mod weights;

use candle_core::{DType, Device, Tensor};

pub use kv_cache::SeqCache;

/// The widest instruction sets rill's own kernels may use: 2 = all the CPU has, 1 = AVX2 at most, 0 = portable
/// code only. Set by `RILL_KERNELS` (`avx2`, `scalar`) to measure an older CPU's path on a newer one.
pub fn kernel_cap() -> u8 {
    static CAP: std::sync::OnceLock<u8> = std::sync::OnceLock::new();
    *CAP.get_or_init(|| match std::env::var("RILL_KERNELS").as_deref() {
        Ok("avx2") => 1,
        Ok("scalar") => 0,
        _ => 2,
    })
}

/// Errors from resolving, loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model `{name}` not found; looked in: {}", looked.join(", "))]
    NotFound { name: String, looked: Vec<String> },
    #[error("unsupported model: {0}")]
    Unsupported(String),
    #[error("invalid model file {path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error("{path} holds {} GGUF files; name the one to load as {path}/<file>: {}", files.len(), files.join(", "))]
    SeveralGguf { path: String, files: Vec<String> },
    #[error("i/o error on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("hub error: {0}")]
    Hub(String),
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    /// The compute device asked for cannot be used.
    #[error("{0}")]
    Device(String),
    #[error("sequence of {needed} positions exceeds the model context of {context}")]
    ContextOverflow { needed: usize, context: usize },
}

/// What the engine needs to know about a loaded model.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// Short name used in logs and API responses.
    pub name: String,
    /// Architecture, e.g. `gpt2` or `llama`.
    pub arch: String,
    /// Weight format, e.g. `F32` or `Q4_1`.
    pub quantization: String,
    pub vocab_size: usize,
    /// Maximum positions a sequence may reach (prompt + generated).
    pub context_length: usize,
    /// Approximate parameter count.
    pub n_params: usize,
    /// Bytes of KV cache one position costs (all layers, K and V).
    pub kv_bytes_per_token: usize,
}

/// One sequence's part of a forward pass: the new tokens and the cache they extend.
pub struct SeqStep<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut SeqCache,
    /// Return logits for every one of `tokens`, not only the last (prompt logprobs).
    pub all_logits: bool,
}

impl<'a> SeqStep<'a> {
    /// A step that wants only the last token's logits.
    pub fn new(tokens: &'a [u32], cache: &'a mut SeqCache) -> Self {
        Self {
            tokens,
            cache,
            all_logits: false,
        }
    }

    /// Rows of logits this step returns.
    pub fn logit_rows(&self) -> usize {
        if self.all_logits {
            self.tokens.len()
        } else {
            1
        }
    }
}

/// A causal language model that runs batched forward passes over caller-owned caches.
pub trait CausalLm: Send {
    /// Runs the new tokens of every sequence in `batch` through the model, appending their keys and values to
    /// each sequence's cache, and returns logits as an f32 tensor of `[rows, vocab]`: for each sequence in
    /// order, [`SeqStep::logit_rows`] rows (its last token's, or all of its new tokens' with `all_logits`).
    fn forward(&self, batch: &mut [SeqStep<'_>]) -> Result<Tensor, ModelError>;
    /// A fresh, empty cache for a new sequence.
    fn new_cache(&self) -> SeqCache;
    fn info(&self) -> &ModelInfo;
    /// The device the weights and caches live on.
    fn device(&self) -> Device {
        Device::Cpu
    }
    /// Runs once through every path a request takes, so that the first request pays no one-time cost (a GPU
    /// compiling its kernels, the first touch of a mapped weight file). The default does nothing.
    fn warm_up(&self, _kv_dtype: DType) -> Result<(), ModelError> {
        Ok(())
    }
}

/// [`CausalLm::warm_up`] by forward passes on throwaway caches: a two-token prefill, a one-token prefill, one
/// batched decode step of both sequences (the paths a server's first requests take), then, on the CPU, a prompt
/// of up to 32 tokens (its pass sizes the kernels' scratch memory for many rows, which a first prompt would
/// otherwise pay for).
pub(crate) fn warm_up_by_forward(model: &dyn CausalLm, kv_dtype: DType) -> Result<(), ModelError> {
    let (context, vocab) = (model.info().context_length, model.info().vocab_size);
    if context < 4 || vocab < 3 {
        return Ok(());
    }
    let mut a = model.new_cache().stored_as(kv_dtype);
    let mut b = model.new_cache().stored_as(kv_dtype);
    model
        .forward(&mut [SeqStep::new(&[0, 1], &mut a)])?
        .to_vec2::<f32>()?;
    model
        .forward(&mut [SeqStep::new(&[0], &mut b)])?
        .to_vec2::<f32>()?;
    model
        .forward(&mut [SeqStep::new(&[2], &mut a), SeqStep::new(&[1], &mut b)])?
        .to_vec2::<f32>()?;
    if !model.device().is_cpu() {
        // A GPU's engine warm-up runs a prompt chunk of its own (`engine::logits::warm_up`).
        return Ok(());
    }
    let prompt: Vec<u32> = (0..context.min(32) as u32)
        .map(|i| i % vocab as u32)
        .collect();
    let mut c = model.new_cache().stored_as(kv_dtype);
    model
        .forward(&mut [SeqStep::new(&prompt, &mut c)])?
        .to_vec2::<f32>()?;
    Ok(())
}

/// The type a loader keeps a matrix of so many values in (from `--dtype`, the checkpoint and the device).
pub type KeepAs<'a> = &'a dyn Fn(usize) -> DType;

/// `BF16`, `F16`, `F32`: a weight type as model listings name it.
pub fn dtype_label(dtype: DType) -> String {
    format!("{dtype:?}").to_uppercase()
}

/// Free and total bytes of a GPU's memory; `None` on the CPU (and on GPUs rill cannot ask).
pub fn device_memory(device: &Device) -> Option<(usize, usize)> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => d.cuda_stream().context().mem_get_info().ok(),
        _ => None,
    }
}

/// Checks that every sequence in a batch still fits in the context after its new tokens.
pub(crate) fn check_context(batch: &[SeqStep<'_>], context: usize) -> Result<(), ModelError> {
    for s in batch {
        let needed = s.cache.len() + s.tokens.len();
        if needed > context {
            return Err(ModelError::ContextOverflow { needed, context });
        }
    }
    Ok(())
}

/// Rows `[start, start+len)` for each sequence when all new tokens of a batch are stacked into one matrix.
pub(crate) fn row_spans(batch: &[SeqStep<'_>]) -> Vec<(usize, usize)> {
    let mut start = 0;
    batch
        .iter()
        .map(|s| {
            let span = (start, s.tokens.len());
            start += s.tokens.len();
            span
        })
        .collect()
}

/// Picks the rows each sequence wants logits for out of the stacked hidden states: `[n_tokens, d]` →
/// `[rows, d]` (the last row of each sequence, or all of its rows with `all_logits`).
pub(crate) fn output_rows(
    xs: &Tensor,
    batch: &[SeqStep<'_>],
    spans: &[(usize, usize)],
) -> candle_core::Result<Tensor> {
    if batch
        .iter()
        .zip(spans)
        .all(|(b, &(_, l))| b.logit_rows() == l)
    {
        return Ok(xs.clone());
    }
    let idx: Vec<u32> = batch
        .iter()
        .zip(spans)
        .flat_map(|(b, &(s, l))| (s + l - b.logit_rows()..s + l).map(|r| r as u32))
        .collect();
    let idx = Tensor::new(idx.as_slice(), xs.device())?;
    xs.index_select(&idx, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records the token counts of every forward pass.
    struct Recorder {
        info: ModelInfo,
        calls: Mutex<Vec<Vec<usize>>>,
    }

    impl CausalLm for Recorder {
        fn forward(&self, batch: &mut [SeqStep<'_>]) -> Result<Tensor, ModelError> {
            self.calls
                .lock()
                .unwrap()
                .push(batch.iter().map(|s| s.tokens.len()).collect());
            for s in batch.iter_mut() {
                s.cache.advance(s.tokens.len());
            }
            Ok(Tensor::zeros(
                (batch.len(), self.info.vocab_size),
                DType::F32,
                &Device::Cpu,
            )?)
        }
        fn new_cache(&self) -> SeqCache {
            SeqCache::new(1)
        }
        fn info(&self) -> &ModelInfo {
            &self.info
        }
    }

    #[test]
    fn warm_up_runs_prefills_a_batched_decode_step_and_a_longer_prompt() {
        let m = Recorder {
            info: ModelInfo {
                name: "r".into(),
                arch: "r".into(),
                quantization: "F32".into(),
                vocab_size: 8,
                context_length: 16,
                n_params: 0,
                kv_bytes_per_token: 0,
            },
            calls: Mutex::new(Vec::new()),
        };
        warm_up_by_forward(&m, DType::F32).unwrap();
        assert_eq!(
            *m.calls.lock().unwrap(),
            vec![vec![2], vec![1], vec![1, 1], vec![16]]
        );
    }
}
