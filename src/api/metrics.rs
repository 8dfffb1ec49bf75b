//! `GET /metrics`: the engine's counters in Prometheus text format (running and queued requests, forward
//! passes, generated tokens, cancellations and failures, prefix-cache reuse, and histograms of batch size and time to first
//! token). Tokens per second is `rate(rill_generated_tokens_total[1m])`.

use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::openai::error::OpenAiError;
use super::state::AppState;
use crate::engine::histogram::Histogram;
use crate::engine::EngineStats;

pub fn routes() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

async fn metrics(State(state): State<AppState>) -> Result<Response, OpenAiError> {
    let engine = state.engine()?;
    let mut body = render(&engine.shared().stats, engine.queued(), state.model_name());
    let _ = writeln!(
        body,
        "# HELP rill_browser_streams Resumable browser streams held (running, or kept for a reader to come back).\n\
         # TYPE rill_browser_streams gauge\nrill_browser_streams{{model=\"{}\"}} {}",
        escape(state.model_name()),
        state.streams().len()
    );
    Ok((
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        body,
    )
        .into_response())
}

/// A Prometheus label value.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"")
}

/// The Prometheus exposition of `stats`; every series carries the served model's name.
pub fn render(stats: &EngineStats, queued: usize, model: &str) -> String {
    let label = format!("model=\"{}\"", escape(model));
    let mut out = String::new();
    let mut scalar = |name: &str, kind: &str, help: &str, v: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{{label}}} {v}"
        );
    };
    scalar(
        "rill_running_sequences",
        "gauge",
        "Sequences generating now (each holds a KV cache).",
        stats.running.load(Relaxed) as u64,
    );
    scalar(
        "rill_kv_reserved_bytes",
        "gauge",
        "KV-cache bytes the running sequences reserve (each at its worst case), against --kv-budget-mb.",
        stats.kv_reserved_bytes.load(Relaxed) as u64,
    );
    scalar(
        "rill_queued_requests",
        "gauge",
        "Requests waiting for a free slot.",
        queued as u64,
    );
    scalar(
        "rill_steps_total",
        "counter",
        "Forward passes run.",
        stats.steps.load(Relaxed),
    );
    scalar(
        "rill_step_forward_microseconds_total",
        "counter",
        "Time in forward passes, the logits' way to the host included.",
        stats.forward_micros.load(Relaxed),
    );
    scalar(
        "rill_step_microseconds_total",
        "counter",
        "Time in whole steps: forward passes, then sampling and emitting text.",
        stats.step_micros.load(Relaxed),
    );
    scalar(
        "rill_generated_tokens_total",
        "counter",
        "Tokens generated, all requests.",
        stats.tokens_generated.load(Relaxed),
    );
    scalar(
        "rill_cancelled_requests_total",
        "counter",
        "Requests whose client went away before the end.",
        stats.cancelled.load(Relaxed),
    );
    scalar(
        "rill_failed_requests_total",
        "counter",
        "Requests that ended in an error: a model step, their grammar or their tokenizer failed.",
        stats.failed.load(Relaxed),
    );
    scalar(
        "rill_prefix_cache_hits_total",
        "counter",
        "Requests that started from a copy of a cached prompt prefix.",
        stats.prefix_hits.load(Relaxed),
    );
    scalar(
        "rill_prefix_cache_reused_tokens_total",
        "counter",
        "Prompt tokens taken from the prefix cache instead of computed.",
        stats.prefix_tokens_reused.load(Relaxed),
    );
    scalar(
        "rill_prefix_cache_bytes",
        "gauge",
        "KV-cache bytes held by the prefix cache.",
        stats.prefix_cache_bytes.load(Relaxed) as u64,
    );
    histogram(
        &mut out,
        "rill_batch_size",
        "Sequences in each forward pass.",
        &stats.batch_size,
        &label,
    );
    histogram(
        &mut out,
        "rill_ttft_seconds",
        "Time from request to first token.",
        &stats.ttft,
        &label,
    );
    out
}

fn histogram(out: &mut String, name: &str, help: &str, h: &Histogram, label: &str) {
    let c = h.snapshot();
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (bound, n) in h.bounds().iter().zip(&c.buckets) {
        let _ = writeln!(out, "{name}_bucket{{{label},le=\"{bound}\"}} {n}");
    }
    let _ = writeln!(out, "{name}_bucket{{{label},le=\"+Inf\"}} {}", c.count);
    let _ = writeln!(
        out,
        "{name}_sum{{{label}}} {}\n{name}_count{{{label}}} {}",
        c.sum, c.count
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_histograms() {
        let stats = EngineStats::default();
        stats.steps.store(3, Relaxed);
        for b in [1.0, 1.0, 3.0] {
            stats.batch_size.observe(b);
        }
        let text = render(&stats, 2, "smollm2");
        assert!(
            text.contains(
                "# TYPE rill_steps_total counter\nrill_steps_total{model=\"smollm2\"} 3\n"
            ),
            "{text}"
        );
        assert!(text.contains("rill_queued_requests{model=\"smollm2\"} 2\n"));
        assert!(text.contains("rill_batch_size_bucket{model=\"smollm2\",le=\"2\"} 2\n"));
        assert!(text.contains("rill_batch_size_bucket{model=\"smollm2\",le=\"4\"} 3\n"));
        assert!(text.contains("rill_batch_size_bucket{model=\"smollm2\",le=\"+Inf\"} 3\nrill_batch_size_sum{model=\"smollm2\"} 5\nrill_batch_size_count{model=\"smollm2\"} 3\n"));
        assert!(text.contains("rill_ttft_seconds_count{model=\"smollm2\"} 0\n"));
    }
}
