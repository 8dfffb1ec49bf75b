//! SmolLM2-135M-Instruct (Q4_1 GGUF) against llama.cpp (goldens made by `scripts/make-llamacpp-goldens.py`):
//! the GGUF-built tokenizer gives llama.cpp's prompt ids, and greedy decoding gives llama.cpp's tokens.
//!
//! Two implementations that round differently can only split where the top two logits are nearly tied, and
//! this model's greedy path is full of near-ties: llama.cpp itself, switched from its default f16 KV cache to
//! an f32 one, leaves its own default path after 4-7 tokens on three of the seven prompts. So each comparison
//! demands identical tokens up to the first step where llama.cpp's top-1/top-2 gap is below [`NEAR_TIE`];
//! against llama.cpp's default run rill must pick the runner-up there, keep at least [`MIN_AGREED`] tokens on
//! every prompt and three quarters of all tokens. (Measured: 191/224 tokens follow the default run exactly,
//! 148/224 the f32-KV run; llama.cpp's two runs share fewer with each other.)

mod common;

use common::{engine, golden, greedy, ids};
use rill::engine::EngineConfig;
use serde_json::Value;

/// Largest llama.cpp logit gap at which a different pick is put down to rounding. KV precision alone moves
/// this model's gaps by more: at chat-colors step 27 llama.cpp prefers EOS by 0.20 with its f16 cache and
/// "\n" by 0.25 with an f32 one.
const NEAR_TIE: f64 = 0.3;
/// Leading tokens every prompt must share with llama.cpp's default run.
const MIN_AGREED: usize = 5;

/// Compares rill's greedy ids with one llama.cpp run and returns how many leading tokens agree. A split must
/// come at a near-tie; with `runner_up`, rill must also have picked llama.cpp's second choice there.
fn compare(name: &str, run: &str, got: &[u32], reference: &Value, runner_up: bool) -> usize {
    let want = ids(&reference["generated_ids"]);
    let agreed = got.iter().zip(&want).take_while(|(a, b)| a == b).count();
    eprintln!(
        "{name} vs llama.cpp {run}: {agreed}/{} tokens agree",
        want.len()
    );
    if agreed < want.len() {
        let gap = reference["top1_top2_gaps"][agreed].as_f64().unwrap();
        let second = reference["top2_ids"][agreed][1].as_u64().unwrap() as u32;
        eprintln!(
            "  split at {agreed}: llama.cpp picks {} by {gap} over {second}; rill picks {}",
            want[agreed], got[agreed]
        );
        assert!(
            gap < NEAR_TIE,
            "{name} ({run}): split at token {agreed} where llama.cpp's gap is {gap}"
        );
        if runner_up {
            assert_eq!(
                got[agreed], second,
                "{name} ({run}): at the split rill must pick llama.cpp's runner-up"
            );
        }
    }
    agreed
}

#[test]
fn prompt_ids_match_llama_cpp() {
    let e = engine("smollm2", EngineConfig::default());
    for p in golden("smollm2-llamacpp-golden.json")["prompts"]
        .as_array()
        .unwrap()
    {
        assert_eq!(
            e.tokenizer().encode(p["prompt"].as_str().unwrap()).unwrap(),
            ids(&p["prompt_ids"]),
            "{}",
            p["name"]
        );
    }
}

#[test]
fn greedy_tokens_match_llama_cpp_up_to_near_ties() {
    let e = engine("smollm2", EngineConfig::default());
    let (mut agreed_default, mut agreed_f32, mut total) = (0, 0, 0);
    for p in golden("smollm2-llamacpp-golden.json")["prompts"]
        .as_array()
        .unwrap()
    {
        let name = p["name"].as_str().unwrap();
        let n = ids(&p["generated_ids"]).len();
        let (_, tokens, _) = e
            .submit(greedy(ids(&p["prompt_ids"]), n))
            .unwrap()
            .collect_blocking()
            .unwrap();
        let got: Vec<u32> = tokens.iter().map(|t| t.id).collect();
        let agreed = compare(name, "default (f16 KV)", &got, p, true);
        assert!(
            agreed >= MIN_AGREED,
            "{name}: only {agreed} tokens agree with llama.cpp"
        );
        agreed_default += agreed;
        agreed_f32 += compare(name, "f32 KV", &got, &p["f32_kv"], false);
        total += n;
    }
    eprintln!("agreement: {agreed_default}/{total} tokens with llama.cpp's default run, {agreed_f32}/{total} with its f32-KV run");
    assert!(
        agreed_default * 4 >= total * 3,
        "only {agreed_default}/{total} tokens agree with llama.cpp's default run"
    );
}
