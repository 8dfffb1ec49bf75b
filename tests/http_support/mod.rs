//! Helpers for rill's HTTP tests: a scripted fake model over the real GPT-2 tokenizer, servers on 127.0.0.1:0,
//! and SSE / NDJSON readers. Real models come from `models/` (see tests/common); a missing one is a failure.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use rill::api::{self, ApiConfig, AppState};
use rill::engine::{EngineConfig, EngineHandle};
use rill::load::Loaded;
use rill::model::{CausalLm, ModelError, ModelInfo, SeqCache, SeqStep};
use rill::tokenizer::{ChatTemplate, TextTokenizer};
use serde_json::Value;

#[path = "../common/mod.rs"]
pub mod common;
pub mod parity;

pub const VOCAB: usize = 50257;
pub const EOS: u32 = 50256;

/// A gate the fake model's forward waits on while closed.
#[derive(Default)]
pub struct Gate {
    open: Mutex<bool>,
    cv: Condvar,
}

impl Gate {
    pub fn closed() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.cv.notify_all();
    }

    fn wait(&self) {
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.cv.wait(open).unwrap();
        }
    }
}

/// What the fake model does next, given a sequence's whole history (prompt and generated tokens).
pub type NextFn = Box<dyn Fn(&[u32]) -> u32 + Send + Sync>;

/// A model whose next token is a function of the sequence's history. The history lives in the sequence's own
/// cache (token ids stored as a one-layer "key" tensor), so batched and chunked prefill behave as in a real model.
pub struct FakeLm {
    info: ModelInfo,
    next: NextFn,
    gate: Option<Arc<Gate>>,
    fail_at_step: Option<u64>,
    panic_at_step: Option<u64>,
    delay: Duration,
    entered: Arc<AtomicU64>,
}

impl FakeLm {
    pub fn new(next: NextFn) -> Self {
        let info = ModelInfo {
            name: "fake".into(),
            arch: "fake".into(),
            quantization: "F32".into(),
            vocab_size: VOCAB,
            context_length: 4096,
            n_params: 1_000_000,
            kv_bytes_per_token: 4,
        };
        Self {
            info,
            next,
            gate: None,
            fail_at_step: None,
            panic_at_step: None,
            delay: Duration::ZERO,
            entered: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Says `script` (token ids), then EOS.
    pub fn script(script: Vec<u32>) -> Self {
        Self::new(Box::new(move |h| follow(h, &script, false)))
    }

    /// Says `script` over and over, never EOS.
    pub fn cycle(script: Vec<u32>) -> Self {
        Self::new(Box::new(move |h| follow(h, &script, true)))
    }

    /// A smaller vocabulary makes each step cheaper; scripts must use ids below it (GPT-2's byte tokens are < 256).
    pub fn vocab(mut self, n: usize) -> Self {
        self.info.vocab_size = n;
        self
    }

    pub fn context(mut self, n: usize) -> Self {
        self.info.context_length = n;
        self
    }

    pub fn gated(mut self, gate: Arc<Gate>) -> Self {
        self.gate = Some(gate);
        self
    }

    /// The forward pass numbered `n` (from 1) fails.
    pub fn fail_at_step(mut self, n: u64) -> Self {
        self.fail_at_step = Some(n);
        self
    }

    /// The forward pass numbered `n` (from 1) panics.
    pub fn panic_at_step(mut self, n: u64) -> Self {
        self.panic_at_step = Some(n);
        self
    }

    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }

    /// Counts forward passes as they start (before the gate).
    pub fn entered(&self) -> Arc<AtomicU64> {
        self.entered.clone()
    }
}

/// The next token of `script` after the longest script prefix that ends `history`; EOS at the end unless cycling.
pub fn follow(history: &[u32], script: &[u32], cycle: bool) -> u32 {
    let n = script.len();
    let k = (1..=n.min(history.len()))
        .rev()
        .find(|&k| history.ends_with(&script[..k]))
        .unwrap_or(0);
    match (k == n, cycle) {
        (true, true) => script[0],
        (true, false) => EOS,
        _ => script[k],
    }
}

impl CausalLm for FakeLm {
    fn forward(&self, batch: &mut [SeqStep<'_>]) -> Result<Tensor, ModelError> {
        let step = self.entered.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some(g) = &self.gate {
            g.wait();
        }
        if !self.delay.is_zero() {
            std::thread::sleep(self.delay);
        }
        assert!(self.panic_at_step != Some(step), "injected panic");
        if self.fail_at_step == Some(step) {
            return Err(ModelError::Unsupported("injected failure".into()));
        }
        let vocab = self.info.vocab_size;
        let rows: usize = batch.iter().map(|s| s.logit_rows()).sum();
        let mut logits = vec![0f32; rows * vocab];
        let mut row = 0;
        for s in batch.iter_mut() {
            let ids: Vec<f32> = s.tokens.iter().map(|&t| t as f32).collect();
            let t = Tensor::from_vec(ids, (1, s.tokens.len(), 1), &Device::Cpu)?;
            let (all, _) = s.cache.append(0, &t, &t)?;
            s.cache.advance(s.tokens.len());
            let history: Vec<u32> = all
                .flatten_all()?
                .to_dtype(DType::F32)?
                .to_vec1::<f32>()?
                .iter()
                .map(|&x| x as u32)
                .collect();
            // One row per requested position: the scripted next token after each prefix.
            let n = s.logit_rows();
            for j in 0..n {
                let seen = &history[..history.len() + 1 + j - n];
                logits[row * vocab + (self.next)(seen) as usize] = 50.0;
                row += 1;
            }
        }
        Ok(Tensor::from_vec(logits, (rows, vocab), &Device::Cpu)?)
    }

    fn new_cache(&self) -> SeqCache {
        SeqCache::new(1)
    }

    fn info(&self) -> &ModelInfo {
        &self.info
    }
}

/// The real GPT-2 tokenizer.
pub fn gpt2_tokenizer() -> TextTokenizer {
    TextTokenizer::from_file(&common::model_path("gpt2-tokenizer/tokenizer.json"), None).unwrap()
}

pub fn fake_engine(model: FakeLm, config: EngineConfig) -> EngineHandle {
    let tokenizer = gpt2_tokenizer();
    EngineHandle::start(
        move || {
            Ok(Loaded {
                model: Box::new(model),
                tokenizer,
                chat: ChatTemplate::new(None, None, None).unwrap(),
            })
        },
        config,
    )
    .unwrap()
}

/// The engine over `models/tiny-gpt2` (made by scripts/make-fixtures.py).
pub fn tiny_engine() -> EngineHandle {
    common::engine("tiny-gpt2", EngineConfig::default())
}

/// The engine over `models/smollm2` (fetched by scripts/fetch-models.sh).
pub fn smollm2_engine() -> EngineHandle {
    common::engine("smollm2", EngineConfig::default())
}

/// A running server on 127.0.0.1 and a client for it.
pub struct Server {
    pub addr: SocketAddr,
    pub state: AppState,
    pub http: reqwest::Client,
}

impl Server {
    pub async fn start(state: AppState) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = state.clone();
        tokio::spawn(async move {
            api::serve(listener, served, std::future::pending())
                .await
                .unwrap()
        });
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap();
        Self { addr, state, http }
    }

    pub async fn ready(engine: EngineHandle) -> Self {
        Self::start(AppState::ready(engine, test_config())).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn engine(&self) -> &EngineHandle {
        self.state.engine().unwrap()
    }

    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(self.url(path)).send().await.unwrap()
    }

    /// POST and parse the JSON answer, asserting the status.
    pub async fn post_json(&self, path: &str, body: &Value, status: u16) -> Value {
        let resp = self.post(path, body).await;
        assert_eq!(resp.status().as_u16(), status, "POST {path} {body}");
        resp.json().await.unwrap()
    }
}

/// Settings for tests: defaults, with short keep-alives.
pub fn test_config() -> ApiConfig {
    ApiConfig {
        ping_interval: Duration::from_millis(50),
        ..ApiConfig::default()
    }
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq)]
pub struct Sse {
    /// The `id:` field (resumable browser streams number their events).
    pub id: Option<u64>,
    pub event: Option<String>,
    pub data: String,
    /// A comment-only block (`: ping`).
    pub comment: bool,
}

impl Sse {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("bad JSON {:?}: {e}", self.data))
    }
}

/// Splits an SSE body into events; every block must end with a blank line.
pub fn parse_sse(body: &str) -> Vec<Sse> {
    assert!(
        body.is_empty() || body.ends_with("\n\n"),
        "SSE body must end with a blank line: {body:?}"
    );
    body.split("\n\n")
        .filter(|b| !b.is_empty())
        .map(|block| {
            let (mut event, mut data, mut comment, mut id) = (None, Vec::new(), false, None);
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = Some(v.parse().unwrap_or_else(|_| panic!("bad SSE id {v:?}")));
                } else if line.starts_with("retry: ") {
                    comment = true;
                } else if let Some(v) = line.strip_prefix("event: ") {
                    event = Some(v.to_string());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push(v);
                } else if line.starts_with(':') {
                    comment = true;
                } else {
                    panic!("unexpected SSE line {line:?}");
                }
            }
            Sse {
                id,
                event,
                data: data.join("\n"),
                comment: comment && data.is_empty(),
            }
        })
        .collect()
}

/// Reads a whole SSE response (status 200, `text/event-stream`, no-cache, no proxy buffering).
pub async fn sse(resp: reqwest::Response) -> Vec<Sse> {
    assert_eq!(resp.status(), 200);
    let h = resp.headers();
    assert_eq!(h["content-type"], "text/event-stream");
    assert_eq!(h["cache-control"], "no-cache");
    assert_eq!(h["x-accel-buffering"], "no");
    let events = parse_sse(&resp.text().await.unwrap());
    events.into_iter().filter(|e| !e.comment).collect()
}

/// Reads a whole NDJSON response.
pub async fn ndjson(resp: reqwest::Response) -> Vec<Value> {
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let body = resp.text().await.unwrap();
    assert!(body.ends_with('\n'), "NDJSON ends with a newline");
    body.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
        .collect()
}

/// The text of an OpenAI stream (chat or completions), asserting its chunk order.
pub fn openai_text(events: &[Sse]) -> String {
    assert_eq!(
        events.last().map(|e| e.data.as_str()),
        Some("[DONE]"),
        "stream ends with [DONE]"
    );
    let mut text = String::new();
    for e in &events[..events.len() - 1] {
        let v = e.json();
        if let Some(c) = v["choices"][0]["delta"]["content"]
            .as_str()
            .or(v["choices"][0]["text"].as_str())
        {
            text.push_str(c);
        }
    }
    text
}

/// Reads a streaming response until its body contains `needle`; returns everything read so far.
pub async fn read_until(resp: &mut reqwest::Response, needle: &str) -> String {
    let mut body = Vec::new();
    while !String::from_utf8_lossy(&body).contains(needle) {
        let chunk = resp
            .chunk()
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("stream ended before {needle:?}"));
        body.extend_from_slice(&chunk);
    }
    String::from_utf8(body).unwrap()
}

/// Reads on until `needle` has appeared `n` times in everything read (starting from `seen`).
pub async fn read_until_count(
    resp: &mut reqwest::Response,
    seen: String,
    needle: &str,
    n: usize,
) -> String {
    let mut bytes = seen.into_bytes();
    while String::from_utf8_lossy(&bytes).matches(needle).count() < n {
        let chunk = resp
            .chunk()
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("stream ended before {n} × {needle:?}"));
        bytes.extend_from_slice(&chunk);
    }
    String::from_utf8(bytes).unwrap()
}

/// Reads the rest of a streaming response.
pub async fn read_rest(mut resp: reqwest::Response, body: String) -> String {
    let mut bytes = body.into_bytes();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        bytes.extend_from_slice(&chunk);
    }
    String::from_utf8(bytes).unwrap()
}

/// Polls `cond` until it holds (failing after 30 s with `what`).
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..3000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting until {what}");
}

/// The text of an Ollama stream, asserting that only the last line is `done` and returning it too.
pub fn ollama_text(lines: &[Value]) -> (String, Value) {
    let (last, body) = lines.split_last().expect("at least the final line");
    assert_eq!(last["done"], true, "{last}");
    let mut text = String::new();
    for l in body {
        assert_eq!(l["done"], false, "{l}");
        text.push_str(
            l["response"]
                .as_str()
                .or(l["message"]["content"].as_str())
                .expect("a text field"),
        );
    }
    (text, last.clone())
}

/// The text of an Anthropic stream, asserting the event order; returns the `message_delta` too.
pub fn anthropic_text(events: &[Sse]) -> (String, Value) {
    let names: Vec<&str> = events
        .iter()
        .map(|e| e.event.as_deref().expect("every event is named"))
        .collect();
    assert_eq!(
        &names[..2],
        ["message_start", "content_block_start"],
        "{names:?}"
    );
    assert_eq!(
        &names[names.len() - 3..],
        ["content_block_stop", "message_delta", "message_stop"],
        "{names:?}"
    );
    let mut text = String::new();
    for e in events {
        let v = e.json();
        assert_eq!(
            v["type"].as_str(),
            e.event.as_deref(),
            "event name matches the data type"
        );
        if e.event.as_deref() == Some("content_block_delta") {
            text.push_str(v["delta"]["text"].as_str().unwrap());
        } else {
            assert!(matches!(
                e.event.as_deref(),
                Some(
                    "message_start"
                        | "content_block_start"
                        | "ping"
                        | "content_block_stop"
                        | "message_delta"
                        | "message_stop"
                )
            ));
        }
    }
    (text, events[events.len() - 2].json())
}

/// A series' value in a `/metrics` text.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}
