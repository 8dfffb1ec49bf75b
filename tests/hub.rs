//! Model names and the hub, through the binary as a user runs it (`HF_HUB_OFFLINE` unset, `HF_ENDPOINT` at a
//! stand-in hub on 127.0.0.1): a hub that never answers is an error naming the wait, not a silent hang; one that
//! answers 404 is "not found"; a repo in the hub cache is served from it when the hub is silent (its optional
//! files the cache lacks are skipped, as the hub's own client does); and a path that does not exist is never
//! sent to the hub as a repo id.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Output};

/// A stand-in hub: every connection is held open and never answered (`answer: None`), or gets `answer` and is
/// closed. Its thread lives as long as the test process. Returns its base URL.
fn stand_in_hub(answer: Option<&'static str>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for mut conn in listener.incoming().flatten() {
            match answer {
                None => held.push(conn),
                Some(a) => {
                    let mut buf = [0; 4096];
                    let _ = conn.read(&mut buf);
                    let _ = conn.write_all(a.as_bytes());
                }
            }
        }
    });
    url
}

/// `rill generate --model <model>` against the hub at `hub`, with a 1 s hub timeout, the hub cache at `cache`
/// and the whole run bounded (so a hang fails the test instead of stalling it).
fn generate(model: &str, hub: &str, cache: &std::path::Path) -> Output {
    Command::new("timeout")
        .args([
            "120",
            env!("CARGO_BIN_EXE_rill"),
            "generate",
            "--max-tokens",
            "2",
        ])
        .args(["--model", model, "--prompt", "Hello"])
        .env_remove("HF_HUB_OFFLINE")
        .env("HF_ENDPOINT", hub)
        .env("HF_HUB_CACHE", cache)
        .env("RILL_HUB_TIMEOUT_SECS", "1")
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_hub_that_never_answers_is_an_error_naming_the_wait() {
    let cache = common::TempDir::new("hub-silent");
    let out = generate("someorg/somemodel", &stand_in_hub(None), &cache);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no answer within 1 s") && err.contains("RILL_HUB_TIMEOUT_SECS"),
        "{err}"
    );
}

#[test]
fn a_hub_that_answers_404_is_not_found() {
    let cache = common::TempDir::new("hub-404");
    let hub = stand_in_hub(Some(
        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    ));
    let out = generate("someorg/somemodel", &hub, &cache);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("model `someorg/somemodel` not found") && err.contains("hub cache"),
        "{err}"
    );
}

#[test]
fn a_cached_repo_is_served_when_the_hub_is_silent() {
    let cache = common::model_path("hf-cache");
    let out = generate("rill-fixtures/tiny-gpt2", &stand_in_hub(None), &cache);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!out.stdout.is_empty());
}

#[test]
fn a_path_that_does_not_exist_is_not_sent_to_the_hub() {
    let cache = common::TempDir::new("hub-path");
    let hub = stand_in_hub(None);
    for path in ["/nonexistent/model.gguf", "./nope/x.gguf", "../up", "a/b/c"] {
        let out = generate(path, &hub, &cache);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{path}: {err}");
        assert!(
            err.contains(&format!("model `{path}` not found")) && !err.contains("hub"),
            "{path}: {err}"
        );
    }
}
