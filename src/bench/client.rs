//! One streaming request against an OpenAI-compatible server, timed from the moment it is sent.
//!
//! [`Target`] is the server (base URL, optional API key, a pooled HTTP client). [`Target::stream`] sends one
//! `stream: true` request with `stream_options.include_usage` and reads the SSE body as it arrives, stamping
//! each network chunk with its arrival time: time to first token is send → first non-empty content delta.
//! Servers may merge several tokens into one chunk (rill does when the reader falls behind), so the token count
//! comes from the final usage chunk when the server sends one, and is otherwise the number of content chunks;
//! the record says which. A failure (status, in-band error, timeout, cut-off stream) is recorded, never raised.

use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};

use super::error::{BenchError, RequestError};
use super::sse::{clip, Frame, SseParser};

/// Which OpenAI route to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Endpoint {
    /// `POST /v1/chat/completions` with the prompt as one user message.
    Chat,
    /// `POST /v1/completions` with the prompt as plain text.
    Completions,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
        }
    }
}

/// The fields every request carries besides its prompt.
#[derive(Debug, Clone, Serialize)]
pub struct RequestOptions {
    pub endpoint: Endpoint,
    pub model: String,
    pub max_tokens: u64,
    pub temperature: f64,
    /// Ask the server to generate exactly `max_tokens`: `ignore_eos: true` (rill, vLLM, llama.cpp's server) and
    /// `min_tokens: max_tokens` (vLLM, llama-cpp-python).
    pub ignore_eos: bool,
    /// Token ids sent as `logit_bias: {id: -100}` (OpenAI's portable way to ban a token).
    pub ban_token_ids: Vec<u32>,
}

impl RequestOptions {
    /// The JSON body for `prompt`.
    pub fn body(&self, prompt: &str) -> Value {
        let mut body = json!({
            "model": self.model,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "stream": true,
            "stream_options": { "include_usage": true },
        });
        match self.endpoint {
            Endpoint::Chat => body["messages"] = json!([{ "role": "user", "content": prompt }]),
            Endpoint::Completions => body["prompt"] = json!(prompt),
        }
        if self.ignore_eos {
            body["ignore_eos"] = json!(true);
            body["min_tokens"] = json!(self.max_tokens);
        }
        if !self.ban_token_ids.is_empty() {
            let bias: serde_json::Map<String, Value> = self
                .ban_token_ids
                .iter()
                .map(|id| (id.to_string(), json!(-100)))
                .collect();
            body["logit_bias"] = Value::Object(bias);
        }
        body
    }
}

/// Where the completion token count came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenSource {
    /// The server's usage chunk.
    Usage,
    /// The number of non-empty content chunks (a lower bound when the server merges tokens).
    Chunks,
}

/// One measured request.
#[derive(Debug, Clone, Serialize)]
pub struct RequestRecord {
    /// Position in its level: `round × concurrency + client`.
    pub index: usize,
    /// Which concurrent client sent it.
    pub client: usize,
    /// Which of that client's back-to-back requests it was.
    pub round: usize,
    /// Index into the prompt list.
    pub prompt_index: usize,
    /// HTTP status of the response, when one came.
    pub status: Option<u16>,
    /// Why it failed; `None` when it succeeded.
    pub error: Option<String>,
    /// Send → first non-empty content delta.
    pub ttft_ms: Option<f64>,
    /// Send → end of the stream (or the failure).
    pub e2e_ms: f64,
    /// From usage when sent, else counted chunks (see `token_source`).
    pub completion_tokens: u64,
    pub token_source: TokenSource,
    pub prompt_tokens: Option<u64>,
    /// Non-empty content chunks received.
    pub content_chunks: u64,
    /// `(completion_tokens − 1) / (last delta − first delta)`; `None` with fewer than two tokens.
    pub decode_tok_s: Option<f64>,
    pub finish_reason: Option<String>,
    /// Gaps between consecutive content chunks.
    pub gaps_ms: Vec<f64>,
}

/// What the stream has said so far (kept when a request fails halfway).
#[derive(Default)]
struct Progress {
    status: Option<u16>,
    deltas: Vec<Instant>,
    usage_completion: Option<u64>,
    usage_prompt: Option<u64>,
    finish_reason: Option<String>,
}

/// A server to measure.
#[derive(Debug, Clone)]
pub struct Target {
    http: reqwest::Client,
    base: String,
    api_key: Option<String>,
}

/// The server's base URL from what the user typed: no trailing `/`, no trailing `/v1`.
pub fn base_url(url: &str) -> String {
    let u = url.trim().trim_end_matches('/');
    u.strip_suffix("/v1").unwrap_or(u).to_string()
}

impl Target {
    pub fn new(url: &str, api_key: Option<String>) -> Result<Self, BenchError> {
        let base = base_url(url);
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(BenchError::Invalid(format!(
                "--url must start with http:// (got `{url}`)"
            )));
        }
        let http = reqwest::Client::builder()
            .build()
            .map_err(BenchError::Client)?;
        let api_key = api_key.filter(|k| !k.is_empty());
        Ok(Self {
            http,
            base,
            api_key,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn auth(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.api_key {
            Some(k) => rb.bearer_auth(k),
            None => rb,
        }
    }

    /// The first model id of `GET /v1/models`.
    pub async fn first_model(&self) -> Result<String, BenchError> {
        let url = format!("{}/v1/models", self.base);
        let fetch = |source| BenchError::Fetch {
            url: url.clone(),
            source,
        };
        let resp = self
            .auth(self.http.get(&url))
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(fetch)?;
        let status = resp.status();
        let text = resp.text().await.map_err(fetch)?;
        if !status.is_success() {
            return Err(BenchError::Status {
                url,
                status: status.as_u16(),
                body: clip(&text, 500),
            });
        }
        serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["data"][0]["id"].as_str().map(str::to_string))
            .ok_or(BenchError::NoModels { url })
    }

    /// Sends one streaming request and measures it; never fails, the record carries any error.
    pub async fn stream(
        &self,
        opts: &RequestOptions,
        prompt: &str,
        timeout: Duration,
    ) -> RequestRecord {
        let mut p = Progress::default();
        let t0 = Instant::now();
        let outcome = match tokio::time::timeout(timeout, self.read(opts, prompt, &mut p)).await {
            Ok(r) => r,
            Err(_) => Err(RequestError::Timeout(timeout.as_secs_f64())),
        };
        let end = Instant::now();
        record(t0, end, p, outcome.err())
    }

    async fn read(
        &self,
        opts: &RequestOptions,
        prompt: &str,
        p: &mut Progress,
    ) -> Result<(), RequestError> {
        let url = format!("{}{}", self.base, opts.endpoint.path());
        let mut resp = self
            .auth(self.http.post(&url))
            .json(&opts.body(prompt))
            .send()
            .await?;
        let status = resp.status();
        p.status = Some(status.as_u16());
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            return Err(RequestError::Status {
                status: status.as_u16(),
                body: clip(body.trim(), 500),
            });
        }
        let mut parser = SseParser::new();
        while let Some(bytes) = resp.chunk().await? {
            let at = Instant::now();
            for data in parser.feed(&bytes) {
                if take(Frame::parse(&data)?, at, p)? {
                    return Ok(());
                }
            }
        }
        match parser.finish() {
            Some(data) if take(Frame::parse(&data)?, Instant::now(), p)? => Ok(()),
            _ => Err(RequestError::Truncated),
        }
    }
}

/// Applies one frame; `Ok(true)` at `[DONE]`.
fn take(frame: Frame, at: Instant, p: &mut Progress) -> Result<bool, RequestError> {
    match frame {
        Frame::Done => Ok(true),
        Frame::Error(msg) => Err(RequestError::InBand(msg)),
        Frame::Chunk {
            text,
            finish_reason,
            usage,
        } => {
            if text.is_some() {
                p.deltas.push(at);
            }
            if finish_reason.is_some() {
                p.finish_reason = finish_reason;
            }
            if let Some(u) = usage {
                p.usage_completion = u.completion_tokens.or(p.usage_completion);
                p.usage_prompt = u.prompt_tokens.or(p.usage_prompt);
            }
            Ok(false)
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn record(t0: Instant, end: Instant, p: Progress, error: Option<RequestError>) -> RequestRecord {
    let chunks = p.deltas.len() as u64;
    let (completion_tokens, token_source) = match p.usage_completion {
        Some(n) => (n, TokenSource::Usage),
        None => (chunks, TokenSource::Chunks),
    };
    let decode_tok_s = match (p.deltas.first(), p.deltas.last()) {
        (Some(&first), Some(&last)) if completion_tokens >= 2 && last > first => {
            Some((completion_tokens - 1) as f64 / (last - first).as_secs_f64())
        }
        _ => None,
    };
    RequestRecord {
        index: 0,
        client: 0,
        round: 0,
        prompt_index: 0,
        status: p.status,
        error: error.map(|e| e.to_string()),
        ttft_ms: p.deltas.first().map(|&t| ms(t - t0)),
        e2e_ms: ms(end - t0),
        completion_tokens,
        token_source,
        prompt_tokens: p.usage_prompt,
        content_chunks: chunks,
        decode_tok_s,
        finish_reason: p.finish_reason,
        gaps_ms: p.deltas.windows(2).map(|w| ms(w[1] - w[0])).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_accepts_v1_and_slashes() {
        for u in [
            "http://h:1",
            "http://h:1/",
            "http://h:1/v1",
            "http://h:1/v1/",
            " http://h:1/v1 ",
        ] {
            assert_eq!(base_url(u), "http://h:1", "{u}");
        }
        assert_eq!(base_url("http://h:1/proxy/v1"), "http://h:1/proxy");
    }

    fn opts(endpoint: Endpoint, ignore_eos: bool, ban: Vec<u32>) -> RequestOptions {
        RequestOptions {
            endpoint,
            model: "m".into(),
            max_tokens: 32,
            temperature: 0.0,
            ignore_eos,
            ban_token_ids: ban,
        }
    }

    #[test]
    fn bodies_for_each_endpoint_and_eos_setting() {
        let b = opts(Endpoint::Chat, false, vec![]).body("hi");
        assert_eq!(b["messages"], json!([{"role": "user", "content": "hi"}]));
        assert_eq!(b["stream"], true);
        assert_eq!(b["stream_options"]["include_usage"], true);
        assert!(
            b.get("prompt").is_none()
                && b.get("ignore_eos").is_none()
                && b.get("logit_bias").is_none()
        );
        let b = opts(Endpoint::Completions, true, vec![0, 2]).body("hi");
        assert_eq!(b["prompt"], "hi");
        assert!(b.get("messages").is_none());
        assert_eq!(b["ignore_eos"], true);
        assert_eq!(b["min_tokens"], 32);
        assert_eq!(b["logit_bias"], json!({"0": -100, "2": -100}));
    }

    #[test]
    fn records_prefer_usage_and_compute_decode_rate() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let p = Progress {
            status: Some(200),
            deltas: vec![at(100), at(150), at(300)],
            usage_completion: Some(5),
            usage_prompt: Some(9),
            finish_reason: Some("length".into()),
        };
        let r = record(t0, at(310), p, None);
        assert_eq!(r.completion_tokens, 5);
        assert_eq!(r.token_source, TokenSource::Usage);
        assert_eq!(r.content_chunks, 3);
        assert!((r.ttft_ms.unwrap() - 100.0).abs() < 1e-6);
        assert!((r.e2e_ms - 310.0).abs() < 1e-6);
        // 4 tokens after the first, over 200 ms.
        assert!((r.decode_tok_s.unwrap() - 20.0).abs() < 1e-6);
        assert_eq!(r.gaps_ms.len(), 2);
        let p = Progress {
            deltas: vec![at(10)],
            ..Progress::default()
        };
        let r = record(t0, at(20), p, Some(RequestError::Truncated));
        assert_eq!(
            (r.completion_tokens, r.token_source),
            (1, TokenSource::Chunks)
        );
        assert_eq!(r.decode_tok_s, None);
        assert!(r.error.unwrap().contains("[DONE]"));
    }
}
