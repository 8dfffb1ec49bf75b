//! The `rill serve` binary itself: it binds 127.0.0.1 on the port it prints, turns `/health` to 200 once the model
//! has loaded, applies its flags and environment (API key, CORS origin, body limit), and stops on SIGTERM.

mod http_support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use http_support::common;
use serde_json::{json, Value};

struct Served {
    child: Child,
    url: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary on a free port with `args`, returning once it printed its address.
fn start(args: &[&str], env: &[(&str, &str)]) -> Served {
    start_model("tiny-gpt2", args, env)
}

/// The same for the model `model` under `models/`.
fn start_model(model: &str, args: &[&str], env: &[(&str, &str)]) -> Served {
    common::model_path(model);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rill"));
    cmd.args(["serve", "--model", model, "--port", "0"])
        .args(args);
    cmd.arg("--models-dir").arg(common::root().join("models"));
    cmd.env_remove("RILL_API_KEY")
        .env("RILL_LOG", "warn")
        .envs(env.iter().copied());
    let mut child = cmd
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let url = loop {
        let line = lines
            .next()
            .expect("rill serve printed its address")
            .unwrap();
        if let Some(url) = line.strip_prefix("rill listening on ") {
            break url.to_string();
        }
    };
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    Served { child, url }
}

async fn wait_ready(http: &reqwest::Client, url: &str) -> Value {
    for _ in 0..600 {
        if let Ok(r) = http.get(format!("{url}/health")).send().await {
            if r.status() == 200 {
                return r.json().await.unwrap();
            }
            assert_eq!(r.status(), 503, "only 503 while loading");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("rill serve at {url} never became ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_with_its_flags() {
    let origin = "http://app.example";
    let s = start(
        &["--cors-origin", origin, "--body-limit", "2000"],
        &[("RILL_API_KEY", "sekret")],
    );
    assert!(
        s.url.starts_with("http://127.0.0.1:"),
        "binds 127.0.0.1 by default: {}",
        s.url
    );
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let health = wait_ready(&http, &s.url).await;
    assert_eq!(health["model"], "tiny-gpt2");
    let chat = format!("{}/v1/chat/completions", s.url);
    let body = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3});
    let denied = http.post(&chat).json(&body).send().await.unwrap();
    assert_eq!(denied.status(), 401, "RILL_API_KEY is enforced");
    let ok = http
        .post(&chat)
        .bearer_auth("sekret")
        .header("origin", origin)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.headers()["x-rill-model"], "tiny-gpt2");
    assert_eq!(ok.headers()["access-control-allow-origin"], origin);
    let v: Value = ok.json().await.unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 3);
    let big = json!({"messages": [{"role": "user", "content": "x".repeat(3000)}]});
    let too_big = http
        .post(&chat)
        .bearer_auth("sekret")
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(too_big.status(), 413);
}

/// Each of the process's threads by name, with its scheduling policy (`/proc/PID/task/TID/stat`, field 41).
#[cfg(target_os = "linux")]
fn thread_policies(pid: u32) -> Vec<(String, u32)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks
        .filter_map(|t| {
            let dir = t.ok()?.path();
            let name = std::fs::read_to_string(dir.join("comm")).ok()?;
            let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
            // Fields after the parenthesised name start at field 3.
            let rest = &stat[stat.rfind(')')? + 1..];
            let policy = rest.split_whitespace().nth(41 - 3)?.parse().ok()?;
            Some((name.trim().to_string(), policy))
        })
        .collect()
}

/// The HTTP runtime's threads run under SCHED_BATCH (their wake-ups do not preempt the step), while the
/// generation thread and the pool's workers stay normal threads.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_threads_are_batch_threads_and_the_compute_threads_are_not() {
    let (normal, batch) = (0, 3);
    let s = start_model("smollm2", &["--threads", "2"], &[]);
    let http = reqwest::Client::new();
    wait_ready(&http, &s.url).await;
    let body = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
    let r = http
        .post(format!("{}/v1/chat/completions", s.url))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let threads = thread_policies(s.child.id());
    let of = |prefix: &str| -> Vec<u32> {
        threads
            .iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .map(|t| t.1)
            .collect()
    };
    let (http_threads, gen, workers) = (of("tokio-rt-worker"), of("rill-gen"), of("rill-cpu-"));
    assert!(
        !http_threads.is_empty() && !workers.is_empty(),
        "{threads:?}"
    );
    assert!(http_threads.iter().all(|&p| p == batch), "{threads:?}");
    assert_eq!(gen, [normal], "{threads:?}");
    assert!(workers.iter().all(|&p| p == normal), "{threads:?}");
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_server() {
    let mut s = start(&[], &[]);
    let http = reqwest::Client::new();
    wait_ready(&http, &s.url).await;
    let pid = s.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    for _ in 0..600 {
        if let Some(status) = s.child.try_wait().unwrap() {
            assert!(status.success(), "a clean exit: {status}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("rill serve did not stop on SIGTERM");
}

#[test]
fn a_model_that_fails_to_load_stops_the_server_with_the_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_rill"))
        .args(["serve", "--port", "0", "--model"])
        .arg(common::root().join("models/no-such-model.gguf"))
        .env("RILL_LOG", "off")
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("rill listening on") && err.contains("no-such-model"),
        "{err}"
    );
}

/// `RILL_ANY_MODEL` (a flag) takes the usual ways of saying yes and no from the environment, not only `true`
/// and `false`: the server gets past its flags (to the missing model) with each, and names the variable's bad
/// value otherwise.
#[test]
fn boolean_flags_take_yes_and_no_from_the_environment() {
    let run = |value: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_rill"))
            .args(["serve", "--port", "0", "--model"])
            .arg(common::root().join("models/no-such-model.gguf"))
            .env("RILL_LOG", "off")
            .env("HF_HUB_OFFLINE", "1")
            .env("RILL_ANY_MODEL", value)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    for value in ["1", "yes", "on", "true", "0", "no", "off", "false"] {
        let err = run(value);
        assert!(
            err.contains("no-such-model") && !err.contains("invalid value"),
            "{value}: {err}"
        );
    }
    let err = run("maybe");
    assert!(err.contains("invalid value 'maybe'"), "{err}");
}

/// Numbers no server can run with are refused as the flags are read, naming the flag: zero slots, queue,
/// prefill chunk, KV budget or body limit (each was silently made 1, or a budget no request fits), a thread
/// count no machine starts (it panicked spawning), seconds a `Duration` cannot hold (SIGTERM panicked), and a
/// device rill has no backend for. Values at the edges get past the flags (to the missing model).
#[test]
fn impossible_numbers_are_refused_with_the_flag() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_rill"))
            .args(["serve", "--port", "0", "--model"])
            .arg(common::root().join("models/no-such-model.gguf"))
            .args(args)
            .env("RILL_LOG", "off")
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    for (flag, value) in [
        ("--max-running", "0"),
        ("--queue-size", "0"),
        ("--prefill-chunk", "0"),
        ("--kv-budget-mb", "0"),
        ("--body-limit", "0"),
        ("--threads", "0"),
        ("--threads", "100000"),
        ("--shutdown-grace-secs", "1e300"),
        ("--shutdown-grace-secs", "inf"),
        ("--sse-ping-secs", "NaN"),
        ("--request-timeout-secs", "-1"),
        ("--resume-window-secs", "1e20"),
        ("--device", "tpu"),
    ] {
        let err = run(&[&format!("{flag}={value}")]);
        assert!(
            err.contains(&format!("invalid value '{value}' for '{flag}")),
            "{flag} {value}: {err}"
        );
    }
    for args in [
        &["--threads", "1024", "--max-running", "1"][..],
        &["--shutdown-grace-secs", "0", "--sse-ping-secs", "31536000"],
        &["--device", "auto"],
    ] {
        let err = run(args);
        assert!(
            err.contains("no-such-model") && !err.contains("invalid value"),
            "{args:?}: {err}"
        );
    }
}

/// The thread count changes which thread computes a piece of work, never the arithmetic: one and two threads
/// give the same text and the same logprob bits (prompt and generated) for GPT-2 (f32) and SmolLM2 (Q4_1/Q8_0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thread_count_changes_no_bit() {
    let http = reqwest::Client::new();
    for model in ["tiny-gpt2", "smollm2"] {
        let mut answers = Vec::new();
        for threads in ["1", "2"] {
            let s = start_model(model, &["--threads", threads, "--max-logprobs", "40"], &[]);
            wait_ready(&http, &s.url).await;
            let body = json!({
                "prompt": "The quick brown fox jumps over the lazy dog, and then",
                "max_tokens": 12, "temperature": 0, "ignore_eos": true,
                "echo": true, "logprobs": 40, "return_tokens_as_token_ids": true,
            });
            let r: Value = http
                .post(format!("{}/v1/completions", s.url))
                .json(&body)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let choice = &r["choices"][0];
            assert!(
                choice["logprobs"]["tokens"].as_array().unwrap().len() > 12,
                "{r}"
            );
            // Serialized floats are the shortest text that round-trips the f32: equal text, equal bits.
            answers.push(serde_json::to_string(choice).unwrap());
        }
        assert_eq!(answers[0], answers[1], "{model}: 1 thread vs 2");
    }
}

fn signal(s: &Served, sig: &str) {
    let pid = s.child.id().to_string();
    assert!(Command::new("kill")
        .args([sig, &pid])
        .status()
        .unwrap()
        .success());
}

/// Waits up to `secs` for the process to exit; its status, if it did.
async fn exit_within(s: &mut Served, secs: u64) -> Option<std::process::ExitStatus> {
    for _ in 0..secs * 20 {
        if let Some(status) = s.child.try_wait().unwrap() {
            return Some(status);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// A long SmolLM2 stream (`tokens` tokens, EOS ignored), read up to its first token.
async fn long_stream(http: &reqwest::Client, url: &str, tokens: usize) -> reqwest::Response {
    let body = json!({"prompt": "Once upon a time", "max_tokens": tokens, "ignore_eos": true,
                      "temperature": 0, "stream": true, "stream_options": {"include_usage": true}});
    let mut resp = http
        .post(format!("{url}/v1/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let first = resp.chunk().await.unwrap().expect("a first chunk");
    assert!(String::from_utf8_lossy(&first).contains("data: "));
    resp
}

/// SIGTERM: new connections are refused at once, the stream in flight runs to its end, then a clean exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_stream_in_flight_finish_and_refuses_new_connections() {
    let mut s = start_model("smollm2", &[], &[]);
    let http = reqwest::Client::new();
    wait_ready(&http, &s.url).await;
    let mut resp = long_stream(&http, &s.url, 200).await;
    signal(&s, "-TERM");
    let mut refused = false;
    for _ in 0..100 {
        if reqwest::Client::new()
            .get(format!("{}/health", s.url))
            .send()
            .await
            .is_err()
        {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "the listener closes on SIGTERM");
    let mut rest = String::new();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        rest.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        rest.ends_with("data: [DONE]\n\n"),
        "the stream ran to its end: {rest}"
    );
    assert!(rest.contains("\"completion_tokens\":200"), "{rest}");
    let status = exit_within(&mut s, 30)
        .await
        .expect("exits after the stream");
    assert!(status.success(), "{status}");
}

/// `--shutdown-grace-secs` bounds the wait for streams in flight; a second signal does not wait at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grace_period_bounds_shutdown_and_a_second_signal_ends_it() {
    let http = reqwest::Client::new();
    let mut s = start_model("smollm2", &["--shutdown-grace-secs", "1"], &[]);
    wait_ready(&http, &s.url).await;
    let _resp = long_stream(&http, &s.url, 4000).await;
    signal(&s, "-TERM");
    let status = exit_within(&mut s, 15)
        .await
        .expect("exits after the grace period, not the stream");
    assert!(status.success(), "{status}");

    let mut s = start_model("smollm2", &["--shutdown-grace-secs", "600"], &[]);
    wait_ready(&http, &s.url).await;
    let _resp = long_stream(&http, &s.url, 4000).await;
    signal(&s, "-TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        s.child.try_wait().unwrap().is_none(),
        "still finishing the stream"
    );
    signal(&s, "-INT");
    let status = exit_within(&mut s, 15)
        .await
        .expect("a second signal exits at once");
    assert!(status.success(), "{status}");
}
