//! A broken model folder or file is a clear error that names the file and the problem: never a panic, never a
//! model served with wrong weights. Each case copies the tiny llama fixture into a temporary folder and breaks
//! one thing.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use candle_core::Device;
use rill::load::{self, ModelLocator};

/// A copy of `models/arch/llama` in a fresh temporary folder.
fn copy_fixture(name: &str) -> common::TempDir {
    copy_model("arch/llama", name)
}

/// A copy of `models/<rel>` in a fresh temporary folder.
fn copy_model(rel: &str, name: &str) -> common::TempDir {
    let src = common::model_path(rel);
    let dir = common::TempDir::new(&format!("load-errors-{name}"));
    for f in std::fs::read_dir(&src).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dir.join(f.file_name().unwrap())).unwrap();
    }
    dir
}

/// A locator that finds `dir` (a folder or file) offline, with nothing else to search.
fn locator(dir: &Path) -> ModelLocator {
    ModelLocator {
        models_dir: dir.to_path_buf(),
        hub_cache: dir.to_path_buf(),
        offline: true,
    }
}

/// Loads `dir` and returns the error text (a successful load fails the test).
fn load_error(dir: &Path) -> String {
    let source = match locator(dir).resolve(dir.to_str().unwrap()) {
        Ok(s) => s,
        Err(e) => return e.to_string(),
    };
    match load::load(&source, "broken", &Device::Cpu) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    edit_json(&dir.join("config.json"), f)
}

fn edit_json(path: &Path, f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    f(v.as_object_mut().unwrap());
    std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

#[test]
fn a_missing_config_field_is_named() {
    let dir = copy_fixture("missing");
    edit_config(&dir, |c| {
        c.remove("hidden_size");
    });
    let e = load_error(&dir);
    assert!(
        e.contains("config.json") && e.contains("hidden_size"),
        "{e}"
    );
}

#[test]
fn a_mistyped_config_field_is_named() {
    let dir = copy_fixture("mistyped");
    edit_config(&dir, |c| {
        c.insert("num_attention_heads".into(), "four".into());
    });
    let e = load_error(&dir);
    assert!(
        e.contains("config.json") && e.contains("num_attention_heads"),
        "{e}"
    );
}

#[test]
fn an_unknown_model_type_lists_the_known_ones() {
    let dir = copy_fixture("unknown");
    edit_config(&dir, |c| {
        c.insert("model_type".into(), "mamba".into());
    });
    let e = load_error(&dir);
    assert!(
        e.contains("mamba") && e.contains("qwen2") && e.contains("gemma3"),
        "{e}"
    );
}

#[test]
fn hyper_parameters_that_do_not_match_the_tensors_are_refused() {
    let dir = copy_fixture("shape");
    edit_config(&dir, |c| {
        c.insert("num_attention_heads".into(), 8.into());
        c.insert("num_key_value_heads".into(), 8.into());
    });
    let e = load_error(&dir);
    assert!(e.contains(&dir.display().to_string()), "{e}");
    assert!(e.contains("shape") || e.contains("match"), "{e}");
}

#[test]
fn a_truncated_safetensors_file_is_named() {
    let dir = copy_fixture("truncated");
    let w = dir.join("model.safetensors");
    let len = std::fs::metadata(&w).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&w).unwrap();
    f.set_len(len / 2).unwrap();
    let e = load_error(&dir);
    assert!(e.contains("model.safetensors"), "{e}");
}

#[test]
fn a_garbage_safetensors_header_is_named() {
    let dir = copy_fixture("garbage");
    std::fs::write(
        dir.join("model.safetensors"),
        b"\xff\xff\xff\xff\xff\xff\xff\x7fnot a header",
    )
    .unwrap();
    let e = load_error(&dir);
    assert!(e.contains("model.safetensors"), "{e}");
}

#[test]
fn a_missing_tensor_is_named() {
    // Llama weights under a gemma2 config: gemma2 reads `post_attention_layernorm` as the attention output's
    // norm and wants a `pre_feedforward_layernorm` that llama does not have.
    let dir = copy_fixture("missing-tensor");
    edit_config(&dir, |c| {
        c.insert("model_type".into(), "gemma2".into());
        c.insert("query_pre_attn_scalar".into(), 16.into());
    });
    let e = load_error(&dir);
    assert!(
        e.contains("ffn_norm") && e.contains(&dir.display().to_string()),
        "{e}"
    );
}

/// A LongRoPE block without its factors is named; GPT-2 refuses a context past its learned positions.
#[test]
fn bad_long_rope_and_context_requests_are_refused() {
    let dir = copy_fixture("longrope");
    edit_config(&dir, |c| {
        c.insert(
            "rope_scaling".into(),
            serde_json::json!({"rope_type": "longrope", "short_factor": vec![1.0; 32],
                               "original_max_position_embeddings": 16}),
        );
    });
    let e = load_error(&dir);
    assert!(
        e.contains("config.json") && e.contains("long_factor"),
        "{e}"
    );

    let gpt2 = ModelLocator {
        models_dir: common::model_path("tiny-gpt2")
            .parent()
            .unwrap()
            .to_path_buf(),
        hub_cache: std::env::temp_dir(),
        offline: true,
    }
    .resolve(common::model_path("tiny-gpt2").to_str().unwrap())
    .unwrap();
    let opts = |n| load::LoadOptions {
        ctx_size: Some(n),
        ..Default::default()
    };
    let e = load::load_with(&gpt2, "tiny", &Device::Cpu, &opts(1 << 20))
        .err()
        .unwrap();
    assert!(e.to_string().contains("learned positions"), "{e}");
    let ok = load::load_with(&gpt2, "tiny", &Device::Cpu, &opts(8)).unwrap();
    assert_eq!(ok.model.info().context_length, 8);
}

/// A depth no model has (a corrupt or hostile file) is refused, naming the value, before anything is sized by
/// it: per-layer settings of four billion layers would take gigabytes, and the error once printed them all.
#[test]
fn an_absurd_layer_count_is_refused_before_anything_is_sized_by_it() {
    let dir = copy_fixture("layers");
    edit_config(&dir, |c| {
        c.insert("num_hidden_layers".into(), 4_000_000_000u64.into());
    });
    let e = load_error(&dir);
    assert!(
        e.contains("config.json") && e.contains("4000000000 layers"),
        "{e}"
    );
    assert!(e.len() < 1000, "an error of {} bytes", e.len());

    // The same in a GGUF file: the tiny llama with `llama.block_count` (a u32 after its key and value type)
    // set to u32::MAX.
    let mut bytes = std::fs::read(common::tiny_llama::tiny_llama()).unwrap();
    let key = b"llama.block_count";
    let at = bytes.windows(key.len()).position(|w| w == key).unwrap() + key.len() + 4;
    assert_eq!(
        bytes[at..at + 4],
        2u32.to_le_bytes(),
        "the fixture's layer count"
    );
    bytes[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    let file = dir.join("deep.gguf");
    std::fs::write(&file, bytes).unwrap();
    let e = load_error(&file);
    assert!(
        e.contains("deep.gguf") && e.contains(&format!("{} layers", u32::MAX)),
        "{e}"
    );
    assert!(e.len() < 1000, "an error of {} bytes", e.len());
}

/// Every top-level number of a `config.json` (widths, depths, head counts, context, token ids, norm epsilon,
/// windows, soft caps) set in turn to values no model has, on llama, gemma2, phi3 with LongRoPE and GPT-2:
/// each folder loads or is refused with an error naming its config, within bounded time, and nothing takes
/// memory the files cannot back (the address space is capped at 8 GiB for this test binary).
#[test]
fn absurd_config_values_load_or_are_refused_cleanly() {
    common::cap_address_space(8 << 30);
    let values: [serde_json::Value; 6] = [
        0.into(),
        3.into(),
        (1u64 << 31).into(),
        (1u64 << 40).into(),
        (-1).into(),
        1e30.into(),
    ];
    let (mut cases, mut refused) = (0, 0);
    for fixture in ["arch/llama", "arch/gemma2", "arch/phi3-long", "tiny-gpt2"] {
        let src = common::model_path(fixture);
        let dir =
            common::TempDir::new(&format!("load-errors-values-{}", fixture.replace('/', "-")));
        // The weights and tokenizer linked, not copied; only config.json is rewritten.
        for f in std::fs::read_dir(&src).unwrap() {
            let f = f.unwrap().path();
            if f.file_name().unwrap() != "config.json" {
                std::os::unix::fs::symlink(&f, dir.join(f.file_name().unwrap())).unwrap();
            }
        }
        let config: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap())
                .unwrap();
        let numeric = config.iter().filter(|(_, v)| v.is_number()).map(|(k, _)| k);
        for key in numeric {
            for value in &values {
                let mut c = config.clone();
                c.insert(key.clone(), value.clone());
                std::fs::write(dir.join("config.json"), serde_json::to_string(&c).unwrap())
                    .unwrap();
                let source = locator(&dir).resolve(dir.to_str().unwrap()).unwrap();
                let t0 = Instant::now();
                if let Err(e) = load::load(&source, "hostile", &Device::Cpu) {
                    let e = e.to_string();
                    assert!(
                        e.contains("config.json") || e.contains(&dir.display().to_string()),
                        "{fixture} {key} = {value}: {e}"
                    );
                    // (Short, but candle's errors carry a backtrace when RUST_BACKTRACE is set.)
                    assert!(
                        e.len() < 64 << 10,
                        "{fixture} {key} = {value}: an error of {} bytes: {e}",
                        e.len()
                    );
                    refused += 1;
                }
                assert!(
                    t0.elapsed() < Duration::from_secs(20),
                    "{fixture} {key} = {value}: {:?}",
                    t0.elapsed()
                );
                cases += 1;
            }
        }
    }
    assert!(
        cases > 200 && refused > 100,
        "{cases} cases, {refused} refused"
    );
}

/// A folder holding several GGUF files (several quantizations of one model, say) is not loaded by picking
/// one: the error names every file and how to choose. A folder with one (and a vision projector) is loaded.
#[test]
fn a_folder_of_several_gguf_files_asks_which() {
    let dir = common::TempDir::new("load-errors-several-gguf");
    let one = common::model_path("arch/llama-q8_0.gguf");
    std::fs::copy(&one, dir.join("b-q8_0.gguf")).unwrap();
    // A vision projector beside the model does not count.
    std::fs::copy(&one, dir.join("mmproj-f16.gguf")).unwrap();
    match locator(&dir).resolve(dir.to_str().unwrap()).unwrap() {
        load::ModelSource::Gguf { file, .. } => assert!(file.ends_with("b-q8_0.gguf"), "{file:?}"),
        other => panic!("{other:?}"),
    }
    std::fs::copy(&one, dir.join("a-q4_k_m.gguf")).unwrap();
    let e = load_error(&dir);
    assert!(
        e.contains("holds 2 GGUF files") && e.contains("a-q4_k_m.gguf, b-q8_0.gguf"),
        "{e}"
    );
}

/// A GGUF file whose LongRoPE factors are not positive numbers is refused with the file named, not run
/// with NaN rotary tables.
#[test]
fn gguf_long_rope_factors_that_are_not_positive_are_refused() {
    use candle_core::quantized::gguf_file::Content;
    let src = common::model_path("arch/phi3-long-f32.gguf");
    let mut bytes = std::fs::read(&src).unwrap();
    let content = Content::read(&mut std::fs::File::open(&src).unwrap()).unwrap();
    let info = &content.tensor_infos["rope_factors_short.weight"];
    let at = (content.tensor_data_offset + info.offset) as usize;
    bytes[at..at + 4].copy_from_slice(&(-1f32).to_le_bytes());
    let dir = common::TempDir::new("load-errors-rope");
    let file = dir.join("bad-rope.gguf");
    std::fs::write(&file, bytes).unwrap();
    let e = load_error(&file);
    assert!(
        e.contains("bad-rope.gguf") && e.contains("implausible"),
        "{e}"
    );
}

/// `--device cuda` on a build without CUDA says so and how to get it; `auto` runs on the CPU; an unknown name is
/// refused.
#[cfg(not(any(feature = "cuda", feature = "metal")))]
#[test]
fn device_names_without_a_gpu_build() {
    let e = load::device("cuda").unwrap_err().to_string();
    assert!(
        e.contains("--device cuda") && e.contains("built without cuda support"),
        "{e}"
    );
    assert!(e.contains("--features cuda"), "{e}");
    let e = load::device("metal").unwrap_err().to_string();
    assert!(e.contains("built without metal support"), "{e}");
    assert!(load::device("auto").unwrap().is_cpu());
    assert!(load::device("cpu").unwrap().is_cpu());
    let e = load::device("tpu").unwrap_err().to_string();
    assert!(e.contains("use cpu, cuda, metal or auto"), "{e}");
}

/// A norm epsilon below zero (it gives NaN logits) and a GPT-2 activation rill does not run (it would be run as
/// another) are refused, naming the value.
#[test]
fn a_negative_norm_epsilon_and_an_unknown_activation_are_refused() {
    let dir = copy_fixture("negative-eps");
    edit_config(&dir, |c| {
        c.insert("rms_norm_eps".into(), (-1.0).into());
    });
    let e = load_error(&dir);
    assert!(
        e.contains("config.json") && e.contains("RMS norm epsilon -1 (0 or more)"),
        "{e}"
    );

    let dir = copy_model("tiny-gpt2", "gpt2-relu");
    edit_config(&dir, |c| {
        c.insert("activation_function".into(), "relu".into());
    });
    let e = load_error(&dir);
    assert!(e.contains("activation `relu`"), "{e}");
}

/// Adds `text` to a copied folder's `tokenizer.json` as a special added token (the tokenizer gives it the next
/// id, 50 257 in the fixture's vocabulary).
fn add_token(dir: &Path, text: &str) {
    edit_json(&dir.join("tokenizer.json"), |t| {
        t["added_tokens"].as_array_mut().unwrap().push(serde_json::json!({
            "id": 50257, "content": text, "single_word": false, "lstrip": false, "rstrip": false,
            "normalized": false, "special": true
        }));
    });
}

/// A tokenizer with tokens past the model's rows (the fixture has 50 257). When every end-of-sequence token is
/// one of them, the tokenizer belongs to other weights (generation could never end, grammars could not be
/// built): refused at load. When the configuration still names one inside the rows (a fine-tune that added an
/// end token without resizing its embedding), the model loads and ends on that one. When only unnamed extra
/// tokens are past the rows (some checkpoints' tokenizers hold a few), the model loads and a prompt holding one
/// is refused, where it failed inside the model before.
#[test]
fn tokens_past_the_model_rows() {
    let foreign_eos = |name: &str| {
        let dir = copy_fixture(name);
        add_token(&dir, "<|end_other|>");
        edit_json(&dir.join("tokenizer_config.json"), |c| {
            c.insert("eos_token".into(), "<|end_other|>".into());
        });
        // `<|endoftext|>` made an ordinary token, so that it is no end-of-turn token either.
        edit_json(&dir.join("tokenizer.json"), |t| {
            t["added_tokens"][0]["special"] = false.into();
        });
        dir
    };
    let dir = foreign_eos("foreign-eos");
    for file in ["config.json", "generation_config.json"] {
        edit_json(&dir.join(file), |c| {
            c.remove("eos_token_id");
        });
    }
    let e = load_error(&dir);
    assert!(
        e.contains("end-of-sequence token `<|end_other|>` is id 50257")
            && e.contains("50257 token rows"),
        "{e}"
    );

    let dir = foreign_eos("foreign-eos-config-id");
    let source = locator(&dir).resolve(dir.to_str().unwrap()).unwrap();
    let loaded = load::load(&source, "fine-tune", &Device::Cpu).unwrap();
    assert_eq!(loaded.tokenizer.eos_ids, [50256]);

    let dir = copy_fixture("extra-token");
    add_token(&dir, "<|extra|>");
    let engine = common::engine(dir.to_str().unwrap(), Default::default());
    let shared = engine.shared();
    assert!(shared.encode_prompt("hello").is_ok());
    let e = shared.encode_prompt("hello <|extra|>").unwrap_err();
    assert!(
        e.to_string()
            .contains("token `<|extra|>` (id 50257), past this model's 50257 token rows"),
        "{e}"
    );
}

/// Shard names in `model.safetensors.index.json` stay inside the model's folder: one that climbs out of it (or
/// is absolute) is refused before any file is opened by it.
#[test]
fn a_shard_outside_the_model_folder_is_refused() {
    for shard in ["../../../../etc/passwd", "/etc/passwd", ""] {
        let dir = copy_fixture("shard-outside");
        std::fs::remove_file(dir.join("model.safetensors")).unwrap();
        let index = serde_json::json!({ "weight_map": { "lm_head.weight": shard } });
        std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
        let e = load_error(&dir);
        assert!(
            e.contains("model.safetensors.index.json")
                && e.contains(&format!(
                    "shard `{shard}` is not a file inside the model's folder"
                )),
            "{shard}: {e}"
        );
    }
}

/// A configuration with fewer layers than its weights hold would run part of the model and answer garbage: it
/// is refused, naming the first layer left out (llama and GPT-2 layouts).
#[test]
fn a_config_with_fewer_layers_than_its_weights_is_refused() {
    let dir = copy_fixture("fewer-layers");
    edit_config(&dir, |c| {
        c.insert("num_hidden_layers".into(), 1.into());
    });
    let e = load_error(&dir);
    assert!(
        e.contains("1 layers, but the weights hold more (layer 1 is there)"),
        "{e}"
    );

    let dir = copy_model("tiny-gpt2", "gpt2-fewer-layers");
    edit_config(&dir, |c| {
        c.insert("n_layer".into(), 1.into());
    });
    let e = load_error(&dir);
    assert!(
        e.contains("config.json")
            && e.contains("1 layers, but the weights hold more (layer 1 is there)"),
        "{e}"
    );
}

/// A model path that is neither a file nor a folder (a device such as `/dev/null`) is named as such, not
/// reported as an i/o error of another kind.
#[test]
fn a_device_as_the_model_is_named() {
    let e = load_error(Path::new("/dev/null"));
    assert!(
        e.contains("/dev/null: expected a .gguf file or a model folder"),
        "{e}"
    );
}
