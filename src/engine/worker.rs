//! The generation loop: admit requests, build one batched forward from every running sequence (decode tokens
//! plus prompt chunks, up to `prefill_chunk` prompt tokens a step), sample, emit, and retire finished or
//! cancelled sequences.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::logits::{self, HostLogits, Want};
use super::prefix::PrefixCache;
use super::sequence::Sequence;
use super::{EngineError, Shared, Submission};
use crate::model::{CausalLm, SeqStep};
use crate::tokenizer::TextTokenizer;

/// How long an otherwise idle thread waits before retrying delivery to a slow reader.
const DRAIN_POLL: Duration = Duration::from_millis(2);

pub(crate) struct Worker {
    model: Box<dyn CausalLm>,
    tokenizer: TextTokenizer,
    rx: Receiver<Submission>,
    shared: Arc<Shared>,
    running: Vec<Sequence>,
    /// Finished sequences whose last events are still being delivered.
    draining: Vec<Sequence>,
    /// The oldest waiting request, taken from the queue but not yet admitted: its KV cache does not fit yet.
    held: Option<Submission>,
    /// Caches of finished sequences, for prompts that begin the same way.
    prefix: PrefixCache,
}

impl Worker {
    pub fn new(
        model: Box<dyn CausalLm>,
        tokenizer: TextTokenizer,
        rx: Receiver<Submission>,
        shared: Arc<Shared>,
    ) -> Self {
        let prefix = PrefixCache::new(
            shared.config.prefix_cache_bytes,
            shared.config.kv_bytes_per_token(model.info()),
        );
        Self {
            prefix,
            model,
            tokenizer,
            rx,
            shared,
            running: Vec::new(),
            draining: Vec::new(),
            held: None,
        }
    }

    pub fn run(mut self) {
        while self.admit() {
            self.retire();
            if !self.running.is_empty() {
                self.step();
                self.retire();
            }
        }
    }

    /// Moves waiting requests into free slots, in arrival order, while their worst-case KV cache fits the
    /// budget; blocks when there is nothing to do. Returns false once every handle is gone and all work is
    /// delivered.
    fn admit(&mut self) -> bool {
        if self.running.is_empty() && self.held.is_none() {
            let first = if self.draining.is_empty() {
                match self.rx.recv() {
                    Ok(s) => Some(s),
                    Err(_) => return false,
                }
            } else {
                match self.rx.recv_timeout(DRAIN_POLL) {
                    Ok(s) => Some(s),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => {
                        self.retire();
                        return !self.draining.is_empty();
                    }
                }
            };
            self.held = first;
        }
        let (max, budget) = (
            self.shared.config.max_running,
            self.shared.config.kv_budget_bytes,
        );
        while self.running.len() < max {
            let Some(sub) = self.held.take().or_else(|| self.rx.try_recv().ok()) else {
                break;
            };
            let reserved: usize = self.running.iter().map(|s| s.kv_bytes).sum();
            if reserved + sub.kv_bytes > budget && !self.running.is_empty() {
                // The head of the queue waits for memory; nothing behind it may overtake it.
                self.held = Some(sub);
                break;
            }
            self.start(sub);
        }
        self.publish_occupancy();
        true
    }

    /// Slots and KV reservations in use, for `/metrics`.
    fn publish_occupancy(&self) {
        let stats = &self.shared.stats;
        stats.running.store(self.running.len(), Ordering::Relaxed);
        let reserved = self.running.iter().map(|s| s.kv_bytes).sum();
        stats.kv_reserved_bytes.store(reserved, Ordering::Relaxed);
    }

    fn start(&mut self, sub: Submission) {
        if sub.events.is_closed() {
            self.shared.stats.cancelled.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let positions = sub.req.prompt.len() + sub.max_new;
        // Prompt logprobs need the logits of every prompt position, which a cached prefix does not have.
        let lookup = if sub.req.prompt_logprobs.is_some() {
            None
        } else {
            self.prefix.lookup(&sub.req.prompt, positions)
        };
        let cache = match lookup {
            Some(hit) => {
                let stats = &self.shared.stats;
                stats.prefix_hits.fetch_add(1, Ordering::Relaxed);
                stats
                    .prefix_tokens_reused
                    .fetch_add(hit.reused as u64, Ordering::Relaxed);
                hit.cache
            }
            None => self
                .model
                .new_cache()
                .stored_as(self.shared.config.kv_dtype),
        };
        self.running.push(Sequence::new(sub, cache));
    }

    /// One forward pass over every running sequence.
    fn step(&mut self) {
        let began = Instant::now();
        self.run_step();
        let micros = |d: Duration| d.as_micros() as u64;
        self.shared
            .stats
            .step_micros
            .fetch_add(micros(began.elapsed()), Ordering::Relaxed);
    }

    /// One forward pass over the selected sequences, then sampling and emission.
    fn run_step(&mut self) {
        let began = Instant::now();
        // Decoding sequences take one token each. Sequences still in prefill share `prefill_chunk` prompt tokens,
        // in arrival order: a long prompt delays the others by one chunk per step at most, and many short
        // prompts arriving together start in one step.
        let chunk = self.shared.config.prefill_chunk;
        let mut budget = chunk;
        let mut selected = Vec::with_capacity(self.running.len());
        let mut inputs: Vec<Vec<u32>> = Vec::with_capacity(self.running.len());
        for (i, s) in self.running.iter().enumerate() {
            let input = match s.in_prefill() {
                false => s.pending_input(chunk),
                true if budget > 0 => s.pending_input(budget),
                true => continue,
            };
            if s.in_prefill() {
                budget -= input.len();
            }
            selected.push(i);
            inputs.push(input.to_vec());
        }
        // Per selected sequence: where its input starts, and whether it wants logits for every input token.
        let starts: Vec<usize> = selected.iter().map(|&i| self.running[i].fed()).collect();
        let all_logits: Vec<bool> = selected
            .iter()
            .map(|&i| self.running[i].wants_all_logits())
            .collect();
        let model = &self.model;
        let running = &mut self.running;
        let result = catch_unwind(AssertUnwindSafe(|| {
            let mut caches: Vec<_> = running.iter_mut().map(|s| s.cache.as_mut()).collect();
            let mut batch: Vec<SeqStep<'_>> = Vec::with_capacity(selected.len());
            for (k, &i) in selected.iter().enumerate() {
                let cache = caches[i].take().expect("running sequences hold a cache");
                batch.push(SeqStep {
                    tokens: &inputs[k],
                    cache,
                    all_logits: all_logits[k],
                });
            }
            model.forward(&mut batch)
        }));
        self.shared.stats.steps.fetch_add(1, Ordering::Relaxed);
        self.shared.stats.batch_size.observe(selected.len() as f64);
        let expected: usize = (0..selected.len())
            .map(|k| if all_logits[k] { inputs[k].len() } else { 1 })
            .sum();
        let wants: Vec<(usize, Want)> = selected
            .iter()
            .enumerate()
            .map(|(k, &i)| {
                let seq = &self.running[i];
                match (all_logits[k], seq.ready_to_sample(), seq.greedy_only()) {
                    (true, _, _) => (inputs[k].len(), Want::All),
                    (false, false, _) => (1, Want::Nothing),
                    (false, true, true) => (1, Want::LastArgmax),
                    (false, true, false) => (1, Want::Last),
                }
            })
            .collect();
        let logits = match result {
            Ok(Ok(l)) => match l.dim(0) {
                Ok(n) if n == expected => logits::fetch(&l, &wants).map_err(|e| e.to_string()),
                Ok(n) => Err(format!(
                    "the model returned {n} rows of logits, {expected} were asked for"
                )),
                Err(e) => Err(e.to_string()),
            },
            Ok(Err(e)) => Err(e.to_string()),
            Err(panic) => Err(panic_message(panic)),
        };
        self.shared
            .stats
            .forward_micros
            .fetch_add(began.elapsed().as_micros() as u64, Ordering::Relaxed);
        match logits {
            Ok(HostLogits { mut rows, ids }) => {
                let mut next_row = 0;
                for (k, &i) in selected.iter().enumerate() {
                    let seq = &mut self.running[i];
                    let n_rows = wants[k].0;
                    let last = next_row + n_rows - 1;
                    let mine = &mut rows[next_row..next_row + n_rows];
                    next_row += n_rows;
                    if all_logits[k] {
                        seq.accept_prompt_logits(mine, starts[k], &self.tokenizer);
                    }
                    if seq.ready_to_sample() {
                        match ids[last] {
                            Some(id) => seq.accept_argmax(id, &self.tokenizer),
                            None => seq.accept_logits(&mut mine[n_rows - 1], &self.tokenizer),
                        }
                        if seq.generated() == 1 {
                            let ttft = seq.ttft().unwrap_or_default().as_secs_f64();
                            self.shared.stats.ttft.observe(ttft);
                        }
                        self.shared
                            .stats
                            .tokens_generated
                            .fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Err(msg) => {
                tracing::error!(error = %msg, sequences = selected.len(), "model step failed");
                for &i in &selected {
                    self.running[i].fail(EngineError::Model(msg.clone()));
                }
            }
        }
    }

    /// Delivers pending events, drops sequences whose reader left, and moves finished ones out of the batch.
    fn retire(&mut self) {
        for seq in self.running.iter_mut().chain(self.draining.iter_mut()) {
            if !seq.cancelled && seq.reader_gone() {
                seq.cancel();
            }
            if !seq.cancelled {
                seq.flush();
            }
        }
        let (mut out, still): (Vec<_>, Vec<_>) = std::mem::take(&mut self.running)
            .into_iter()
            .partition(|s| s.finished || s.cancelled);
        self.running = still;
        for (tokens, cache) in out.iter_mut().filter_map(|s| s.reusable.take()) {
            self.prefix.insert(tokens, cache);
        }
        self.shared
            .stats
            .prefix_cache_bytes
            .store(self.prefix.used_bytes(), Ordering::Relaxed);
        let cancelled = out.iter().filter(|s| s.cancelled && !s.finished).count();
        self.shared
            .stats
            .cancelled
            .fetch_add(cancelled as u64, Ordering::Relaxed);
        let failed = out.iter().filter(|s| s.failed).count();
        self.shared
            .stats
            .failed
            .fetch_add(failed as u64, Ordering::Relaxed);
        self.draining.extend(out);
        self.draining.retain(|s| !s.cancelled && !s.delivered());
        self.publish_occupancy();
    }
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    crate::panic::message(p.as_ref())
        .unwrap_or("panic in model step")
        .to_string()
}
