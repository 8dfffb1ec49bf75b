//! Resumable browser streams (`/v1/streams`) and the chat page's routes, over real sockets on 127.0.0.1 with a
//! scripted model:
//! - a stream's events are numbered from 1, open with `retry:`, and end with `done` carrying usage and timings;
//! - a reader that drops mid-answer and comes back with `Last-Event-ID` (header or query) gets exactly the events
//!   after it, so the text equals an uninterrupted run, with nothing lost or repeated;
//! - a generation nobody reconnects to is cancelled after the resume window, and everything is freed;
//! - `DELETE` stops a generation (the `cancelled` event, `/metrics` counts it);
//! - the API key guards creating and stopping, the stream token guards reading; silence gets keep-alives;
//! - the page is served with its CSP, and `/` sends browsers to it while API clients keep Ollama's answer.
//! - forged stream ids, tokens and `Last-Event-ID`s get a 4xx in OpenAI's shape, never a 5xx.

mod http_support;

use std::time::{Duration, Instant};

use http_support::*;
use rill::api::{ApiConfig, AppState};
use rill::engine::EngineConfig;
use serde_json::{json, Value};

fn tick() -> Vec<u32> {
    gpt2_tokenizer().encode(" tick").unwrap()
}

fn config(window_ms: u64) -> ApiConfig {
    ApiConfig {
        resume_window: Duration::from_millis(window_ms),
        ..test_config()
    }
}

async fn server(model: FakeLm, api: ApiConfig) -> Server {
    Server::start(AppState::ready(
        fake_engine(model, EngineConfig::default()),
        api,
    ))
    .await
}

fn chat(n: usize) -> Value {
    json!({"messages": [{"role": "user", "content": "count"}], "max_tokens": n, "temperature": 0})
}

/// Starts a stream; returns the creation answer.
async fn create(s: &Server, body: &Value) -> Value {
    let resp = s.post("/v1/streams", body).await;
    assert_eq!(resp.status(), 201);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        location,
        format!("/v1/streams/{}", v["id"].as_str().unwrap())
    );
    v
}

async fn open(s: &Server, url: &str, last: Option<u64>) -> reqwest::Response {
    let mut req = s.http.get(s.url(url));
    if let Some(id) = last {
        req = req.header("last-event-id", id.to_string());
    }
    req.send().await.unwrap()
}

/// Text and ids of the `delta` events in `events`.
fn deltas(events: &[Sse]) -> (String, Vec<u64>) {
    let mut text = String::new();
    let mut ids = Vec::new();
    for e in events
        .iter()
        .filter(|e| e.event.as_deref() == Some("delta"))
    {
        text.push_str(e.json()["text"].as_str().unwrap());
        ids.push(e.id.unwrap());
    }
    (text, ids)
}

fn data_events(body: &str) -> Vec<Sse> {
    parse_sse(body).into_iter().filter(|e| !e.comment).collect()
}

/// Polls `/metrics` until `ok` holds (at most 10 s); returns the last text.
async fn metrics_until(s: &Server, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = s.get("/metrics").await.text().await.unwrap();
        if ok(&text) || Instant::now() > deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_numbered_and_ends_with_usage_and_timings() {
    let s = server(FakeLm::cycle(tick()), config(5_000)).await;
    let c = create(&s, &chat(6)).await;
    assert_eq!(c["model"], "fake");
    assert_eq!(c["resume_window_secs"], 5.0);
    let resp = open(&s, c["events_url"].as_str().unwrap(), None).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let body = resp.text().await.unwrap();
    assert!(body.starts_with("retry: 1000\n\n"), "{body}");
    let events = data_events(&body);
    let ids: Vec<u64> = events.iter().map(|e| e.id.unwrap()).collect();
    assert_eq!(ids, (1..=events.len() as u64).collect::<Vec<_>>());
    let (text, _) = deltas(&events);
    assert_eq!(text, " tick".repeat(6));
    let done = events.last().unwrap();
    assert_eq!(done.event.as_deref(), Some("done"));
    let d = done.json();
    assert_eq!(d["finish_reason"], "length");
    assert_eq!(d["usage"]["completion_tokens"], 6);
    assert!(d["timings"]["ttft_ms"].as_f64().unwrap() > 0.0, "{d}");
    let tokens: u64 = events[..events.len() - 1]
        .iter()
        .map(|e| e.json()["tokens"].as_u64().unwrap())
        .sum();
    assert_eq!(tokens, 6, "delta token counts add up to the usage");
    // Everything was read: a browser's reconnect is told to stop.
    let again = open(
        &s,
        c["events_url"].as_str().unwrap(),
        Some(done.id.unwrap()),
    )
    .await;
    assert_eq!(again.status(), 204);
    // A late reader from the start still gets the whole answer, within the window.
    let replay = data_events(
        &open(&s, c["events_url"].as_str().unwrap(), None)
            .await
            .text()
            .await
            .unwrap(),
    );
    assert_eq!(replay, events);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_reader_resumes_without_losing_or_repeating_a_token() {
    let model = FakeLm::cycle(tick()).delay(Duration::from_millis(5));
    let s = server(model, config(5_000)).await;
    let n = 60;
    // The uninterrupted answer.
    let c = create(&s, &chat(n)).await;
    let whole = open(&s, c["events_url"].as_str().unwrap(), None)
        .await
        .text()
        .await
        .unwrap();
    let (expected, _) = deltas(&data_events(&whole));
    assert_eq!(expected, " tick".repeat(n));

    let c = create(&s, &chat(n)).await;
    let url = c["events_url"].as_str().unwrap().to_string();
    let mut text = String::new();
    let mut last = None;
    // Three connections, each cut after a few events; the last one also resumes through the query parameter.
    for round in 0..3 {
        let mut resp = if round == 2 {
            let q = format!("{url}&last_event_id={}", last.unwrap());
            open(&s, &q, None).await
        } else {
            open(&s, &url, last).await
        };
        assert_eq!(resp.status(), 200);
        let body = read_until_count(&mut resp, String::new(), "event: delta", 4).await;
        drop(resp);
        // Keep only complete events; a half-read one is read again after the reconnect.
        let complete = &body[..body.rfind("\n\n").unwrap() + 2];
        let events = data_events(complete);
        let (t, ids) = deltas(&events);
        if let (Some(prev), Some(first)) = (last, ids.first()) {
            assert_eq!(*first, prev + 1, "resumes right after the last event seen");
        }
        text.push_str(&t);
        last = ids.last().copied().or(last);
        // The generation goes on meanwhile.
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let rest = open(&s, &url, last).await.text().await.unwrap();
    let events = data_events(&rest);
    assert_eq!(events.first().unwrap().id, Some(last.unwrap() + 1));
    text.push_str(&deltas(&events).0);
    assert_eq!(events.last().unwrap().event.as_deref(), Some("done"));
    assert_eq!(text, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generation_nobody_comes_back_to_is_cancelled_after_the_window() {
    let model = FakeLm::cycle(tick()).delay(Duration::from_millis(5));
    let s = server(model, config(300)).await;
    let c = create(&s, &chat(100_000)).await;
    let mut resp = open(&s, c["events_url"].as_str().unwrap(), None).await;
    read_until_count(&mut resp, String::new(), "event: delta", 2).await;
    let left = Instant::now();
    drop(resp);
    let text = metrics_until(&s, |m| metric(m, "rill_running_sequences") == 0.0).await;
    assert_eq!(metric(&text, "rill_running_sequences"), 0.0, "{text}");
    assert!(
        left.elapsed() >= Duration::from_millis(300),
        "not before the window"
    );
    assert_eq!(
        metric(&text, "rill_cancelled_requests_total"),
        1.0,
        "{text}"
    );
    assert_eq!(metric(&text, "rill_kv_reserved_bytes"), 0.0, "{text}");
    let text = metrics_until(&s, |m| metric(m, "rill_browser_streams") == 0.0).await;
    assert_eq!(metric(&text, "rill_browser_streams"), 0.0, "{text}");
    let gone = open(&s, c["events_url"].as_str().unwrap(), None).await;
    assert_eq!(gone.status(), 404);
    let err: Value = gone.json().await.unwrap();
    assert_eq!(err["error"]["type"], "invalid_request_error");

    // A stream that was never opened is freed the same way.
    let c = create(&s, &chat(100_000)).await;
    let text = metrics_until(&s, |m| metric(m, "rill_browser_streams") == 0.0).await;
    assert_eq!(
        metric(&text, "rill_cancelled_requests_total"),
        2.0,
        "{text}"
    );
    assert_eq!(
        open(&s, c["events_url"].as_str().unwrap(), None)
            .await
            .status(),
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_stops_the_generation() {
    let model = FakeLm::cycle(tick()).delay(Duration::from_millis(5));
    let s = server(model, config(5_000)).await;
    let c = create(&s, &chat(100_000)).await;
    let mut resp = open(&s, c["events_url"].as_str().unwrap(), None).await;
    let seen = read_until_count(&mut resp, String::new(), "event: delta", 2).await;
    let stop = s
        .http
        .delete(s.url(c["cancel_url"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(stop.status(), 200);
    let v: Value = stop.json().await.unwrap();
    assert_eq!(v, json!({"id": c["id"], "cancelled": true}));
    let body = read_rest(resp, seen).await;
    let events = data_events(&body);
    let last = events.last().unwrap();
    assert_eq!(last.event.as_deref(), Some("cancelled"), "{body}");
    let text = metrics_until(&s, |m| metric(m, "rill_running_sequences") == 0.0).await;
    assert_eq!(
        metric(&text, "rill_cancelled_requests_total"),
        1.0,
        "{text}"
    );
    // Stopping again changes nothing.
    let again: Value = s
        .http
        .delete(s.url(c["cancel_url"].as_str().unwrap()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again["cancelled"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_guards_creating_and_stopping_and_the_token_guards_reading() {
    let api = ApiConfig {
        api_key: Some("sekrit".into()),
        ..config(5_000)
    };
    let s = server(FakeLm::cycle(tick()), api).await;
    let refused = s.post("/v1/streams", &chat(3)).await;
    assert_eq!(refused.status(), 401);
    let resp = s
        .http
        .post(s.url("/v1/streams"))
        .bearer_auth("sekrit")
        .json(&chat(3))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let c: Value = resp.json().await.unwrap();
    let (id, url) = (c["id"].as_str().unwrap(), c["events_url"].as_str().unwrap());
    assert!(!url.contains("sekrit"), "the key never goes into a URL");
    // The event feed opens with the token alone (an EventSource cannot send the key)...
    let events = data_events(&open(&s, url, None).await.text().await.unwrap());
    assert_eq!(deltas(&events).0, " tick".repeat(3));
    // ...and never without it, or with another stream's.
    for bad in [
        format!("/v1/streams/{id}/events"),
        format!("/v1/streams/{id}/events?token=x"),
        format!(
            "/v1/streams/{id}/events?token={}",
            c["token"].as_str().unwrap().to_lowercase() + "0"
        ),
    ] {
        assert_eq!(open(&s, &bad, None).await.status(), 404, "{bad}");
    }
    // Stopping needs the key too.
    let cancel = s.url(c["cancel_url"].as_str().unwrap());
    assert_eq!(s.http.delete(&cancel).send().await.unwrap().status(), 401);
    let ok = s
        .http
        .delete(&cancel)
        .bearer_auth("sekrit")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silence_gets_keepalives_and_bad_requests_are_refused_before_a_stream() {
    let gate = Gate::closed();
    let s = server(FakeLm::script(tick()).gated(gate.clone()), config(5_000)).await;
    let c = create(&s, &chat(1)).await;
    let mut resp = open(&s, c["events_url"].as_str().unwrap(), None).await;
    let seen = read_until_count(&mut resp, String::new(), ": keep-alive", 2).await;
    assert!(!seen.contains("event:"), "{seen}");
    gate.open();
    let events = data_events(&read_rest(resp, seen).await);
    assert_eq!(deltas(&events).0, " tick");

    for (body, needle) in [
        (json!({"messages": "nope"}), "expected a sequence"),
        (
            json!({"messages": [{"role": "user", "content": "x"}], "temperature": 9}),
            "temperature",
        ),
        (
            json!({"messages": [{"role": "user", "content": "x"}], "logprobs": true}),
            "logprobs",
        ),
        (
            json!({"messages": [{"role": "user", "content": "x"}], "tool_choice": "required",
                   "tools": [{"type": "function", "function": {"name": "f"}}]}),
            "tool calls",
        ),
    ] {
        let resp = s.post("/v1/streams", &body).await;
        assert_eq!(resp.status(), 400, "{body}");
        let v: Value = resp.json().await.unwrap();
        assert!(
            v["error"]["message"].as_str().unwrap().contains(needle),
            "{v}"
        );
    }
    let bad_id = s
        .http
        .get(s.url(c["events_url"].as_str().unwrap()))
        .header("last-event-id", "soon")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_id.status(), 400);
    // An id past the stream's last event (or at the edge of the integers) is refused, never wrapped around.
    for past in ["99", "18446744073709551615"] {
        let resp = s
            .http
            .get(s.url(c["events_url"].as_str().unwrap()))
            .header("last-event-id", past)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{past}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_served_with_its_policy_and_only_browsers_are_sent_to_it() {
    let api = ApiConfig {
        api_key: Some("sekrit".into()),
        ..config(5_000)
    };
    let s = server(FakeLm::cycle(tick()), api).await;
    let page = s.get("/ui").await;
    assert_eq!(page.status(), 200, "the page needs no key: it asks for one");
    let h = page.headers().clone();
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert!(page.text().await.unwrap().contains("/ui/app.js"));
    for (path, kind) in [
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
    ] {
        let r = s.get(path).await;
        assert_eq!(r.status(), 200);
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with(kind));
    }
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let browser = no_redirects
        .get(s.url("/"))
        .header("accept", "text/html,application/xhtml+xml,*/*;q=0.8")
        .send()
        .await
        .unwrap();
    assert_eq!(browser.status(), 303);
    assert_eq!(browser.headers()["location"], "/ui");
    let client = no_redirects.get(s.url("/")).send().await.unwrap();
    assert_eq!(client.status(), 200);
    assert_eq!(client.text().await.unwrap(), "rill is running\n");
}

/// Refused in OpenAI's error shape: a JSON body with `error.message` and `error.type`.
fn openai_refusal(status: u16, body: &[u8]) {
    assert!((400..500).contains(&status), "status {status}");
    let v: Value = serde_json::from_slice(body).unwrap();
    assert!(
        v["error"]["message"].is_string() && v["error"]["type"].is_string(),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_ids_tokens_and_last_event_ids_get_a_4xx_never_a_5xx() {
    let s = server(FakeLm::cycle(tick()), config(5_000)).await;
    let real = create(&s, &chat(3)).await;
    let (id, token) = (
        real["id"].as_str().unwrap(),
        real["token"].as_str().unwrap(),
    );
    let ids = [id, "strm_x", "%00", "..", &"z".repeat(5000)];
    let tokens = ["", token, "x", "%ff%fe", &"t".repeat(5000)];
    let last = [
        "",
        "1",
        "-1",
        "18446744073709551616",
        "NaN",
        "3 4",
        &"9".repeat(300),
    ];
    for (i, (id_, token_)) in ids
        .iter()
        .flat_map(|i| tokens.iter().map(move |t| (i, t)))
        .enumerate()
    {
        let mut get = s
            .http
            .get(s.url(&format!("/v1/streams/{id_}/events?token={token_}")));
        if !last[i % last.len()].is_empty() {
            get = get.header("last-event-id", last[i % last.len()]);
        }
        let resp = get.send().await.unwrap();
        let status = resp.status().as_u16();
        match status {
            200 | 204 => assert_eq!(
                (*id_, *token_),
                (id, token),
                "only the real pair opens the feed"
            ),
            _ => openai_refusal(status, &resp.bytes().await.unwrap()),
        }
        let del = s
            .http
            .delete(s.url(&format!("/v1/streams/{id_}?token={token_}")))
            .send()
            .await
            .unwrap();
        let status = del.status().as_u16();
        if status != 200 {
            openai_refusal(status, &del.bytes().await.unwrap());
        }
    }
}
