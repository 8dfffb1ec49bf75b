//! GPT-2 parity with HuggingFace transformers (goldens made by `scripts/make-fixtures.py --goldens`): the same
//! prompt ids, last-position logits within 1e-4, and the same greedy ids and text, from every checkpoint layout
//! (save_pretrained, the Hub's sharded naming, and the hf-hub cache resolved offline).

mod common;

use candle_core::Device;
use common::{engine, golden, greedy, ids, model_path, root, sha256};
use rill::engine::EngineConfig;
use rill::load::{self, ModelLocator, ModelSource};
use rill::model::SeqStep;

#[test]
fn fixture_weights_are_the_ones_the_goldens_were_made_from() {
    let g = golden("gpt2-golden.json");
    assert_eq!(
        sha256(&model_path("tiny-gpt2/model.safetensors")),
        g["model_safetensors_sha256"].as_str().unwrap()
    );
}

#[test]
fn tokenizer_matches_transformers() {
    let e = engine("tiny-gpt2", EngineConfig::default());
    for p in golden("gpt2-golden.json")["prompts"].as_array().unwrap() {
        assert_eq!(
            e.tokenizer().encode(p["prompt"].as_str().unwrap()).unwrap(),
            ids(&p["prompt_ids"]),
            "{}",
            p["prompt"]
        );
    }
}

#[test]
fn last_position_logits_match_transformers() {
    let locator = ModelLocator {
        models_dir: root().join("models"),
        hub_cache: root().join("models/hf-cache"),
        offline: true,
    };
    for layout in ["tiny-gpt2", "tiny-gpt2-hub-layout"] {
        model_path(layout);
        let loaded = load::load(&locator.resolve(layout).unwrap(), layout, &Device::Cpu).unwrap();
        for p in golden("gpt2-golden.json")["prompts"].as_array().unwrap() {
            let Some(want) = p.get("last_logits") else {
                continue;
            };
            let want: Vec<f32> = want
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            let prompt = ids(&p["prompt_ids"]);
            let mut cache = loaded.model.new_cache();
            let got = loaded
                .model
                .forward(&mut [SeqStep::new(&prompt, &mut cache)])
                .unwrap();
            let got: Vec<f32> = got.squeeze(0).unwrap().to_vec1().unwrap();
            assert_eq!(got.len(), want.len());
            let max_diff = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                max_diff < 1e-4,
                "{layout}: max |Δlogit| = {max_diff} for {}",
                p["prompt"]
            );
        }
    }
}

#[test]
fn greedy_ids_and_text_match_transformers_in_every_layout() {
    for layout in [
        "tiny-gpt2",
        "tiny-gpt2-hub-layout",
        "rill-fixtures/tiny-gpt2",
    ] {
        let e = engine(layout, EngineConfig::default());
        for p in golden("gpt2-golden.json")["prompts"].as_array().unwrap() {
            let want = ids(&p["generated_ids"]);
            let (text, tokens, done) = e
                .submit(greedy(ids(&p["prompt_ids"]), want.len()))
                .unwrap()
                .collect_blocking()
                .unwrap();
            let got: Vec<u32> = tokens.iter().map(|t| t.id).collect();
            assert_eq!(got, want, "{layout}: {}", p["prompt"]);
            assert_eq!(text, p["generated_text"].as_str().unwrap(), "{layout}");
            assert_eq!(done.usage.completion_tokens, want.len());
        }
    }
}

#[test]
fn hub_cache_resolution_is_offline_and_names_where_it_looked() {
    let cache = root().join("models/hf-cache");
    let locator = ModelLocator {
        models_dir: root().join("models"),
        hub_cache: cache.clone(),
        offline: true,
    };
    match locator.resolve("rill-fixtures/tiny-gpt2").unwrap() {
        ModelSource::HfFolder { dir, weights } => {
            assert!(dir.starts_with(cache.join("models--rill-fixtures--tiny-gpt2/snapshots")));
            assert_eq!(weights.len(), 1);
        }
        other => panic!("unexpected source {other:?}"),
    }
    let err = locator
        .resolve("nobody/no-such-model")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no-such-model") && err.contains("hub cache") && err.contains("models folder"),
        "{err}"
    );
}

/// The binary, as a user runs it: `rill generate` prints exactly transformers' greedy text, resolving the
/// repo id through `HF_HUB_CACHE` with `HF_HUB_OFFLINE=1`.
#[test]
fn cli_generate_prints_the_transformers_text() {
    let g = golden("gpt2-golden.json");
    let p = &g["prompts"][0];
    model_path("hf-cache");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rill"))
        .args([
            "generate",
            "--model",
            "rill-fixtures/tiny-gpt2",
            "--temperature",
            "0",
            "--max-tokens",
            "24",
            "--ignore-eos",
        ])
        .args(["--prompt", p["prompt"].as_str().unwrap()])
        .env("HF_HUB_CACHE", root().join("models/hf-cache"))
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("{}\n", p["generated_text"].as_str().unwrap())
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("TTFT") && stderr.contains("tok/s"),
        "{stderr}"
    );
}
