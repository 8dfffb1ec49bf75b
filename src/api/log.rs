//! The per-request record: a tracing span opened when a request is queued and one log line when it ends, with
//! the model, prompt tokens, queue time, TTFT, tokens, tokens/s and finish reason. Prompt text is never logged.

use std::time::Instant;

use tracing::Span;

use super::error::ApiError;
use crate::engine::{Completion, EngineError, FinishReason};

/// One request's span; logs its outcome once, or "cancelled" if dropped before it finished.
pub struct RequestLog {
    span: Span,
    started: Instant,
    done: bool,
}

impl RequestLog {
    pub fn new(route: &'static str, model: &str, prompt_tokens: usize, stream: bool) -> Self {
        let span = tracing::info_span!("request", route, model, prompt_tokens, stream);
        Self {
            span,
            started: Instant::now(),
            done: false,
        }
    }

    pub fn finished(&mut self, c: &Completion) {
        self.done = true;
        let t = &c.timings;
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        self.span.in_scope(|| {
            tracing::info!(
                queue_ms = ms(t.queued),
                ttft_ms = ms(t.ttft),
                tokens = c.usage.completion_tokens,
                tok_per_s = t.decode_tokens_per_sec(c.usage.completion_tokens),
                total_ms = ms(t.total),
                finish = finish_name(&c.finish),
                "request finished"
            )
        });
    }

    /// The request was refused before it was queued (a full queue, a prompt that cannot fit): logged as such,
    /// not as a client that went away.
    pub fn refused(&mut self, e: &ApiError) {
        self.done = true;
        self.span
            .in_scope(|| tracing::warn!(error = %e, "request refused"));
    }

    pub fn failed(&mut self, e: &EngineError) {
        self.done = true;
        self.span.in_scope(
            || tracing::warn!(error = %e, elapsed_ms = self.started.elapsed().as_secs_f64() * 1e3, "request failed"),
        );
    }
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        if !self.done {
            let ms = self.started.elapsed().as_secs_f64() * 1e3;
            self.span.in_scope(|| {
                tracing::info!(elapsed_ms = ms, "request cancelled: the client went away")
            });
        }
    }
}

fn finish_name(f: &FinishReason) -> &'static str {
    match f {
        FinishReason::Eos => "eos",
        FinishReason::StopSequence(_) => "stop_sequence",
        FinishReason::Length => "length",
    }
}
