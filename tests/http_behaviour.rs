//! Server behaviour with a scripted fake model (real GPT-2 tokenizer): UTF-8 intact in every stream, one in-band
//! error frame after the first byte, disconnects that cancel generation (decode, prefill, non-streaming),
//! keep-alives while the engine is silent, concurrent clients, a full queue, and readiness while loading.

mod http_support;

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use http_support::*;
use rill::api::AppState;
use rill::engine::{EngineConfig, EngineStats};
use serde_json::{json, Value};

const TEXT: &str = "Hi 世界🎉 naïve ☃ — ok";

fn script(text: &str) -> Vec<u32> {
    gpt2_tokenizer().encode(text).unwrap()
}

fn user(text: &str) -> Value {
    json!([{ "role": "user", "content": text }])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn utf8_is_intact_in_every_stream() {
    let ids = script(TEXT);
    let tok = gpt2_tokenizer();
    assert!(
        ids.iter()
            .any(|&id| tok.decode(&[id], false).unwrap().contains('\u{FFFD}')),
        "some character spans tokens"
    );
    let s = Server::ready(fake_engine(
        FakeLm::script(ids.clone()),
        EngineConfig::default(),
    ))
    .await;
    let events = sse(s
        .post(
            "/v1/chat/completions",
            &json!({"messages": user("go"), "stream": true}),
        )
        .await)
    .await;
    assert_eq!(openai_text(&events), TEXT);
    let events = sse(s
        .post(
            "/v1/completions",
            &json!({"prompt": "go", "stream": true, "max_tokens": 100}),
        )
        .await)
    .await;
    assert_eq!(openai_text(&events), TEXT);
    let (text, last) = ollama_text(
        &ndjson(
            s.post(
                "/api/chat",
                &json!({"model": "fake", "messages": user("go")}),
            )
            .await,
        )
        .await,
    );
    assert_eq!(
        (text.as_str(), last["eval_count"].as_u64()),
        (TEXT, Some(ids.len() as u64 + 1))
    );
    let (text, _) = ollama_text(
        &ndjson(
            s.post("/api/generate", &json!({"model": "fake", "prompt": "go"}))
                .await,
        )
        .await,
    );
    assert_eq!(text, TEXT);
    let (text, delta) = anthropic_text(
        &sse(s
            .post(
                "/v1/messages",
                &json!({"messages": user("go"), "max_tokens": 64, "stream": true}),
            )
            .await)
        .await,
    );
    assert_eq!(
        (text.as_str(), delta["delta"]["stop_reason"].as_str()),
        (TEXT, Some("end_turn"))
    );
    let whole = s
        .post_json(
            "/v1/chat/completions",
            &json!({"messages": user("go")}),
            200,
        )
        .await;
    assert_eq!(whole["choices"][0]["message"]["content"], TEXT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_after_the_first_byte_is_one_in_band_frame() {
    // The second forward pass (the first decode step) fails; the first already produced a token.
    let new = || {
        fake_engine(
            FakeLm::cycle(script(" tick")).fail_at_step(2),
            EngineConfig::default(),
        )
    };
    let s = Server::ready(new()).await;
    let events = sse(s
        .post(
            "/v1/chat/completions",
            &json!({"messages": user("go"), "stream": true}),
        )
        .await)
    .await;
    let last = events.last().unwrap().json();
    assert!(
        last["error"]["message"]
            .as_str()
            .unwrap()
            .contains("injected failure"),
        "{last}"
    );
    assert_eq!(last["error"]["type"], "server_error");
    assert!(
        events.iter().all(|e| e.data != "[DONE]"),
        "no [DONE] after an error"
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e.json().get("error").is_some())
            .count(),
        1
    );

    let s = Server::ready(new()).await;
    let lines = ndjson(
        s.post(
            "/api/chat",
            &json!({"model": "fake", "messages": user("go")}),
        )
        .await,
    )
    .await;
    assert!(lines.last().unwrap()["error"]
        .as_str()
        .unwrap()
        .contains("injected failure"));
    assert!(lines.iter().all(|l| l["done"] != true));

    let s = Server::ready(new()).await;
    let events = sse(s
        .post(
            "/v1/messages",
            &json!({"messages": user("go"), "max_tokens": 50, "stream": true}),
        )
        .await)
    .await;
    let last = events.last().unwrap();
    assert_eq!(last.event.as_deref(), Some("error"));
    assert_eq!(last.json()["error"]["type"], "api_error");
    assert!(events
        .iter()
        .all(|e| e.event.as_deref() != Some("message_stop")));

    let s = Server::ready(new()).await;
    let v = s
        .post_json(
            "/v1/messages",
            &json!({"messages": user("go"), "max_tokens": 50}),
            500,
        )
        .await;
    assert_eq!(
        (v["type"].as_str(), v["error"]["type"].as_str()),
        (Some("error"), Some("api_error"))
    );
}

/// Waits until the engine holds no sequence and counted exactly one cancellation.
async fn assert_cancelled(stats: &EngineStats) {
    wait_until("the cancelled sequence is freed", || {
        stats.running.load(Relaxed) == 0 && EngineStats::get(&stats.cancelled) == 1
    })
    .await;
    let steps = EngineStats::get(&stats.steps);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        EngineStats::get(&stats.steps),
        steps,
        "no model step runs after the cancellation"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_cancels_streaming_generation() {
    for (path, body) in [
        (
            "/v1/chat/completions",
            json!({"messages": user("go"), "stream": true}),
        ),
        ("/api/generate", json!({"model": "fake", "prompt": "go"})),
        (
            "/v1/messages",
            json!({"messages": user("go"), "stream": true, "max_tokens": 4000}),
        ),
    ] {
        let fake = FakeLm::cycle(script(" tick")).delay(Duration::from_millis(2));
        let s = Server::ready(fake_engine(fake, EngineConfig::default())).await;
        let mut resp = s.post(path, &body).await;
        let seen = read_until_count(&mut resp, String::new(), "tick", 3).await;
        drop(resp);
        let stats = &s.engine().shared().stats;
        assert_cancelled(stats).await;
        let generated = EngineStats::get(&stats.tokens_generated);
        assert!(
            generated < 4000,
            "{path}: stopped long before the context ended ({generated} tokens; saw {} bytes)",
            seen.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_cancels_non_streaming_generation() {
    let fake = FakeLm::cycle(script(" tick")).delay(Duration::from_millis(2));
    let s = Server::ready(fake_engine(fake, EngineConfig::default())).await;
    let (http, url) = (s.http.clone(), s.url("/v1/chat/completions"));
    let task = tokio::spawn(async move {
        http.post(url)
            .json(&json!({"messages": user("go")}))
            .send()
            .await
    });
    let stats = &s.engine().shared().stats;
    wait_until("generation has started", || {
        EngineStats::get(&stats.tokens_generated) > 3
    })
    .await;
    task.abort();
    assert_cancelled(stats).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_during_a_long_prefill_cancels_it() {
    for (path, body) in [
        ("/api/generate", json!({"model": "fake", "raw": true})),
        ("/v1/completions", json!({"stream": true, "max_tokens": 10})),
    ] {
        let gate = Gate::closed();
        let fake = FakeLm::script(script(" done"))
            .gated(gate.clone())
            .delay(Duration::from_millis(10));
        let entered = fake.entered();
        let config = EngineConfig {
            prefill_chunk: 8,
            ..EngineConfig::default()
        };
        let s = Server::ready(fake_engine(fake, config)).await;
        let mut body = body;
        body["prompt"] = json!(" word".repeat(800));
        let resp = s.post(path, &body).await;
        assert_eq!(resp.status(), 200);
        wait_until("the first prefill chunk is in the model", || {
            entered.load(Relaxed) == 1
        })
        .await;
        drop(resp);
        // Give the server a moment to see the closed socket, then let the blocked chunk finish.
        tokio::time::sleep(Duration::from_millis(500)).await;
        gate.open();
        let stats = &s.engine().shared().stats;
        assert_cancelled(stats).await;
        assert_eq!(
            EngineStats::get(&stats.tokens_generated),
            0,
            "{path}: the prompt was never finished"
        );
        assert!(
            EngineStats::get(&stats.steps) < 100,
            "{path}: 800 prompt tokens in chunks of 8 were not all run"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalives_flow_while_the_model_is_silent() {
    for (path, body, ping) in [
        (
            "/v1/chat/completions",
            json!({"messages": user("go"), "stream": true}),
            ": ping\n\n",
        ),
        (
            "/v1/messages",
            json!({"messages": user("go"), "stream": true, "max_tokens": 50}),
            "event: ping",
        ),
    ] {
        let gate = Gate::closed();
        let s = Server::ready(fake_engine(
            FakeLm::script(script(TEXT)).gated(gate.clone()),
            EngineConfig::default(),
        ))
        .await;
        let mut resp = s.post(path, &body).await;
        let mut seen = read_until(&mut resp, ping).await;
        if path == "/v1/messages" {
            // The first ping is part of the opening sequence; wait for a keep-alive after it.
            seen = read_until_count(&mut resp, seen, "event: ping", 2).await;
        }
        gate.open();
        let all = read_rest(resp, seen).await;
        let events: Vec<Sse> = parse_sse(&all).into_iter().filter(|e| !e.comment).collect();
        let text = if path == "/v1/messages" {
            anthropic_text(&events).0
        } else {
            openai_text(&events)
        };
        assert_eq!(text, TEXT, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_each_get_their_own_stream() {
    // The fake repeats the prompt's first token until it has said it six times.
    let fake = FakeLm::new(Box::new(|h: &[u32]| {
        if h.iter().filter(|&&t| t == h[0]).count() > 6 {
            EOS
        } else {
            h[0]
        }
    }))
    .delay(Duration::from_millis(3));
    let s = Server::ready(fake_engine(fake, EngineConfig::default())).await;
    let words = ["apple", "Berlin", "cat", "Dover"];
    let mut expected = Vec::new();
    for w in words {
        let v = s
            .post_json(
                "/v1/completions",
                &json!({"prompt": w, "max_tokens": 20}),
                200,
            )
            .await;
        expected.push(v["choices"][0]["text"].as_str().unwrap().to_string());
    }
    for (i, e) in expected.iter().enumerate() {
        assert!(
            !e.is_empty() && expected.iter().filter(|x| *x == e).count() == 1,
            "answers differ: {i} {expected:?}"
        );
    }
    let s = std::sync::Arc::new(s);
    let tasks: Vec<_> = words
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let s = s.clone();
            let w = w.to_string();
            tokio::spawn(async move {
                if i % 2 == 0 {
                    openai_text(
                        &sse(s
                            .post(
                                "/v1/completions",
                                &json!({"prompt": w, "max_tokens": 20, "stream": true}),
                            )
                            .await)
                        .await,
                    )
                } else {
                    ollama_text(
                        &ndjson(
                            s.post(
                                "/api/generate",
                                &json!({"model": "fake", "prompt": w, "raw": true}),
                            )
                            .await,
                        )
                        .await,
                    )
                    .0
                }
            })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.unwrap(), expected[i], "client {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_is_refused_with_retry_after() {
    let gate = Gate::closed();
    let config = EngineConfig {
        max_running: 1,
        queue_capacity: 1,
        ..EngineConfig::default()
    };
    let s = Server::ready(fake_engine(
        FakeLm::script(script(" ok")).gated(gate.clone()),
        config,
    ))
    .await;
    let body = json!({"messages": user("go"), "stream": true});
    let first = s.post("/v1/chat/completions", &body).await;
    let stats = &s.engine().shared().stats;
    wait_until("the first request holds the only slot", || {
        stats.running.load(Relaxed) == 1
    })
    .await;
    let second = s.post("/v1/chat/completions", &body).await;
    assert_eq!(second.status(), 200, "the second waits in the queue");
    for (path, body, status) in [
        ("/v1/chat/completions", body.clone(), 429),
        (
            "/api/chat",
            json!({"model": "fake", "messages": user("go")}),
            503,
        ),
        (
            "/v1/messages",
            json!({"messages": user("go"), "max_tokens": 5}),
            429,
        ),
    ] {
        let resp = s.post(path, &body).await;
        assert_eq!(resp.status(), status, "{path}");
        assert_eq!(resp.headers()["retry-after"], "1", "{path}");
        let v: Value = resp.json().await.unwrap();
        let message = v["error"]["message"]
            .as_str()
            .or(v["error"].as_str())
            .unwrap();
        assert!(message.contains("busy"), "{path}: {v}");
        if path == "/v1/messages" {
            assert_eq!(v["error"]["type"], "rate_limit_error");
        }
    }
    gate.open();
    for resp in [first, second] {
        assert_eq!(openai_text(&sse(resp).await), " ok");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_503_while_loading_then_200() {
    let state = AppState::loading("fake", test_config());
    let s = Server::start(state.clone()).await;
    let h = s.get("/health").await;
    assert_eq!(h.status(), 503);
    assert_eq!(h.json::<Value>().await.unwrap()["status"], "loading");
    let oa = s
        .post("/v1/chat/completions", &json!({"messages": user("go")}))
        .await;
    assert_eq!(
        (
            oa.status().as_u16(),
            oa.headers().contains_key("retry-after")
        ),
        (503, true)
    );
    assert_eq!(
        oa.json::<Value>().await.unwrap()["error"]["type"],
        "service_unavailable_error"
    );
    let ol = s
        .post_json(
            "/api/chat",
            &json!({"model": "fake", "messages": user("go")}),
            503,
        )
        .await;
    assert!(ol["error"].as_str().unwrap().contains("loading"));
    let an = s
        .post_json(
            "/v1/messages",
            &json!({"messages": user("go"), "max_tokens": 3}),
            503,
        )
        .await;
    assert_eq!(an["error"]["type"], "overloaded_error");
    state.set_ready(fake_engine(
        FakeLm::script(script(" ok")),
        EngineConfig::default(),
    ));
    assert_eq!(s.get("/health").await.status(), 200);
    let v = s
        .post_json(
            "/v1/chat/completions",
            &json!({"messages": user("go")}),
            200,
        )
        .await;
    assert_eq!(v["choices"][0]["message"]["content"], " ok");

    let failed = AppState::loading("fake", test_config());
    failed.set_failed("no such file");
    let s = Server::start(failed).await;
    let h = s.get("/health").await;
    assert_eq!(h.status(), 503);
    let v: Value = h.json().await.unwrap();
    assert_eq!(v["status"], "error");
    assert!(v["error"].as_str().unwrap().contains("no such file"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_the_engine_did() {
    let s = Server::ready(fake_engine(
        FakeLm::cycle(script(" abc def")),
        EngineConfig::default(),
    ))
    .await;
    for _ in 0..3 {
        s.post_json(
            "/v1/completions",
            &json!({"prompt": "go", "max_tokens": 5}),
            200,
        )
        .await;
    }
    // The engine releases a slot just after handing out its Done: wait for that before scraping.
    let stats = &s.engine().shared().stats;
    for _ in 0..2000 {
        if stats.running.load(Relaxed) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let resp = s.get("/metrics").await;
    assert_eq!(resp.status(), 200);
    let kind = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
    let text = resp.text().await.unwrap();
    let value = |series: &str| -> f64 {
        let line = text.lines().find(|l| l.starts_with(series));
        let line = line.unwrap_or_else(|| panic!("no {series} in:\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(value("rill_generated_tokens_total{"), 15.0);
    assert_eq!(value("rill_ttft_seconds_count{"), 3.0);
    assert_eq!(value("rill_steps_total{"), value("rill_batch_size_count{"));
    assert!(value("rill_steps_total{") >= 15.0);
    assert_eq!(value("rill_running_sequences{"), 0.0);
    assert_eq!(value("rill_cancelled_requests_total{"), 0.0);
}
