//! Reliability under load and abuse, over real sockets on 127.0.0.1 with a scripted model (every count and
//! wait below is bounded):
//! - 64 streaming clients × 3 rounds across the three dialects: no error, every frame well-formed, every stream
//!   complete and in order;
//! - a storm of 100 clients that vanish before the first byte, mid-prefill or mid-decode: afterwards no slot,
//!   no KV reservation and no queue entry is left, and `/metrics` says so;
//! - 600 generated hostile requests against every route: never a 5xx, and every refusal in the route's dialect
//!   shape; the server still answers afterwards;
//! - slow clients: trickled headers are cut off, a trickled body gets a 408, and a reader that stops reading
//!   holds up no other stream;
//! - a panic inside a model step fails the requests in that step, in band, and the server keeps serving.

mod http_support;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use http_support::*;
use proptest::prelude::*;
use rill::api::{ApiConfig, AppState};
use rill::engine::EngineConfig;
use serde_json::{json, Value};

fn tick() -> Vec<u32> {
    gpt2_tokenizer().encode(" tick").unwrap()
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Dialect {
    OpenAi,
    Ollama,
    Anthropic,
}

/// One streaming request of `n` tokens in `d`; returns the text after checking the stream's whole shape.
async fn stream_once(s: &Server, d: Dialect, n: usize) -> String {
    let msgs = json!([{ "role": "user", "content": "count" }]);
    match d {
        Dialect::OpenAi => {
            let body = json!({"messages": msgs, "max_tokens": n, "stream": true,
                              "stream_options": {"include_usage": true}});
            let events = sse(s.post("/v1/chat/completions", &body).await).await;
            let usage = events[events.len() - 2].json();
            assert_eq!(usage["usage"]["completion_tokens"], n, "{usage}");
            openai_text(&events)
        }
        Dialect::Ollama => {
            let body = json!({"model": "fake", "messages": msgs, "options": {"num_predict": n}});
            let (text, last) = ollama_text(&ndjson(s.post("/api/chat", &body).await).await);
            assert_eq!(last["eval_count"], n, "{last}");
            text
        }
        Dialect::Anthropic => {
            let body = json!({"messages": msgs, "max_tokens": n, "stream": true});
            let events = sse(s.post("/v1/messages", &body).await).await;
            let names: Vec<&str> = events
                .iter()
                .filter(|e| !e.comment && e.event.as_deref() != Some("ping"))
                .map(|e| e.event.as_deref().unwrap_or(""))
                .collect();
            let (head, tail) = (&names[..2], &names[names.len() - 3..]);
            assert_eq!(head, ["message_start", "content_block_start"], "{names:?}");
            assert_eq!(
                tail,
                ["content_block_stop", "message_delta", "message_stop"],
                "{names:?}"
            );
            assert!(names[2..names.len() - 3]
                .iter()
                .all(|n| *n == "content_block_delta"));
            let mut text = String::new();
            for e in events
                .iter()
                .filter(|e| e.event.as_deref() == Some("content_block_delta"))
            {
                text.push_str(e.json()["delta"]["text"].as_str().unwrap());
            }
            text
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_streaming_clients_for_three_rounds_in_every_dialect() {
    let config = EngineConfig {
        max_running: 8,
        queue_capacity: 64,
        ..EngineConfig::default()
    };
    let s = std::sync::Arc::new(
        Server::ready(fake_engine(
            FakeLm::cycle(tick()).delay(Duration::from_micros(300)),
            config,
        ))
        .await,
    );
    for round in 0..3 {
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let s = s.clone();
                let d = [Dialect::OpenAi, Dialect::Ollama, Dialect::Anthropic][i % 3];
                let n = 4 + i % 9;
                tokio::spawn(async move { (d, n, stream_once(&s, d, n).await) })
            })
            .collect();
        for t in tasks {
            let (d, n, text) = t.await.unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert_eq!(text, " tick".repeat(n), "round {round}, {d:?}");
        }
    }
    let m = s.get("/metrics").await.text().await.unwrap();
    assert!(
        m.contains("rill_failed_requests_total{model=\"fake\"} 0"),
        "{m}"
    );
}

/// The value of one `/metrics` series.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_vanishing_clients_leaves_nothing_behind() {
    // Small prefill chunks and a slow step, so that a long prompt is still prefilling when its client leaves.
    let config = EngineConfig {
        max_running: 8,
        queue_capacity: 128,
        prefill_chunk: 4,
        ..EngineConfig::default()
    };
    let s = std::sync::Arc::new(
        Server::ready(fake_engine(
            FakeLm::cycle(tick()).delay(Duration::from_millis(1)),
            config,
        ))
        .await,
    );
    let long_prompt = "word ".repeat(150);
    let tasks: Vec<_> = (0..100u64)
        .map(|i| {
            let s = s.clone();
            let prompt = if i % 2 == 0 { long_prompt.clone() } else { "hi".into() };
            tokio::spawn(async move {
                let body = json!({"prompt": prompt, "max_tokens": 200, "stream": true});
                match i % 4 {
                    // Before the first byte: the whole request, then the connection closes.
                    0 => {
                        let mut tcp = std::net::TcpStream::connect(s.addr).unwrap();
                        let payload = body.to_string();
                        let req = format!(
                            "POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{payload}",
                            payload.len()
                        );
                        tcp.write_all(req.as_bytes()).unwrap();
                        drop(tcp);
                    }
                    // Mid-prefill or mid-decode: read a little (or nothing) after a varying wait, then leave.
                    k => {
                        let resp = s.post("/v1/completions", &body).await;
                        let status = resp.status().as_u16();
                        assert!(status == 200 || status == 429, "{status}");
                        let mut resp = resp;
                        tokio::time::sleep(Duration::from_millis(i % 7 * 3)).await;
                        for _ in 0..(k as usize - 1) * 2 {
                            if resp.chunk().await.ok().flatten().is_none() {
                                break;
                            }
                        }
                        drop(resp);
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    // Within a few steps of the last disconnect everything is free again.
    let mut last = String::new();
    for _ in 0..500 {
        last = s.get("/metrics").await.text().await.unwrap();
        if metric(&last, "rill_running_sequences") == 0.0
            && metric(&last, "rill_kv_reserved_bytes") == 0.0
            && metric(&last, "rill_queued_requests") == 0.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(metric(&last, "rill_running_sequences"), 0.0, "{last}");
    assert_eq!(metric(&last, "rill_kv_reserved_bytes"), 0.0, "{last}");
    assert_eq!(metric(&last, "rill_queued_requests"), 0.0, "{last}");
    assert!(
        metric(&last, "rill_cancelled_requests_total") >= 50.0,
        "{last}"
    );
    assert_eq!(metric(&last, "rill_failed_requests_total"), 0.0, "{last}");
    // And the server still serves in full.
    assert_eq!(stream_once(&s, Dialect::OpenAi, 5).await, " tick".repeat(5));
}

/// A route and the dialect its errors are in.
const ROUTES: &[(&str, Shape)] = &[
    ("/v1/chat/completions", Shape::OpenAi),
    ("/v1/completions", Shape::OpenAi),
    ("/tokenize", Shape::OpenAi),
    ("/detokenize", Shape::OpenAi),
    ("/api/generate", Shape::Ollama),
    ("/api/chat", Shape::Ollama),
    ("/api/show", Shape::Ollama),
    ("/v1/messages", Shape::Anthropic),
    ("/v1/messages/count_tokens", Shape::Anthropic),
    ("/v1/streams", Shape::OpenAi),
];

#[derive(Clone, Copy, Debug)]
enum Shape {
    OpenAi,
    Ollama,
    Anthropic,
}

/// A valid body for route `r`, the seed that mutations start from.
fn seed(r: usize) -> Value {
    let msgs = json!([{ "role": "user", "content": "hi" }]);
    match ROUTES[r].0 {
        "/v1/chat/completions" => json!({"model": "fake", "messages": msgs, "max_tokens": 3}),
        "/v1/completions" => json!({"model": "fake", "prompt": "hi", "max_tokens": 3}),
        "/tokenize" => json!({"content": "hi"}),
        "/detokenize" => json!({"tokens": [1, 2]}),
        "/api/generate" => {
            json!({"model": "fake", "prompt": "hi", "stream": false, "options": {"num_predict": 3}})
        }
        "/api/chat" => {
            json!({"model": "fake", "messages": msgs, "stream": false, "options": {"num_predict": 3}})
        }
        "/api/show" => json!({"model": "fake"}),
        _ => json!({"model": "fake", "messages": msgs, "max_tokens": 3}),
    }
}

/// Hostile values for a field.
fn hostile_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!(null)),
        Just(json!(-1)),
        Just(json!(0)),
        Just(json!(i64::MAX)),
        Just(json!(u64::MAX)),
        Just(json!(1e308)),
        Just(json!(-1e308)),
        Just(json!(0.5)),
        Just(json!(true)),
        Just(json!("")),
        Just(json!("x".repeat(100_000))),
        Just(json!([])),
        Just(json!({})),
        Just(json!([{"role": "user"}])),
        Just(json!([{"role": "tool", "content": 5}])),
        Just(json!({"num_predict": -5, "temperature": "hot", "top_k": 1e20})),
        any::<i64>().prop_map(|n| json!(n)),
        "\\PC{0,40}".prop_map(|s| json!(s)),
    ]
}

/// A hostile request: bytes for the body and an optional content type.
#[derive(Debug, Clone)]
enum Body {
    Json(Value),
    Raw(Vec<u8>),
}

fn hostile_body(r: usize) -> impl Strategy<Value = Body> {
    let base = seed(r);
    let keys: Vec<String> = base.as_object().unwrap().keys().cloned().collect();
    let fields = [
        "model",
        "messages",
        "prompt",
        "max_tokens",
        "temperature",
        "top_p",
        "top_k",
        "stream",
        "stop",
        "options",
        "logprobs",
        "top_logprobs",
        "echo",
        "seed",
        "n",
        "logit_bias",
        "tokens",
        "content",
        "system",
        "context",
        "stream_options",
        "max_completion_tokens",
        "format",
        "tools",
        "unknown_field",
    ];
    let b1 = base.clone();
    let b2 = base.clone();
    let b3 = base.clone();
    prop_oneof![
        // A field set to a hostile value.
        (prop::sample::select(fields.to_vec()), hostile_value()).prop_map(move |(f, v)| {
            let mut b = b1.clone();
            b[f] = v;
            Body::Json(b)
        }),
        // A required field dropped.
        prop::sample::select(keys).prop_map(move |k| {
            let mut b = b2.clone();
            b.as_object_mut().unwrap().remove(&k);
            Body::Json(b)
        }),
        // The JSON cut short, or bytes that are not UTF-8 spliced in.
        (0usize..200, any::<bool>()).prop_map(move |(cut, splice)| {
            let mut bytes = b3.to_string().into_bytes();
            let at = cut.min(bytes.len());
            if splice {
                bytes.splice(at..at, [0xff, 0xfe, 0xc3]);
            } else {
                bytes.truncate(at);
            }
            Body::Raw(bytes)
        }),
        // Deep nesting, enormous and empty message lists, a body that is not an object.
        (1usize..4).prop_map(|k| Body::Raw(
            format!("{}{}", "[".repeat(k * 5000), "]".repeat(k * 5000)).into_bytes()
        )),
        (0usize..3).prop_map(move |k| {
            let msgs: Vec<Value> = (0..[0, 1, 20_000][k])
                .map(|_| json!({"role": "user", "content": "a"}))
                .collect();
            Body::Json(json!({"model": "fake", "messages": msgs, "max_tokens": 2}))
        }),
        Just(Body::Raw(b"NaN".to_vec())),
        Just(Body::Raw(b"{\"max_tokens\": NaN}".to_vec())),
        Just(Body::Raw(Vec::new())),
    ]
}

/// Checks that an answer to a hostile request is no 5xx and, when refused, in `shape`.
fn check_answer(route: &str, shape: Shape, status: u16, body: &[u8]) -> Result<(), String> {
    if status >= 500 {
        return Err(format!(
            "{route}: {status} {}",
            String::from_utf8_lossy(body)
        ));
    }
    if status < 400 {
        return Ok(());
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        format!(
            "{route}: {status} body is not JSON ({e}): {}",
            String::from_utf8_lossy(body)
        )
    })?;
    let ok = match shape {
        Shape::OpenAi => v["error"]["message"].is_string() && v["error"]["type"].is_string(),
        Shape::Ollama => v["error"].is_string(),
        Shape::Anthropic => v["type"] == "error" && v["error"]["message"].is_string(),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{route}: {status} not in {shape:?} shape: {v}"))
    }
}

#[test]
fn six_hundred_hostile_requests_never_get_a_5xx() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let config = EngineConfig {
        queue_capacity: 256,
        ..EngineConfig::default()
    };
    let s = rt.block_on(Server::ready(fake_engine(
        FakeLm::cycle(tick()).context(256),
        config,
    )));
    let sent = std::cell::Cell::new(0);
    for (r, (route, shape)) in ROUTES.iter().enumerate() {
        let mut runner = common::fuzz_runner(70);
        runner
            .run(&hostile_body(r), |body| {
                sent.set(sent.get() + 1);
                let (status, bytes) = rt.block_on(async {
                    let req = s.http.post(s.url(route));
                    let req = match &body {
                        Body::Json(v) => req.json(v),
                        Body::Raw(b) => req
                            .header("content-type", "application/json")
                            .body(b.clone()),
                    };
                    let resp = req.send().await.unwrap();
                    let status = resp.status().as_u16();
                    (status, resp.bytes().await.unwrap())
                });
                check_answer(route, *shape, status, &bytes).map_err(TestCaseError::fail)?;
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{e}"));
    }
    // Header abuse: a wrong content type, and a huge header.
    rt.block_on(async {
        for (route, shape) in ROUTES {
            let resp = s
                .http
                .post(s.url(route))
                .header("content-type", "text/plain")
                .body("{}")
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            check_answer(route, *shape, status, &resp.bytes().await.unwrap()).unwrap();
            let resp = s
                .http
                .post(s.url(route))
                .header("x-filler", "a".repeat(60_000))
                .json(&seed(0))
                .send()
                .await
                .unwrap();
            assert!(
                resp.status().as_u16() < 500,
                "{route}: huge header gave {}",
                resp.status()
            );
            sent.set(sent.get() + 2);
        }
        assert!(sent.get() >= 600, "{} requests", sent.get());
        // The server is still whole.
        assert_eq!(stream_once(&s, Dialect::Ollama, 3).await, " tick".repeat(3));
    });
}

/// Writes `head`, then `trickle` one byte per 50 ms, until the server answers or closes; returns what it said
/// and when. Panics if the server is still waiting after `limit`.
fn trickle(
    addr: std::net::SocketAddr,
    head: &[u8],
    trickle: &[u8],
    limit: Duration,
) -> (String, Duration) {
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let t0 = Instant::now();
    tcp.write_all(head).unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    for b in trickle.iter().cycle() {
        assert!(
            t0.elapsed() < limit,
            "the server still waits for a trickling client after {limit:?}"
        );
        if tcp.write_all(&[*b]).is_err() {
            break;
        }
        match tcp.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                break;
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break,
        }
    }
    (String::from_utf8_lossy(&answer).into_owned(), t0.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_a_stalled_reader_holds_up_nobody() {
    let config = ApiConfig {
        request_timeout: Duration::from_millis(300),
        ..test_config()
    };
    let engine = fake_engine(FakeLm::cycle(tick()), EngineConfig::default());
    let s = Server::start(AppState::ready(engine, config)).await;
    let addr = s.addr;
    // Headers trickled byte by byte: the connection is closed.
    let (said, took) = tokio::task::spawn_blocking(move || {
        trickle(
            addr,
            b"POST /v1/completions HTTP/1.1\r\nhost: x\r\nx-slow: ",
            b"a",
            Duration::from_secs(10),
        )
    })
    .await
    .unwrap();
    assert!(!said.contains("200 OK"), "{said}");
    assert!(took < Duration::from_secs(5), "cut off after {took:?}");
    // A body trickled byte by byte: 408 in the route's dialect.
    let head = b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 500\r\n\r\n";
    let (said, took) =
        tokio::task::spawn_blocking(move || trickle(addr, head, b" ", Duration::from_secs(10)))
            .await
            .unwrap();
    assert!(said.starts_with("HTTP/1.1 408"), "{said}");
    assert!(said.contains("request_timeout"), "{said}");
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
    // A reader that stops reading a long stream: the others still run to their end.
    let stalled = s
        .post(
            "/v1/completions",
            &json!({"prompt": "hi", "max_tokens": 900, "stream": true}),
        )
        .await;
    assert_eq!(stalled.status(), 200);
    for _ in 0..5 {
        let done = tokio::time::timeout(
            Duration::from_secs(30),
            stream_once(&s, Dialect::Anthropic, 20),
        );
        assert_eq!(done.await.expect("not held up"), " tick".repeat(20));
    }
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_step_fails_its_requests_and_the_server_keeps_serving() {
    // Both requests arrive during the slow step 1 (A's prefill); step 2 decodes A and prefills B (one prompt
    // chunk per step); step 3 decodes both, and panics.
    let model = FakeLm::cycle(tick())
        .panic_at_step(3)
        .delay(Duration::from_millis(100));
    let s = std::sync::Arc::new(Server::ready(fake_engine(model, EngineConfig::default())).await);
    let body = json!({"prompt": "go", "max_tokens": 10, "stream": true});
    let (a, b) = (s.clone(), s.clone());
    let (b1, b2) = (body.clone(), body.clone());
    let first = tokio::spawn(async move { sse(a.post("/v1/completions", &b1).await).await });
    let second = tokio::spawn(async move { sse(b.post("/v1/completions", &b2).await).await });
    for events in [first.await.unwrap(), second.await.unwrap()] {
        let last = events.last().unwrap().json();
        assert!(
            last["error"]["message"]
                .as_str()
                .unwrap()
                .contains("injected panic"),
            "{last}"
        );
        assert!(events.iter().all(|e| e.data != "[DONE]"));
    }
    assert_eq!(stream_once(&s, Dialect::OpenAi, 6).await, " tick".repeat(6));
    let m = s.get("/metrics").await.text().await.unwrap();
    assert_eq!(metric(&m, "rill_failed_requests_total"), 2.0, "{m}");
}
