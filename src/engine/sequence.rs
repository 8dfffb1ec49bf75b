//! One request inside the generation thread: its tokens, KV cache, sampler, decoder, stop matcher and the
//! outbox that delivers events without ever blocking the thread on a slow reader.

use std::collections::VecDeque;
use std::time::Instant;

use tokio::sync::mpsc::error::TrySendError;

use super::grammar::Constraint;
use super::logprobs;
use super::sampler::Sampler;
use super::stop::{StopMatcher, StopOutcome};
use super::{
    Completion, EngineError, Event, FinishReason, PromptToken, Submission, Timings, TokenInfo,
    Usage,
};
use crate::model::SeqCache;
use crate::tokenizer::{IncrementalDecoder, TextTokenizer};

/// Tokens kept in reserve at the end of a constrained answer's budget: once only these are left, the answer is
/// steered to close (a quarter of the budget, 8 to 64 tokens), so a model that runs on inside a string or an
/// array still ends with complete JSON instead of being cut off.
fn closing_reserve(max_new: usize) -> usize {
    (max_new / 4).clamp(8, 64)
}

/// A running (or finishing) request.
pub struct Sequence {
    events: tokio::sync::mpsc::Sender<Event>,
    outbox: VecDeque<Event>,
    /// Taken as soon as the sequence finishes.
    pub cache: Option<SeqCache>,
    /// A finished sequence's cache with the tokens it holds, for the prefix cache.
    pub reusable: Option<(Vec<u32>, SeqCache)>,
    /// Prompt positions the cache started with (copied from the prefix cache).
    reused: usize,
    /// Worst-case KV cache bytes reserved for this sequence while it runs.
    pub kv_bytes: usize,
    /// Prompt followed by generated tokens.
    pub tokens: Vec<u32>,
    n_prompt: usize,
    max_new: usize,
    ignore_eos: bool,
    /// Alternatives to report with each generated token's log probability, when asked.
    logprobs: Option<usize>,
    /// Alternatives to report with each prompt token's log probability, when asked.
    prompt_logprobs: Option<usize>,
    /// The prompt's log probabilities gathered so far, chunk by chunk.
    prompt_tokens: Vec<PromptToken>,
    sampler: Sampler,
    /// The grammar the output must follow, if any.
    constraint: Option<Constraint>,
    decoder: IncrementalDecoder,
    stop: StopMatcher,
    submitted: Instant,
    admitted: Instant,
    first_token: Option<Instant>,
    /// Set once `Done` or `Error` is in the outbox.
    pub finished: bool,
    /// Set when it ended in an error (a model step, its grammar or its tokenizer failed).
    pub failed: bool,
    /// Set when the reader went away.
    pub cancelled: bool,
}

impl Sequence {
    pub(crate) fn new(sub: Submission, cache: SeqCache) -> Self {
        let reused = cache.len();
        let Submission {
            req,
            max_new,
            kv_bytes,
            events,
            submitted,
        } = sub;
        Self {
            events,
            outbox: VecDeque::new(),
            kv_bytes,
            cache: Some(cache),
            reusable: None,
            reused,
            n_prompt: req.prompt.len(),
            tokens: req.prompt,
            max_new,
            ignore_eos: req.ignore_eos,
            logprobs: req.logprobs,
            prompt_logprobs: req.prompt_logprobs,
            prompt_tokens: Vec::new(),
            sampler: Sampler::new(req.sampling),
            constraint: req.constraint,
            decoder: IncrementalDecoder::new(true),
            stop: StopMatcher::new(req.stop),
            submitted,
            admitted: Instant::now(),
            first_token: None,
            finished: false,
            failed: false,
            cancelled: false,
        }
    }

    /// Tokens already in the cache: the position of the next input token.
    pub fn fed(&self) -> usize {
        self.cache.as_ref().map_or(0, SeqCache::len)
    }

    /// Tokens not yet in the cache, at most `limit` of them: a prompt chunk, or the last sampled token.
    pub fn pending_input(&self, limit: usize) -> &[u32] {
        let fed = self.fed();
        let end = self.tokens.len().min(fed + limit.max(1));
        &self.tokens[fed..end]
    }

    /// Whether the prompt is still being prefilled.
    pub fn in_prefill(&self) -> bool {
        self.cache.as_ref().is_some_and(|c| c.len() < self.n_prompt)
    }

    /// Whether the next forward must return logits for every token of its chunk (prompt logprobs).
    pub fn wants_all_logits(&self) -> bool {
        self.prompt_logprobs.is_some() && self.in_prefill()
    }

    /// Takes the logits of a prompt chunk that started at position `start` (one row per position): row `p`
    /// scores prompt token `p + 1`. Emits [`Event::Prompt`] once the whole prompt is scored.
    pub fn accept_prompt_logits(&mut self, rows: &[Vec<f32>], start: usize, tok: &TextTokenizer) {
        let Some(k) = self.prompt_logprobs else {
            return;
        };
        if self.prompt_tokens.is_empty() && start == 0 {
            let id = self.tokens[0];
            self.prompt_tokens.push(PromptToken {
                id,
                bytes: tok.token_bytes(id),
                logprobs: None,
            });
        }
        for (p, row) in (start..).zip(rows) {
            let Some(&id) = self.tokens[..self.n_prompt].get(p + 1) else {
                break;
            };
            let lp = logprobs::compute(row, id, k, |t| tok.token_bytes(t));
            self.prompt_tokens.push(PromptToken {
                id,
                bytes: lp.chosen.bytes.clone(),
                logprobs: Some(lp),
            });
        }
        if self.prompt_tokens.len() == self.n_prompt {
            let all = std::mem::take(&mut self.prompt_tokens);
            self.emit(Event::Prompt(all));
        }
    }

    /// Whether the last forward consumed every known token, so its logits predict the next one.
    pub fn ready_to_sample(&self) -> bool {
        self.cache
            .as_ref()
            .is_some_and(|c| c.len() == self.tokens.len())
    }

    /// Time from submission to the first generated token, once there is one.
    pub fn ttft(&self) -> Option<std::time::Duration> {
        self.first_token.map(|t| t - self.submitted)
    }

    pub fn generated(&self) -> usize {
        self.tokens.len() - self.n_prompt
    }

    /// Samples from `logits`, then emits text and finishes as the token and the limits dictate.
    pub fn accept_logits(&mut self, logits: &mut [f32], tok: &TextTokenizer) {
        // Log probabilities come from the model's own distribution, so from the logits before the sampler's
        // bias, penalties and temperature touch them.
        let raw = self.logprobs.map(|k| (k, logits.to_vec()));
        let generated = self.generated();
        let closing = self.max_new - generated <= closing_reserve(self.max_new);
        let id = match self.constraint.as_mut() {
            None => self.sampler.sample(logits, &self.tokens, generated),
            Some(c) => {
                match self
                    .sampler
                    .sample_constrained(logits, &self.tokens, generated, c, closing)
                {
                    Ok(id) => id,
                    Err(e) => return self.fail(EngineError::Grammar(e.to_string())),
                }
            }
        };
        self.take_token(id, raw, tok)
    }

    /// Whether the next token is the plain argmax of the model's logits: greedy, no penalty or bias, no
    /// grammar and no log probabilities. The engine then may pick it where the logits are (on a GPU) and hand
    /// over only the id ([`Self::accept_argmax`]).
    pub fn greedy_only(&self) -> bool {
        self.constraint.is_none() && self.logprobs.is_none() && self.sampler.is_plain_argmax()
    }

    /// Takes `id`, the argmax of this sequence's logits, picked by the caller (see [`Self::greedy_only`]),
    /// then emits text and finishes as [`Self::accept_logits`] does.
    pub fn accept_argmax(&mut self, id: u32, tok: &TextTokenizer) {
        debug_assert!(self.greedy_only());
        self.take_token(id, None, tok)
    }

    /// Appends the picked `id` (with the raw logits when log probabilities are wanted), emits its text, and
    /// finishes on EOS, a stop sequence, a finished grammar or the token limit.
    fn take_token(&mut self, id: u32, raw: Option<(usize, Vec<f32>)>, tok: &TextTokenizer) {
        self.first_token.get_or_insert_with(Instant::now);
        self.tokens.push(id);
        let ends = !self.ignore_eos && tok.eos_ids.contains(&id);
        if !ends {
            if let Some(Err(e)) = self.constraint.as_mut().map(|c| c.consume(id)) {
                return self.fail(EngineError::Grammar(e.to_string()));
            }
        }
        let info = TokenInfo {
            id,
            logprobs: raw
                .filter(|_| !ends)
                .map(|(k, raw)| Box::new(logprobs::compute(&raw, id, k, |t| tok.token_bytes(t)))),
        };
        if ends {
            let rest = self.decoder.flush(tok).unwrap_or_default() + &self.stop.flush();
            self.emit(Event::Delta {
                text: rest,
                tokens: vec![info],
            });
            return self.finish(FinishReason::Eos);
        }
        let text = match self.decoder.push(tok, id) {
            Ok(t) => t,
            Err(e) => return self.fail(EngineError::Tokenizer(e.to_string())),
        };
        match self.stop.push(&text) {
            StopOutcome::Stopped { emit, stop } => {
                self.emit(Event::Delta {
                    text: emit,
                    tokens: vec![info],
                });
                self.finish(FinishReason::StopSequence(stop));
            }
            StopOutcome::Emit(text) => {
                self.emit(Event::Delta {
                    text,
                    tokens: vec![info],
                });
                let grammar_done = self.constraint.as_ref().is_some_and(|c| c.is_finished());
                if grammar_done || self.generated() >= self.max_new {
                    let rest = self.decoder.flush(tok).unwrap_or_default();
                    let rest = match self.stop.push(&rest) {
                        StopOutcome::Emit(t) => t + &self.stop.flush(),
                        StopOutcome::Stopped { emit, .. } => emit,
                    };
                    if !rest.is_empty() {
                        self.emit(Event::Delta {
                            text: rest,
                            tokens: vec![],
                        });
                    }
                    self.finish(if grammar_done {
                        FinishReason::Eos
                    } else {
                        FinishReason::Length
                    });
                }
            }
        }
    }

    fn finish(&mut self, finish: FinishReason) {
        let now = Instant::now();
        let first = self.first_token.unwrap_or(now);
        let timings = Timings {
            queued: self.admitted - self.submitted,
            prefill: first - self.admitted,
            ttft: first - self.submitted,
            decode: now - first,
            total: now - self.submitted,
        };
        let usage = Usage {
            prompt_tokens: self.n_prompt,
            completion_tokens: self.generated(),
            cached_prompt_tokens: self.reused,
        };
        self.emit(Event::Done(Completion {
            finish,
            usage,
            timings,
        }));
        self.release();
        if let Some(cache) = self.cache.take() {
            let fed = self.tokens[..cache.len()].to_vec();
            self.reusable = Some((fed, cache));
        }
    }

    /// Ends the sequence with an error event.
    pub fn fail(&mut self, err: EngineError) {
        self.failed = true;
        self.emit(Event::Error(err));
        self.release();
        // A failed step may have appended to some layers and not others: never reuse this cache.
        self.cache = None;
    }

    /// Marks the sequence finished; a normal finish then keeps its cache for reuse, an error drops it.
    fn release(&mut self) {
        self.finished = true;
    }

    /// Queues an event, merging it into a pending delta when the reader is behind.
    fn emit(&mut self, ev: Event) {
        if let (
            Some(Event::Delta { text, tokens }),
            Event::Delta {
                text: t2,
                tokens: k2,
            },
        ) = (self.outbox.back_mut(), &ev)
        {
            text.push_str(t2);
            tokens.extend_from_slice(k2);
            return;
        }
        self.outbox.push_back(ev);
    }

    /// Hands queued events to the channel without blocking; notes a reader that has gone away.
    pub fn flush(&mut self) {
        while let Some(ev) = self.outbox.pop_front() {
            match self.events.try_send(ev) {
                Ok(()) => {}
                Err(TrySendError::Full(ev)) => return self.outbox.push_front(ev),
                Err(TrySendError::Closed(_)) => return self.cancel(),
            }
        }
    }

    /// Stops the sequence because its reader went away, freeing its cache at once.
    pub fn cancel(&mut self) {
        self.cancelled = true;
        self.outbox.clear();
        self.cache = None;
    }

    /// Whether the reader dropped its stream.
    pub fn reader_gone(&self) -> bool {
        self.events.is_closed()
    }

    /// Nothing left to deliver.
    pub fn delivered(&self) -> bool {
        self.outbox.is_empty()
    }
}
