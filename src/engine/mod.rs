//! The engine: a dedicated generation thread that owns the model and every sequence's KV cache.
//!
//! Callers [`EngineHandle::submit`] a tokenized [`GenRequest`] and get an [`EventStream`] of wire-neutral
//! [`Event`]s: text deltas with their token ids, then exactly one `Done` or `Error`. Dropping the stream cancels
//! the request: the thread notices before the sequence's next step and frees its cache.

mod argmax;
mod device_memory;
pub mod grammar;
pub mod histogram;
mod logits;
pub mod logprobs;
pub mod prefix;
pub mod sampler;
pub mod sequence;
pub mod stop;
mod worker;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::load::Loaded;
use crate::model::{ModelError, ModelInfo};
use crate::tokenizer::{ChatTemplate, TextTokenizer};
pub use sampler::SamplingParams;

/// Errors a request can meet, before or during generation.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("{0}")]
    Sampling(#[from] sampler::OutOfRange),
    #[error("at least one token must be asked for")]
    NoTokens,
    #[error("the prompt has {prompt} tokens, but the model's context is {context} tokens (at least one must remain for the answer)")]
    PromptTooLong { prompt: usize, context: usize },
    #[error("the server is busy: {0} requests are already waiting")]
    QueueFull(usize),
    #[error("the request may need {needed} bytes of KV cache (prompt plus maximum tokens), more than the server's budget of {budget} bytes; ask for fewer tokens")]
    ExceedsKvBudget { needed: usize, budget: usize },
    #[error("the generation thread has stopped")]
    Stopped,
    #[error("model failure: {0}")]
    Model(String),
    #[error("tokenizer failure: {0}")]
    Tokenizer(String),
    #[error("constrained decoding failed: {0}")]
    Grammar(String),
}

/// One generation request, already tokenized.
#[derive(Debug, Clone)]
pub struct GenRequest {
    pub prompt: Vec<u32>,
    pub sampling: SamplingParams,
    /// Most tokens to generate; `None` runs to the end of the context.
    pub max_tokens: Option<usize>,
    /// Strings that end generation; they never appear in the output.
    pub stop: Vec<String>,
    /// Keep going past the model's end-of-sequence tokens.
    pub ignore_eos: bool,
    /// Report each generated token's log probability and this many most likely alternatives.
    pub logprobs: Option<usize>,
    /// Report each prompt token's log probability (given the tokens before it) and this many alternatives,
    /// in one [`Event::Prompt`] before the first delta. Such a request computes its whole prompt: the prefix
    /// cache holds no logits.
    pub prompt_logprobs: Option<usize>,
    /// A grammar the output must follow (compiled by [`Shared::grammars`]); EOS only where it is complete.
    pub constraint: Option<grammar::Constraint>,
}

impl GenRequest {
    pub fn new(prompt: Vec<u32>) -> Self {
        Self {
            prompt,
            sampling: SamplingParams::default(),
            max_tokens: None,
            stop: Vec::new(),
            ignore_eos: false,
            logprobs: None,
            prompt_logprobs: None,
            constraint: None,
        }
    }
}

/// A generated token.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenInfo {
    pub id: u32,
    /// Its log probability and the most likely alternatives, when the request asked; never for an
    /// end-of-sequence token that ended the answer (it is not part of the text).
    pub logprobs: Option<Box<logprobs::Logprobs>>,
}

impl TokenInfo {
    pub fn new(id: u32) -> Self {
        Self { id, logprobs: None }
    }
}

/// A prompt token with its log probability given the tokens before it (none for the first token).
#[derive(Debug, Clone, PartialEq)]
pub struct PromptToken {
    pub id: u32,
    pub bytes: Vec<u8>,
    pub logprobs: Option<logprobs::Logprobs>,
}

/// Why generation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishReason {
    /// The model produced an end-of-sequence token.
    Eos,
    /// One of the request's stop strings appeared.
    StopSequence(String),
    /// `max_tokens` or the end of the context was reached.
    Length,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens whose KV cache came from the prefix cache instead of being computed.
    pub cached_prompt_tokens: usize,
}

/// Where a request's time went. `ttft` and `total` count from submission.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    pub queued: Duration,
    pub prefill: Duration,
    pub ttft: Duration,
    pub decode: Duration,
    pub total: Duration,
}

impl Timings {
    /// Generated tokens per second after the first one.
    pub fn decode_tokens_per_sec(&self, completion_tokens: usize) -> f64 {
        let s = self.decode.as_secs_f64();
        if completion_tokens > 1 && s > 0.0 {
            (completion_tokens - 1) as f64 / s
        } else {
            0.0
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub finish: FinishReason,
    pub usage: Usage,
    pub timings: Timings,
}

/// What the generation thread sends a request, in order: deltas, then one `Done` or `Error`.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The prompt's tokens and their log probabilities, once, before any delta (only when the request set
    /// `prompt_logprobs`).
    Prompt(Vec<PromptToken>),
    /// New text and the tokens that produced it. Text may be empty while a character or a possible stop
    /// string is held back; consecutive deltas may be merged when the reader is slow.
    Delta {
        text: String,
        tokens: Vec<TokenInfo>,
    },
    Done(Completion),
    Error(EngineError),
}

/// Tuning of the generation thread.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Sequences generating at once (batched into one forward per step).
    pub max_running: usize,
    /// Requests that may wait for a free slot; more are refused with `QueueFull`.
    pub queue_capacity: usize,
    /// Prompt tokens per step, shared by the prompts being prefilled in arrival order; long prompts are split
    /// so running streams keep moving.
    pub prefill_chunk: usize,
    /// Events buffered per request before deltas are merged.
    pub event_capacity: usize,
    /// Bytes of KV cache the running sequences may hold together, counting each at its worst case (prompt plus
    /// maximum tokens). A request that could never fit is refused; others wait, in order, until theirs fits.
    pub kv_budget_bytes: usize,
    /// Bytes of KV cache kept from finished requests for prompts that start the same way (0 disables it);
    /// on top of `kv_budget_bytes`.
    pub prefix_cache_bytes: usize,
    /// Most alternatives a request may ask for with each token's log probability.
    pub max_logprobs: usize,
    /// The type KV caches store keys and values in: f32, or f16 for half the memory.
    pub kv_dtype: candle_core::DType,
}

impl EngineConfig {
    /// KV-cache bytes one position costs with this configuration's KV type (models report f32 bytes).
    pub fn kv_bytes_per_token(&self, info: &ModelInfo) -> usize {
        info.kv_bytes_per_token / 4 * self.kv_dtype.size_in_bytes()
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_running: 8,
            queue_capacity: 64,
            prefill_chunk: 256,
            event_capacity: 64,
            kv_budget_bytes: 4 << 30,
            prefix_cache_bytes: 512 << 20,
            max_logprobs: 20,
            kv_dtype: candle_core::DType::F32,
        }
    }
}

/// Sequences per forward pass: the buckets of the batch-size histogram.
pub const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];
/// Seconds from submission to first token: the buckets of the TTFT histogram.
pub const TTFT_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Counters the generation thread keeps, readable from any thread.
#[derive(Debug)]
pub struct EngineStats {
    /// Forward passes run.
    pub steps: AtomicU64,
    /// Tokens generated, all requests.
    pub tokens_generated: AtomicU64,
    /// Sequences currently holding a slot (and a KV cache).
    pub running: AtomicUsize,
    /// KV-cache bytes those sequences reserve, each at its worst case.
    pub kv_reserved_bytes: AtomicUsize,
    /// Requests dropped by their reader before finishing.
    pub cancelled: AtomicU64,
    /// Requests failed by a model error or panic.
    pub failed: AtomicU64,
    /// Microseconds in forward passes, the logits' way to the host included.
    pub forward_micros: AtomicU64,
    /// Microseconds in whole steps: the forward pass, then sampling and emitting text.
    pub step_micros: AtomicU64,
    /// Sequences in each forward pass.
    pub batch_size: histogram::Histogram,
    /// Time to first token of each request, in seconds.
    pub ttft: histogram::Histogram,
    /// Requests that started from a prefix-cache copy.
    pub prefix_hits: AtomicU64,
    /// Prompt tokens not computed thanks to the prefix cache.
    pub prefix_tokens_reused: AtomicU64,
    /// KV bytes held by the prefix cache.
    pub prefix_cache_bytes: AtomicUsize,
}

impl Default for EngineStats {
    fn default() -> Self {
        Self {
            steps: AtomicU64::new(0),
            tokens_generated: AtomicU64::new(0),
            running: AtomicUsize::new(0),
            kv_reserved_bytes: AtomicUsize::new(0),
            cancelled: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            forward_micros: AtomicU64::new(0),
            step_micros: AtomicU64::new(0),
            batch_size: histogram::Histogram::new(BATCH_BUCKETS),
            ttft: histogram::Histogram::new(TTFT_BUCKETS),
            prefix_hits: AtomicU64::new(0),
            prefix_tokens_reused: AtomicU64::new(0),
            prefix_cache_bytes: AtomicUsize::new(0),
        }
    }
}

impl EngineStats {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// Read-only facts about the served model, shared with the HTTP layer.
pub struct Shared {
    pub info: ModelInfo,
    pub tokenizer: TextTokenizer,
    pub chat: ChatTemplate,
    pub stats: EngineStats,
    pub config: EngineConfig,
    pub loaded_at: std::time::SystemTime,
    pub load_time: Duration,
    /// The grammar compiler over this model's vocabulary, made on first use.
    grammars: std::sync::OnceLock<Result<grammar::GrammarCompiler, grammar::GrammarError>>,
}

impl Shared {
    /// Compiles grammars for this model (the vocabulary is prepared on the first call, then reused).
    pub fn grammars(&self) -> Result<&grammar::GrammarCompiler, grammar::GrammarError> {
        self.grammars
            .get_or_init(|| grammar::GrammarCompiler::new(&self.tokenizer, self.info.vocab_size))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// A fresh constraint for `g`; an invalid grammar is refused here, before anything is queued.
    pub fn constraint(
        &self,
        g: &grammar::Grammar,
    ) -> Result<grammar::Constraint, grammar::GrammarError> {
        self.grammars()?.compile(g)
    }

    /// A prompt's ids; a text that cannot fit the context is refused from its length when that is enough to
    /// know (before the memory encoding it would take), and one holding a token past the model's rows (a
    /// tokenizer with a few more tokens than its weights) once encoded.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>, crate::tokenizer::TokenizerError> {
        let ids = self
            .tokenizer
            .encode_within(text, self.info.context_length)?;
        let rows = self.info.vocab_size;
        match ids.iter().find(|&&id| id as usize >= rows) {
            Some(&id) => Err(crate::tokenizer::TokenizerError::OutsideModel {
                token: self.tokenizer.decode(&[id], false)?,
                id,
                rows,
            }),
            None => Ok(ids),
        }
    }
}

/// A request as it travels to the generation thread.
pub(crate) struct Submission {
    req: GenRequest,
    max_new: usize,
    /// Worst-case KV cache bytes this request may hold.
    kv_bytes: usize,
    events: tokio::sync::mpsc::Sender<Event>,
    submitted: Instant,
}

/// Readies a loaded model for its first request: warms it up (so that request pays no kernel compilation) and,
/// on a GPU, fits the KV budget to the memory left.
fn prepare(loaded: &Loaded, config: &mut EngineConfig) -> Result<(), ModelError> {
    let t0 = Instant::now();
    loaded.model.warm_up(config.kv_dtype)?;
    if !loaded.model.device().is_cpu() {
        logits::warm_up(loaded.model.as_ref(), config.kv_dtype)?;
    }
    tracing::info!(ms = t0.elapsed().as_millis() as u64, "model warmed up");
    if let Some((free, total)) = crate::model::device_memory(&loaded.model.device()) {
        if let Some(line) = device_memory::fit(config, free, total) {
            tracing::warn!("{line}");
        }
    }
    Ok(())
}

/// The cheap, cloneable front of the engine.
#[derive(Clone)]
pub struct EngineHandle {
    tx: crossbeam_channel::Sender<Submission>,
    shared: Arc<Shared>,
}

impl EngineHandle {
    /// Starts the generation thread, runs `load` on it, and returns once the model is ready.
    pub fn start<F>(load: F, config: EngineConfig) -> Result<Self, ModelError>
    where
        F: FnOnce() -> Result<Loaded, ModelError> + Send + 'static,
    {
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let (tx, rx) = crossbeam_channel::bounded(config.queue_capacity);
        std::thread::Builder::new()
            .name("rill-gen".into())
            .spawn(move || {
                let t0 = Instant::now();
                let loaded = match load() {
                    Ok(l) => l,
                    Err(e) => return drop(ready_tx.send(Err(e))),
                };
                let mut config = config;
                if let Err(e) = prepare(&loaded, &mut config) {
                    return drop(ready_tx.send(Err(e)));
                }
                let shared = Arc::new(Shared {
                    info: loaded.model.info().clone(),
                    tokenizer: loaded.tokenizer.clone(),
                    chat: loaded.chat,
                    stats: EngineStats::default(),
                    config: config.clone(),
                    loaded_at: std::time::SystemTime::now(),
                    load_time: t0.elapsed(),
                    grammars: std::sync::OnceLock::new(),
                });
                let _ = ready_tx.send(Ok(shared.clone()));
                worker::Worker::new(loaded.model, loaded.tokenizer, rx, shared).run();
            })
            .map_err(|e| ModelError::Io {
                path: "generation thread".into(),
                source: e,
            })?;
        let shared = ready_rx.recv().map_err(|_| {
            ModelError::Unsupported("the generation thread died while loading".into())
        })??;
        Ok(Self { tx, shared })
    }

    /// Validates and queues a request; the stream yields its events. Fails at once, before any event, when
    /// the prompt cannot fit or the queue is full.
    pub fn submit(&self, req: GenRequest) -> Result<EventStream, EngineError> {
        let context = self.shared.info.context_length;
        if req.prompt.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        req.sampling.check()?;
        if req.max_tokens == Some(0) {
            return Err(EngineError::NoTokens);
        }
        if req.prompt.len() >= context {
            return Err(EngineError::PromptTooLong {
                prompt: req.prompt.len(),
                context,
            });
        }
        let room = context - req.prompt.len();
        let max_new = req.max_tokens.map_or(room, |m| m.min(room));
        let kv_bytes =
            (req.prompt.len() + max_new) * self.shared.config.kv_bytes_per_token(&self.shared.info);
        let budget = self.shared.config.kv_budget_bytes;
        if kv_bytes > budget {
            return Err(EngineError::ExceedsKvBudget {
                needed: kv_bytes,
                budget,
            });
        }
        let (events, rx) = tokio::sync::mpsc::channel(self.shared.config.event_capacity.max(2));
        let sub = Submission {
            req,
            max_new,
            kv_bytes,
            events,
            submitted: Instant::now(),
        };
        self.tx.try_send(sub).map_err(|e| match e {
            crossbeam_channel::TrySendError::Full(_) => EngineError::QueueFull(self.tx.len()),
            crossbeam_channel::TrySendError::Disconnected(_) => EngineError::Stopped,
        })?;
        Ok(EventStream { rx })
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub fn info(&self) -> &ModelInfo {
        &self.shared.info
    }

    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.shared.tokenizer
    }

    /// Requests waiting for a slot.
    pub fn queued(&self) -> usize {
        self.tx.len()
    }
}

/// The events of one request. Dropping it cancels the request.
pub struct EventStream {
    rx: tokio::sync::mpsc::Receiver<Event>,
}

impl EventStream {
    pub async fn next(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// For synchronous callers (the CLI, tests); must not be called inside an async runtime.
    pub fn blocking_next(&mut self) -> Option<Event> {
        self.rx.blocking_recv()
    }

    /// Drains the stream synchronously: the full text, every token, and how it ended.
    pub fn collect_blocking(mut self) -> Result<(String, Vec<TokenInfo>, Completion), EngineError> {
        let (mut text, mut tokens) = (String::new(), Vec::new());
        while let Some(ev) = self.blocking_next() {
            match ev {
                Event::Delta {
                    text: t,
                    tokens: ts,
                } => {
                    text.push_str(&t);
                    tokens.extend(ts);
                }
                Event::Prompt(_) => {}
                Event::Done(c) => return Ok((text, tokens, c)),
                Event::Error(e) => return Err(e),
            }
        }
        Err(EngineError::Stopped)
    }
}
