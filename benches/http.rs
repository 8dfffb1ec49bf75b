//! `cargo bench --bench http`: what the HTTP layer adds to time-to-first-token and to each streamed token, per
//! dialect (encoder CPU cost, streaming cost over a real socket against the in-process engine, and HTTP TTFT
//! minus in-process TTFT on real models). It checks that the answers are right, never a timing.

mod common;

#[path = "../tests/http_support/mod.rs"]
mod http_support;

use std::time::Instant;

use common::median;
use http_support::*;
use rill::api::frame::{Frame, Framing};
use rill::api::stream::Encoder;
use rill::api::{anthropic, ollama, openai};
use rill::engine::{EngineConfig, Event, GenRequest, SamplingParams, TokenInfo};
use rill::tokenizer::ChatMessage;
use serde_json::{json, Value};

const TOKENS: usize = 2000;

/// CPU cost of one delta through each dialect's encoder and framing (pure functions, no I/O).
fn encoder_cost_per_token() {
    let tok = [TokenInfo::new(42)];
    let mut encoders: Vec<(&str, Box<dyn Encoder>, Framing)> = vec![
        (
            "openai",
            Box::new(openai::wire::OpenAiStream::new(
                openai::wire::Meta::new("chatcmpl-", "m"),
                openai::wire::Kind::Chat,
                true,
            )),
            Framing::Sse,
        ),
        (
            "ollama",
            Box::new(ollama::wire::OllamaStream::new(
                "m".into(),
                ollama::wire::Mode::Chat,
                std::time::SystemTime::now,
            )),
            Framing::Ndjson,
        ),
        (
            "anthropic",
            Box::new(anthropic::wire::AnthropicStream::new(
                "msg_1".into(),
                "m".into(),
                10,
            )),
            Framing::Sse,
        ),
    ];
    for (name, enc, framing) in encoders.iter_mut() {
        let n = 200_000;
        let t = Instant::now();
        let mut bytes = 0;
        for _ in 0..n {
            let frames: Vec<Frame> = enc.delta(" word", &tok);
            bytes += framing.encode(&frames).len();
        }
        let per = t.elapsed().as_secs_f64() / n as f64 * 1e6;
        println!(
            "{name:>9}: {per:.2} µs per token in encoder + framing ({} bytes per token)",
            bytes / n
        );
    }
}

/// Time for `TOKENS` tokens in process and over HTTP in each dialect, with a nearly free fake model (a 300-token
/// vocabulary, saying "a" forever), so that the difference is the streaming path's own cost.
async fn streaming_cost_per_token() {
    let cfg = EngineConfig {
        event_capacity: 4096,
        ..EngineConfig::default()
    };
    let a = gpt2_tokenizer().encode("a").unwrap();
    assert!(a.len() == 1 && a[0] < 300);
    let s = Server::ready(fake_engine(FakeLm::cycle(a).vocab(300), cfg)).await;
    let prompt = gpt2_tokenizer().encode("User: go\nAssistant:").unwrap();
    let mut inproc = Vec::new();
    for _ in 0..9 {
        let req = GenRequest {
            constraint: None,
            prompt: prompt.clone(),
            sampling: SamplingParams::greedy(),
            max_tokens: Some(TOKENS),
            stop: vec![],
            ignore_eos: true,
            logprobs: None,
            prompt_logprobs: None,
        };
        let t = Instant::now();
        let mut events = s.engine().submit(req).unwrap();
        while let Some(ev) = events.next().await {
            if matches!(ev, Event::Done(_) | Event::Error(_)) {
                break;
            }
        }
        inproc.push(t.elapsed().as_secs_f64());
    }
    let base = median(inproc);
    println!("in process: {:.1} µs per token", base / TOKENS as f64 * 1e6);
    let user = json!([{"role": "user", "content": "go"}]);
    let cases = [
        (
            "openai",
            "/v1/chat/completions",
            json!({"messages": user, "max_tokens": TOKENS, "temperature": 0, "stream": true, "ignore_eos": true}),
        ),
        (
            "ollama",
            "/api/chat",
            json!({"model": "fake", "messages": user, "options": {"num_predict": TOKENS, "temperature": 0}}),
        ),
        (
            "anthropic",
            "/v1/messages",
            json!({"messages": user, "max_tokens": TOKENS, "temperature": 0, "stream": true}),
        ),
    ];
    for (name, path, body) in cases {
        let mut times = Vec::new();
        for _ in 0..9 {
            let t = Instant::now();
            let text = s.post(path, &body).await.text().await.unwrap();
            times.push(t.elapsed().as_secs_f64());
            assert!(
                text.matches('a').count() >= TOKENS,
                "{name}: the answer streamed"
            );
        }
        let http = median(times);
        println!(
            "{name:>9}: {:.1} µs per token over HTTP, {:+.1} µs vs in process",
            http / TOKENS as f64 * 1e6,
            (http - base) / TOKENS as f64 * 1e6
        );
    }
}

/// TTFT for a short chat prompt, in process (template, tokenize, submit, first text) and over HTTP (request sent
/// to the first content byte) in each dialect; rounds interleave the four so that machine noise hits all alike.
async fn ttft(s: &Server, model: &str, rounds: usize) {
    let question = "What is the capital of France?";
    let user = json!([{"role": "user", "content": question}]);
    let cases: [(&str, &str, Value, &str); 3] = [
        (
            "openai",
            "/v1/chat/completions",
            json!({"messages": user, "max_tokens": 4, "temperature": 0, "stream": true}),
            "\"delta\":{\"content\":\"",
        ),
        (
            "ollama",
            "/api/chat",
            json!({"model": model, "messages": user, "options": {"num_predict": 4, "temperature": 0}}),
            "\"content\":\"",
        ),
        (
            "anthropic",
            "/v1/messages",
            json!({"messages": user, "max_tokens": 4, "temperature": 0, "stream": true}),
            "\"text\":\"",
        ),
    ];
    let mut times = vec![Vec::new(); 4];
    for _ in 0..rounds {
        times[0].push(ttft_in_process(s, question).await);
        for (i, (_, path, body, marker)) in cases.iter().enumerate() {
            times[i + 1].push(ttft_http(s, path, body, marker).await);
        }
    }
    let base = median(times[0].clone());
    println!("{model}: in process TTFT {base:.2} ms (median of {rounds})");
    for (i, (name, ..)) in cases.iter().enumerate() {
        let http = median(times[i + 1].clone());
        println!(
            "{model}: {name:>9} TTFT {http:.2} ms over HTTP, {:+.2} ms vs in process",
            http - base
        );
    }
}

async fn ttft_in_process(s: &Server, question: &str) -> f64 {
    let shared = s.engine().shared().clone();
    let t = Instant::now();
    let text = shared
        .chat
        .render(&[ChatMessage::new("user", question)], true)
        .unwrap();
    let prompt = shared.tokenizer.encode(&text).unwrap();
    let req = GenRequest {
        constraint: None,
        prompt,
        sampling: SamplingParams::greedy(),
        max_tokens: Some(4),
        stop: vec![],
        ignore_eos: true,
        logprobs: None,
        prompt_logprobs: None,
    };
    let mut events = s.engine().submit(req).unwrap();
    while let Some(ev) = events.next().await {
        if matches!(&ev, Event::Delta { text, .. } if !text.is_empty()) {
            break;
        }
    }
    let ms = t.elapsed().as_secs_f64() * 1e3;
    while events.next().await.is_some() {}
    ms
}

/// Milliseconds from sending the request to the first non-empty text (`marker` followed by a character).
async fn ttft_http(s: &Server, path: &str, body: &Value, marker: &str) -> f64 {
    let t = Instant::now();
    let mut resp = s.post(path, body).await;
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen)
        .split(marker)
        .skip(1)
        .any(|rest| !rest.starts_with('"'))
    {
        seen.extend_from_slice(&resp.chunk().await.unwrap().expect("stream open"));
    }
    let ms = t.elapsed().as_secs_f64() * 1e3;
    read_rest(resp, String::new()).await;
    ms
}

async fn ttft_http_vs_in_process() {
    ttft(&Server::ready(tiny_engine()).await, "tiny-gpt2", 21).await;
    ttft(&Server::ready(smollm2_engine()).await, "smollm2", 7).await;
}

fn main() {
    rill::cli::set_cpu_threads(None);
    encoder_cost_per_token();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(streaming_cost_per_token());
    rt.block_on(ttft_http_vs_in_process());
}
