//! `rill bench`: load-test any OpenAI-compatible streaming endpoint (rill, llama.cpp, vLLM, ...).
//!
//! For each concurrency level `c`, [`run`] first sends the warm-up requests (untimed, one at a time), then starts
//! `c` clients at once, each sending `rounds` streaming requests back to back, and times the level from the
//! first send to the last answer. Prompts rotate through the list with one counter over the whole run, so
//! requests in flight together, and consecutive ones, use different prompts. Files: [`sse`] (SSE and OpenAI
//! frames), [`client`] (one timed request), [`stats`] (percentiles, summaries), [`report`] (table and JSON),
//! [`prompts`], [`error`].

pub mod client;
pub mod error;
pub mod prompts;
pub mod report;
pub mod sse;
pub mod stats;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

pub use client::{Endpoint, RequestOptions, RequestRecord, Target, TokenSource};
pub use error::{BenchError, RequestError};
pub use stats::LevelSummary;

/// Everything a run needs besides the server.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// One measured run per entry, in order.
    pub concurrency: Vec<usize>,
    /// Requests each client sends back to back.
    pub rounds: usize,
    /// Untimed requests before each level.
    pub warmup: usize,
    /// Per-request limit.
    pub timeout_secs: f64,
    #[serde(flatten)]
    pub request: RequestOptions,
    pub prompts: Vec<String>,
}

impl Settings {
    pub fn validate(&self) -> Result<(), BenchError> {
        let bad = |m: &str| Err(BenchError::Invalid(m.to_string()));
        if self.concurrency.is_empty() || self.concurrency.contains(&0) {
            return bad("--concurrency needs one or more levels, each at least 1");
        }
        if self.rounds == 0 {
            return bad("--rounds must be at least 1");
        }
        if self.request.max_tokens == 0 {
            return bad("--max-tokens must be at least 1");
        }
        if self.prompts.is_empty() {
            return bad("no prompts");
        }
        if !(self.timeout_secs.is_finite() && self.timeout_secs > 0.0) {
            return bad("--timeout-secs must be a positive number");
        }
        Ok(())
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.timeout_secs)
    }
}

/// One measured concurrency level.
#[derive(Debug, Clone, Serialize)]
pub struct Level {
    pub summary: LevelSummary,
    /// In `index` order.
    pub requests: Vec<RequestRecord>,
    /// Warm-up requests that failed (they are not measured, but a failing warm-up usually explains the rest).
    pub warmup_errors: Vec<String>,
}

/// Runs every level in order, calling `on_level` as each one finishes.
pub async fn run(
    target: &Target,
    settings: &Settings,
    mut on_level: impl FnMut(&Level),
) -> Vec<Level> {
    let mut next_prompt = 0usize;
    let mut levels = Vec::new();
    for &c in &settings.concurrency {
        let level = run_level(target, settings, c, &mut next_prompt).await;
        on_level(&level);
        levels.push(level);
    }
    levels
}

async fn run_level(
    target: &Target,
    settings: &Settings,
    c: usize,
    next_prompt: &mut usize,
) -> Level {
    let n_prompts = settings.prompts.len();
    let mut warmup_errors = Vec::new();
    for _ in 0..settings.warmup {
        let prompt = &settings.prompts[*next_prompt % n_prompts];
        *next_prompt += 1;
        let r = target
            .stream(&settings.request, prompt, settings.timeout())
            .await;
        warmup_errors.extend(r.error);
    }
    let base = *next_prompt;
    *next_prompt += c * settings.rounds;
    let shared = Arc::new((target.clone(), settings.clone()));
    let start = Instant::now();
    let tasks: Vec<_> = (0..c)
        .map(|client| {
            let shared = shared.clone();
            tokio::spawn(async move {
                let (target, settings) = &*shared;
                let mut out = Vec::with_capacity(settings.rounds);
                for round in 0..settings.rounds {
                    let index = round * c + client;
                    let prompt_index = (base + index) % settings.prompts.len();
                    let prompt = &settings.prompts[prompt_index];
                    let mut r = target
                        .stream(&settings.request, prompt, settings.timeout())
                        .await;
                    (r.index, r.client, r.round, r.prompt_index) =
                        (index, client, round, prompt_index);
                    out.push(r);
                }
                out
            })
        })
        .collect();
    let mut requests = Vec::with_capacity(c * settings.rounds);
    for t in tasks {
        // A client task only panics on a bug; surface it rather than under-count.
        requests.extend(t.await.expect("a bench client task panicked"));
    }
    let wall_s = start.elapsed().as_secs_f64();
    requests.sort_by_key(|r| r.index);
    let summary = LevelSummary::of(c, wall_s, settings.request.max_tokens, &requests);
    Level {
        summary,
        requests,
        warmup_errors,
    }
}
