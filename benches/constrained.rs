//! `cargo bench --bench constrained`: what constrained decoding costs on SmolLM2 Q4_1 (CPU). Decode tokens per
//! second of free greedy answers against answers held to a JSON schema and to a forced tool call, at 1 and 8
//! concurrent streams, rounds alternating so machine drift hits each alike; and the time to compile a typical
//! tool schema, cold (a schema never seen) and from the cache.
//!
//! Knobs: `RILL_BENCH_TOKENS` (token budget per answer, default 64), `RILL_BENCH_ROUNDS` (default 3; medians).

mod common;

use std::path::PathBuf;
use std::time::Instant;

use candle_core::Device;
use common::median;
use rill::api::structured;
use rill::api::tools::{Choice, Tool, ToolSpec};
use rill::engine::grammar::Grammar;
use rill::engine::{EngineHandle, GenRequest, SamplingParams};
use serde_json::json;

fn weather_tool(description: &str) -> Tool {
    Tool::new(
        "get_weather",
        Some(description.into()),
        Some(json!({"type": "object", "properties": {
            "city": {"type": "string", "description": "The city"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "days": {"type": "integer", "minimum": 1, "maximum": 14}},
            "required": ["city", "unit"]})),
    )
    .unwrap()
}

fn tool_grammar(description: &str) -> Grammar {
    ToolSpec::new(vec![weather_tool(description)], Choice::Required, false)
        .unwrap()
        .grammar(&rill::api::tools::parse::HERMES, None)
        .unwrap()
        .unwrap()
}

/// Decode tok/s over `n` concurrent answers (tokens after each one's first, over the slowest decode time) and
/// the tokens generated.
fn decode(
    e: &EngineHandle,
    prompt: &[u32],
    n: usize,
    tokens: usize,
    grammar: Option<&Grammar>,
) -> (f64, usize) {
    let streams: Vec<_> = (0..n)
        .map(|_| {
            let mut req = GenRequest::new(prompt.to_vec());
            req.sampling = SamplingParams::greedy();
            req.max_tokens = Some(tokens);
            req.constraint = grammar.map(|g| e.shared().constraint(g).unwrap());
            e.submit(req).unwrap()
        })
        .collect();
    let done = common::finish_all(streams);
    let generated: usize = done.iter().map(|c| c.usage.completion_tokens).sum();
    let after_first: usize = done
        .iter()
        .map(|c| c.usage.completion_tokens.saturating_sub(1))
        .sum();
    let slowest = done
        .iter()
        .map(|c| c.timings.decode.as_secs_f64())
        .fold(0.0, f64::max);
    (after_first as f64 / slowest, generated)
}

fn main() {
    rill::cli::set_cpu_threads(None);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("models/smollm2");
    assert!(dir.exists(), "run scripts/fetch-models.sh first");
    let e = common::engine(&dir, "smollm2", &Device::Cpu);
    let (tokens, rounds) = common::knobs();
    let shared = e.shared();

    // Compile time: cold (a description never seen defeats the cache) and cached.
    let _ = shared.constraint(&tool_grammar("warm-up")).unwrap();
    // llguidance builds parts of a grammar lazily, so the cold figure includes the first token mask.
    let cold: Vec<f64> = (0..20)
        .map(|i| {
            let g = tool_grammar(&format!("Weather now, variant {i}"));
            let t0 = Instant::now();
            let mut c = shared.constraint(&g).unwrap();
            c.mask().unwrap();
            t0.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    let warm_g = tool_grammar("Weather now, variant 0");
    let warm: Vec<f64> = (0..20)
        .map(|_| {
            let t0 = Instant::now();
            let mut c = shared.constraint(&warm_g).unwrap();
            c.mask().unwrap();
            t0.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    println!(
        "tool schema compile + first mask: cold {:.2} ms, cached {:.2} ms (medians of 20)",
        median(cold),
        median(warm)
    );

    let chat = |text: &str| {
        let msgs = [rill::tokenizer::ChatMessage::new("user", text)];
        shared
            .tokenizer
            .encode(&shared.chat.render(&msgs, true).unwrap())
            .unwrap()
    };
    let story = chat("Write a short story about a lighthouse keeper.");
    let json_prompt =
        chat("Describe a lighthouse keeper as JSON with a name and a long biography.");
    let tool_prompt = chat("What is the weather in Paris for the next three days?");
    let schema = structured::json_grammar(&json!({"type": "object", "properties": {
        "name": {"type": "string"}, "biography": {"type": "string"}}, "required": ["name", "biography"]}))
    .unwrap();
    let tool = tool_grammar("Weather now");
    let cases: [(&str, &[u32], Option<&Grammar>); 3] = [
        ("free", &story, None),
        ("json schema", &json_prompt, Some(&schema)),
        ("tool call", &tool_prompt, Some(&tool)),
    ];
    decode(&e, &story, 1, 4, None);
    println!(
        "\n{:<12} {:>8} {:>12} {:>10}",
        "answer", "streams", "decode tok/s", "tokens"
    );
    for n in [1, 8] {
        let mut runs: Vec<Vec<(f64, usize)>> = vec![Vec::new(); cases.len()];
        for _ in 0..rounds {
            for (i, (_, prompt, g)) in cases.iter().enumerate() {
                runs[i].push(decode(&e, prompt, n, tokens, *g));
            }
        }
        for ((name, ..), runs) in cases.iter().zip(runs) {
            let rate = median(runs.iter().map(|r| r.0).collect());
            let toks = median(runs.iter().map(|r| r.1 as f64).collect());
            println!("{name:<12} {n:>8} {rate:>12.1} {toks:>10.0}");
        }
    }
}
