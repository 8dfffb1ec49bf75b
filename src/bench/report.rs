//! The results: an aligned table (one row per concurrency level) for people, and a JSON document (server,
//! settings, per-level summaries and every request record) for scripts.
//!
//! JSON shape:
//!
//! ```text
//! { "tool": "rill bench", "version": "0.1.0",
//!   "server": { "url": "http://127.0.0.1:8080", "model": "smollm2" },
//!   "settings": { "concurrency": [1, 4], "rounds": 2, "warmup": 1, "timeout_secs": 300.0,
//!                 "endpoint": "chat", "model": "smollm2", "max_tokens": 128, "temperature": 0.0,
//!                 "ignore_eos": true, "ban_token_ids": [], "prompts": ["...", ...] },
//!   "levels": [ { "summary": { "concurrency": 1, "requests": 2, "ok": 2, "failed": 0, "short": 0,
//!                              "wall_s": 2.1, "completion_tokens": 256, "aggregate_tok_s": 121.9,
//!                              "ttft_ms":      { "n", "mean", "min", "p50", "p95", "max" },
//!                              "decode_tok_s": { ... }, "e2e_ms": { ... }, "gap_ms": { ... } },
//!                 "requests": [ { "index", "client", "round", "prompt_index", "status", "error",
//!                                 "ttft_ms", "e2e_ms", "completion_tokens", "token_source" ("usage" or
//!                                 "chunks"), "prompt_tokens", "content_chunks", "decode_tok_s",
//!                                 "finish_reason", "gaps_ms": [...] }, ... ],
//!                 "warmup_errors": [] }, ... ] }
//! ```
//!
//! Absent measurements (no successful request, fewer than two tokens) are `null`.

use std::fmt::Write;

use serde::Serialize;

use super::stats::LevelSummary;
use super::{Level, Settings};

/// The server that was measured.
#[derive(Debug, Clone, Serialize)]
pub struct ServerInfo {
    pub url: String,
    pub model: String,
}

/// Everything a run produced.
#[derive(Debug, Serialize)]
pub struct Report<'a> {
    pub tool: &'static str,
    pub version: &'static str,
    pub server: ServerInfo,
    pub settings: &'a Settings,
    pub levels: &'a [Level],
}

impl<'a> Report<'a> {
    pub fn new(server: ServerInfo, settings: &'a Settings, levels: &'a [Level]) -> Self {
        Self {
            tool: "rill bench",
            version: env!("CARGO_PKG_VERSION"),
            server,
            settings,
            levels,
        }
    }

    pub fn json(&self) -> String {
        // Only plain data: serialising cannot fail.
        serde_json::to_string_pretty(self).expect("the report serialises")
    }

    /// The header line, the table and a legend.
    pub fn table(&self) -> String {
        let s = self.settings;
        let mut out = format!(
            "{}  model {}  {}  max_tokens {}  rounds {}  temperature {}{}\n",
            self.server.url,
            self.server.model,
            s.request.endpoint.path(),
            s.request.max_tokens,
            s.rounds,
            s.request.temperature,
            if s.request.ignore_eos {
                "  ignore_eos"
            } else {
                ""
            },
        );
        let head = [
            "conc",
            "ok/req",
            "wall s",
            "agg tok/s",
            "ttft p50",
            "ttft p95",
            "ttft mean",
            "ttft max",
            "dec p50",
            "dec p95",
            "e2e p50",
            "e2e p95",
            "short",
        ];
        let rows: Vec<Vec<String>> = self.levels.iter().map(|l| row(&l.summary)).collect();
        let widths: Vec<usize> = (0..head.len())
            .map(|i| {
                rows.iter()
                    .map(|r| r[i].len())
                    .fold(head[i].len(), usize::max)
            })
            .collect();
        for cells in std::iter::once(head.map(str::to_string).to_vec()).chain(rows) {
            let line: Vec<String> = cells
                .iter()
                .zip(&widths)
                .map(|(c, &w)| format!("{c:>w$}"))
                .collect();
            let _ = writeln!(out, "{}", line.join("  "));
        }
        out.push_str(
            "times in ms; agg = completion tokens of all requests / wall time; dec = one request's decode tok/s; \
             short = ok requests that stopped before max_tokens\n",
        );
        out
    }
}

fn num(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".to_string(), |x| format!("{x:.decimals$}"))
}

fn row(s: &LevelSummary) -> Vec<String> {
    vec![
        s.concurrency.to_string(),
        format!("{}/{}", s.ok, s.requests),
        format!("{:.2}", s.wall_s),
        format!("{:.1}", s.aggregate_tok_s),
        num(s.ttft_ms.p50, 1),
        num(s.ttft_ms.p95, 1),
        num(s.ttft_ms.mean, 1),
        num(s.ttft_ms.max, 1),
        num(s.decode_tok_s.p50, 1),
        num(s.decode_tok_s.p95, 1),
        num(s.e2e_ms.p50, 0),
        num(s.e2e_ms.p95, 0),
        s.short.to_string(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::client::{Endpoint, RequestOptions};
    use crate::bench::stats::Dist;

    fn settings() -> Settings {
        Settings {
            concurrency: vec![1, 12],
            rounds: 1,
            warmup: 0,
            timeout_secs: 5.0,
            request: RequestOptions {
                endpoint: Endpoint::Chat,
                model: "m".into(),
                max_tokens: 8,
                temperature: 0.0,
                ignore_eos: true,
                ban_token_ids: vec![],
            },
            prompts: vec!["p".into()],
        }
    }

    fn level(c: usize, ttft: Dist) -> Level {
        Level {
            summary: LevelSummary {
                concurrency: c,
                requests: c,
                ok: c,
                failed: 0,
                short: 0,
                wall_s: 1.0,
                completion_tokens: 8 * c as u64,
                aggregate_tok_s: 8.0 * c as f64,
                ttft_ms: ttft,
                decode_tok_s: Dist::default(),
                e2e_ms: Dist::default(),
                gap_ms: Dist::default(),
            },
            requests: vec![],
            warmup_errors: vec![],
        }
    }

    #[test]
    fn the_table_is_aligned_and_shows_missing_values_as_dashes() {
        let s = settings();
        let levels = [level(1, Dist::of(&[12.5])), level(12, Dist::default())];
        let server = ServerInfo {
            url: "http://x".into(),
            model: "m".into(),
        };
        let t = Report::new(server, &s, &levels).table();
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].contains("ignore_eos") && lines[0].contains("/v1/chat/completions"));
        assert_eq!(lines[1].len(), lines[2].len());
        assert_eq!(lines[2].len(), lines[3].len());
        assert!(lines[1].starts_with("conc"));
        assert!(lines[2].contains("12.5") && lines[2].contains("1/1"));
        assert!(lines[3].contains("12/12") && lines[3].contains(" -"));
        let v: serde_json::Value = serde_json::from_str(
            &Report::new(
                ServerInfo {
                    url: "http://x".into(),
                    model: "m".into(),
                },
                &s,
                &levels,
            )
            .json(),
        )
        .unwrap();
        assert_eq!(v["settings"]["concurrency"], serde_json::json!([1, 12]));
        assert_eq!(
            v["levels"][1]["summary"]["ttft_ms"]["p50"],
            serde_json::Value::Null
        );
    }
}
