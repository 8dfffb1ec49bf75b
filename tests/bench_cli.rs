//! `rill bench`, the real binary, against rill's HTTP app on 127.0.0.1 serving the scripted fake model: request
//! counts per level, token counts from usage, the summary's invariants, and failures (an unknown model, a wrong
//! API key, an in-band error) recorded per request with a non-zero exit. No timing thresholds.

mod http_support;

use std::process::{Command, Output};
use std::time::Duration;

use http_support::*;
use rill::api::{ApiConfig, AppState};
use rill::engine::EngineConfig;
use serde_json::Value;

const KEY: &str = "sekret";

/// A server whose model says " tick" forever (never EOS), a little slowly so that timings are not all zero.
async fn ticking_server(api_key: Option<&str>, fail_at_step: Option<u64>) -> Server {
    let script = gpt2_tokenizer().encode(" tick").unwrap();
    let mut fake = FakeLm::cycle(script).delay(Duration::from_millis(1));
    if let Some(n) = fail_at_step {
        fake = fake.fail_at_step(n);
    }
    let config = ApiConfig {
        api_key: api_key.map(str::to_string),
        ..test_config()
    };
    Server::start(AppState::ready(
        fake_engine(fake, EngineConfig::default()),
        config,
    ))
    .await
}

/// Runs `rill bench` with `args` (off the async workers, which serve the requests meanwhile).
async fn bench(args: &[&str], api_key: Option<&str>) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let key = api_key.map(str::to_string);
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rill"));
        cmd.arg("bench").args(&args).env("RILL_LOG", "warn");
        match key {
            Some(k) => cmd.env("OPENAI_API_KEY", k),
            None => cmd.env_remove("OPENAI_API_KEY"),
        };
        cmd.output().unwrap()
    })
    .await
    .unwrap()
}

fn report(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("a number: {v}"))
}

/// Every request succeeded with exactly `tokens` tokens (from usage), and the summary is consistent with them.
fn check_level(level: &Value, concurrency: usize, rounds: usize, tokens: u64) {
    let s = &level["summary"];
    let n = concurrency * rounds;
    assert_eq!(s["concurrency"], concurrency as u64, "{s}");
    assert_eq!(s["requests"], n as u64, "{s}");
    assert_eq!(
        (s["ok"].as_u64(), s["failed"].as_u64()),
        (Some(n as u64), Some(0)),
        "{s}"
    );
    assert_eq!(s["short"], 0, "{s}");
    assert_eq!(s["completion_tokens"], tokens * n as u64, "{s}");
    assert!(f(&s["aggregate_tok_s"]) > 0.0, "{s}");
    assert!(f(&s["wall_s"]) > 0.0, "{s}");
    for m in ["ttft_ms", "e2e_ms", "decode_tok_s"] {
        // A decode rate needs two chunks read at different moments, which a busy machine may not give.
        let count = s[m]["n"].as_u64().unwrap();
        if m == "decode_tok_s" {
            assert!(count <= n as u64, "{m}: {s}");
            if count == 0 {
                continue;
            }
        } else {
            assert_eq!(count, n as u64, "{m}: {s}");
        }
        assert!(f(&s[m]["p50"]) <= f(&s[m]["p95"]), "{m}: {s}");
        assert!(f(&s[m]["p95"]) <= f(&s[m]["max"]), "{m}: {s}");
        assert!(f(&s[m]["min"]) <= f(&s[m]["p50"]), "{m}: {s}");
    }
    assert!(f(&s["ttft_ms"]["max"]) <= f(&s["e2e_ms"]["max"]), "{s}");
    let reqs = level["requests"].as_array().unwrap();
    assert_eq!(reqs.len(), n);
    let mut prompts = Vec::new();
    for (i, r) in reqs.iter().enumerate() {
        assert_eq!(r["index"], i as u64, "{r}");
        assert_eq!(r["error"], Value::Null, "{r}");
        assert_eq!(r["status"], 200, "{r}");
        assert_eq!(r["completion_tokens"], tokens, "{r}");
        assert_eq!(r["token_source"], "usage", "{r}");
        assert_eq!(r["finish_reason"], "length", "{r}");
        assert!(r["prompt_tokens"].as_u64().unwrap() > 0, "{r}");
        let chunks = r["content_chunks"].as_u64().unwrap();
        assert!((1..=tokens).contains(&chunks), "{r}");
        assert_eq!(
            r["gaps_ms"].as_array().unwrap().len() as u64,
            chunks - 1,
            "{r}"
        );
        assert!(f(&r["ttft_ms"]) <= f(&r["e2e_ms"]), "{r}");
        assert!(
            r["decode_tok_s"].is_null() || f(&r["decode_tok_s"]) > 0.0,
            "{r}"
        );
        prompts.push(r["prompt_index"].as_u64().unwrap());
    }
    prompts.sort();
    prompts.dedup();
    assert_eq!(
        prompts.len(),
        n,
        "each request of a level uses its own prompt"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_measures_every_level_and_writes_json() {
    let s = ticking_server(Some(KEY), None).await;
    // `/v1` on the URL is accepted; the model comes from GET /v1/models; the key from OPENAI_API_KEY.
    let url = s.url("/v1");
    let out = bench(
        &[
            "--url",
            &url,
            "--concurrency",
            "1,3",
            "--rounds",
            "2",
            "--max-tokens",
            "7",
            "--ignore-eos",
            "--json",
            "-",
        ],
        Some(KEY),
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let v = report(&out);
    assert_eq!(v["server"]["url"], s.url(""));
    assert_eq!(v["server"]["model"], "fake");
    assert_eq!(v["settings"]["concurrency"], serde_json::json!([1, 3]));
    assert_eq!(v["settings"]["max_tokens"], 7);
    assert_eq!(v["settings"]["ignore_eos"], true);
    assert_eq!(v["settings"]["endpoint"], "chat");
    assert!(v["settings"]["prompts"].as_array().unwrap().len() >= 16);
    let levels = v["levels"].as_array().unwrap();
    assert_eq!(levels.len(), 2);
    check_level(&levels[0], 1, 2, 7);
    check_level(&levels[1], 3, 2, 7);
    // With --json -, the table goes to stderr: a header and one row per level.
    let err = stderr(&out);
    assert!(err.contains("agg tok/s"), "{err}");
    assert!(
        err.lines()
            .any(|l| l.trim_start().starts_with("3 ") && l.contains("6/6")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_measures_text_completions_and_writes_a_json_file() {
    let s = ticking_server(None, None).await;
    let dir = std::env::temp_dir().join(format!("rill-bench-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("out.json");
    let out = bench(
        &[
            "--url",
            &s.url("/"),
            "--endpoint",
            "completions",
            "--concurrency",
            "2",
            "--rounds",
            "1",
            "--max-tokens",
            "5",
            "--warmup",
            "0",
            "--prompt",
            "one",
            "--prompt",
            "two",
            "--json",
            path.to_str().unwrap(),
        ],
        None,
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("/v1/completions") && table.contains("2/2"),
        "{table}"
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(v["settings"]["prompts"], serde_json::json!(["one", "two"]));
    check_level(&v["levels"][0], 2, 1, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_model_fails_every_request_and_the_command() {
    let s = ticking_server(None, None).await;
    let out = bench(
        &[
            "--url",
            &s.url(""),
            "--model",
            "no-such-model",
            "--concurrency",
            "2",
            "--rounds",
            "1",
            "--json",
            "-",
        ],
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let v = report(&out);
    let level = &v["levels"][0];
    assert_eq!(level["summary"]["failed"], 2);
    assert_eq!(level["summary"]["ok"], 0);
    assert_eq!(level["summary"]["ttft_ms"]["p50"], Value::Null);
    assert_eq!(level["warmup_errors"].as_array().unwrap().len(), 1);
    for r in level["requests"].as_array().unwrap() {
        assert_eq!(r["status"], 404, "{r}");
        let e = r["error"].as_str().unwrap();
        assert!(
            e.starts_with("HTTP 404") && e.contains("no-such-model"),
            "{r}"
        );
    }
    let err = stderr(&out);
    assert!(err.contains("2 of 2 measured requests failed"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_api_key_is_reported() {
    let s = ticking_server(Some(KEY), None).await;
    // Without a model, the model list itself is refused: nothing is measured.
    let out = bench(&["--url", &s.url(""), "--json", "-"], Some("wrong")).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = stderr(&out);
    assert!(
        err.contains("/v1/models") && err.contains("HTTP 401"),
        "{err}"
    );
    // With one, every request is a recorded 401.
    let out = bench(
        &[
            "--url",
            &s.url(""),
            "--model",
            "fake",
            "--concurrency",
            "1",
            "--rounds",
            "2",
            "--api-key",
            "wrong",
            "--json",
            "-",
        ],
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let v = report(&out);
    let reqs = v["levels"][0]["requests"].as_array().unwrap();
    assert_eq!(reqs.len(), 2);
    assert!(reqs.iter().all(|r| r["status"] == 401), "{reqs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_band_error_after_the_stream_started_is_recorded() {
    // Forward pass 1 is the prefill, 2 and 3 decode: the stream has started when pass 4 fails.
    let s = ticking_server(None, Some(4)).await;
    let out = bench(
        &[
            "--url",
            &s.url(""),
            "--concurrency",
            "1",
            "--rounds",
            "1",
            "--warmup",
            "0",
            "--max-tokens",
            "50",
            "--json",
            "-",
        ],
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let v = report(&out);
    let r = &v["levels"][0]["requests"][0];
    assert_eq!(r["status"], 200, "{r}");
    assert!(
        r["error"].as_str().unwrap().starts_with("in-band error"),
        "{r}"
    );
    assert!(r["content_chunks"].as_u64().unwrap() >= 1, "{r}");
    assert_eq!(v["levels"][0]["summary"]["failed"], 1);
}
