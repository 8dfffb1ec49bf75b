//! `cargo bench`: tokens per second through the real engine — decode with 1, 2, 4 and 8 concurrent greedy
//! streams (batched into one forward per step) and prefill of a 256-token prompt — for a GPT-2 124M-shaped
//! model (made by `scripts/make-fixtures.py --bench-model` when missing) and SmolLM2 Q4_1 (when
//! `scripts/fetch-models.sh` has fetched it), on the CPU and, in builds with `--features cuda` or `metal`,
//! on that GPU too, side by side.
//!
//! Knobs: `RILL_BENCH_TOKENS` (tokens per stream, default 64), `RILL_BENCH_ROUNDS` (default 3; medians are
//! reported), `RILL_BENCH_MODELS` (comma-separated subset of `gpt2-124m,smollm2`).

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use common::median;
use rill::engine::{EngineHandle, GenRequest, SamplingParams};

const CONCURRENCY: [usize; 4] = [1, 2, 4, 8];
const PREFILL_TOKENS: usize = 256;

struct Row {
    model: String,
    device: String,
    what: String,
    tok_s: f64,
    per_stream: f64,
}

fn devices() -> Vec<(String, Device)> {
    let mut out = vec![("cpu".to_string(), Device::Cpu)];
    if let Ok(d) = Device::new_cuda(0) {
        out.push(("cuda".into(), d));
    }
    if let Ok(d) = Device::new_metal(0) {
        out.push(("metal".into(), d));
    }
    out
}

/// The checkout the bench models live in: the current folder when it is one (a binary carried to another
/// machine), else the one this bench was built from.
fn repo_root() -> PathBuf {
    let here = PathBuf::from(".");
    if here.join("scripts/make-fixtures.py").is_file() {
        here
    } else {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }
}

/// The bench models that are (or can be made) present.
fn models(root: &Path) -> Vec<(String, PathBuf)> {
    let wanted = std::env::var("RILL_BENCH_MODELS").unwrap_or_else(|_| "gpt2-124m,smollm2".into());
    let mut out = Vec::new();
    if wanted.contains("gpt2-124m") {
        let dir = root.join("models/gpt2-124m-shape");
        if !dir.join("model.safetensors").exists() {
            eprintln!(
                "making {} (scripts/make-fixtures.py --bench-model)...",
                dir.display()
            );
            let ok = std::process::Command::new("python3")
                .args(["scripts/make-fixtures.py", "--bench-model"])
                .current_dir(root)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "scripts/make-fixtures.py --bench-model failed");
        }
        out.push(("gpt2-124m".into(), dir));
    }
    if wanted.contains("smollm2") {
        let dir = root.join("models/smollm2");
        if dir.exists() {
            out.push(("smollm2".into(), dir));
        } else {
            eprintln!("smollm2: not benchmarked, run scripts/fetch-models.sh first");
        }
    }
    out
}

fn request(prompt: Vec<u32>, max_tokens: usize) -> GenRequest {
    GenRequest {
        constraint: None,
        prompt,
        sampling: SamplingParams::greedy(),
        max_tokens: Some(max_tokens),
        stop: vec![],
        ignore_eos: true,
        logprobs: None,
        prompt_logprobs: None,
    }
}

/// Aggregate and median per-stream decode tok/s for `n` concurrent streams of `tokens` tokens.
fn decode(e: &EngineHandle, prompt: &[u32], n: usize, tokens: usize) -> (f64, f64) {
    let t0 = Instant::now();
    let streams: Vec<_> = (0..n)
        .map(|_| e.submit(request(prompt.to_vec(), tokens)).unwrap())
        .collect();
    let done = common::finish_all(streams);
    let wall = t0.elapsed().as_secs_f64();
    let total: usize = done.iter().map(|c| c.usage.completion_tokens).sum();
    let per_stream = median(
        done.iter()
            .map(|c| c.timings.decode_tokens_per_sec(c.usage.completion_tokens))
            .collect(),
    );
    (total as f64 / wall, per_stream)
}

fn bench_model(name: &str, dir: &Path, dev_name: &str, dev: &Device, rows: &mut Vec<Row>) {
    let e = common::engine(dir, name, dev);
    let (tokens, rounds) = common::knobs();
    let prompt = e
        .tokenizer()
        .encode("Once upon a time, in a small village by the sea,")
        .unwrap();
    decode(&e, &prompt, 1, 4); // warm-up
    let mut add = |what: String, tok_s: f64, per_stream: f64| {
        eprintln!("  {name} {dev_name} {what}: {tok_s:.1} tok/s");
        rows.push(Row {
            model: name.into(),
            device: dev_name.into(),
            what,
            tok_s,
            per_stream,
        });
    };
    // Rounds go through every concurrency level in turn, so a drifting machine hits all levels alike.
    let mut runs: Vec<Vec<(f64, f64)>> = vec![Vec::new(); CONCURRENCY.len()];
    for _ in 0..rounds {
        for (i, n) in CONCURRENCY.into_iter().enumerate() {
            runs[i].push(decode(&e, &prompt, n, tokens));
        }
    }
    for (n, runs) in CONCURRENCY.into_iter().zip(runs) {
        add(
            format!("decode x{n}"),
            median(runs.iter().map(|r| r.0).collect()),
            median(runs.iter().map(|r| r.1).collect()),
        );
    }
    let long: Vec<u32> = prompt
        .iter()
        .copied()
        .cycle()
        .take(PREFILL_TOKENS)
        .collect();
    let prefill = (0..rounds)
        .map(|_| {
            let c = e
                .submit(request(long.clone(), 1))
                .unwrap()
                .collect_blocking()
                .unwrap()
                .2;
            PREFILL_TOKENS as f64 / c.timings.ttft.as_secs_f64()
        })
        .collect();
    add(
        format!("prefill {PREFILL_TOKENS}"),
        median(prefill),
        f64::NAN,
    );
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported, use RILL_BENCH_MODELS.
    rill::cli::set_cpu_threads(None);
    let root = repo_root();
    let mut rows = Vec::new();
    for (name, dir) in models(&root) {
        for (dev_name, dev) in devices() {
            bench_model(&name, &dir, &dev_name, &dev, &mut rows);
        }
    }
    println!(
        "\n{:<10} {:<6} {:<12} {:>14} {:>16}",
        "model", "device", "measure", "total tok/s", "per-stream tok/s"
    );
    for r in &rows {
        let per = if r.per_stream.is_nan() {
            "-".to_string()
        } else {
            format!("{:.1}", r.per_stream)
        };
        println!(
            "{:<10} {:<6} {:<12} {:>14.1} {:>16}",
            r.model, r.device, r.what, r.tok_s, per
        );
    }
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_default();
    println!(
        "(CPU threads: {threads}; medians of {} rounds)",
        common::knobs().1
    );
}
