//! A prompt is refused from its length alone only when it cannot fit (`TextTokenizer::encode_within`): on every
//! tokenizer rill builds from GGUF metadata and on HuggingFace byte-level BPE, for texts that pack the most
//! bytes into a token (whitespace runs, repeated words, special-token texts, emoji), a prompt of n tokens is
//! never refused under a limit of n + 1, and a few megabytes of text are refused under a real context without
//! being encoded. And a `tokenizer.json` saved with truncation or padding on encodes prompts whole all the same.

mod common;

use candle_core::Device;
use common::{golden, model_path};
use rill::load::gguf::GgufFile;
use rill::tokenizer::gguf::from_gguf;
use rill::tokenizer::{TextTokenizer, TokenizerError};

fn tokenizers() -> Vec<(String, TextTokenizer)> {
    let mut all = Vec::new();
    for name in ["gpt2", "smollm", "llama-bpe", "qwen2", "spm", "spm-nospace"] {
        let path = model_path(&format!("arch/tok-{name}.gguf"));
        let file = GgufFile::open(&path, &Device::Cpu).unwrap();
        all.push((name.to_string(), from_gguf(&file.content.metadata).unwrap()));
    }
    let smollm2 = model_path("smollm2/SmolLM2-135M-Instruct-Q4_1.gguf");
    let file = GgufFile::open(&smollm2, &Device::Cpu).unwrap();
    all.push(("smollm2".into(), from_gguf(&file.content.metadata).unwrap()));
    let gpt2 = model_path("gpt2-tokenizer/tokenizer.json");
    all.push((
        "gpt2 (HF)".into(),
        TextTokenizer::from_file(&gpt2, None).unwrap(),
    ));
    all
}

fn texts() -> Vec<String> {
    let mut texts: Vec<String> = golden("tokenizer-corpus.json")
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    texts.extend([
        " ".repeat(5000),
        format!("\n{}", " ".repeat(80)).repeat(100),
        "\t".repeat(3000),
        "\n".repeat(3000),
        "<|im_start|><|im_end|><|endoftext|>".repeat(200),
        "a".repeat(10_000),
        "the ".repeat(2000),
        "1234567890".repeat(500),
        "🙂".repeat(1000),
        "ﬁ K Å 가".repeat(500),
        "-".repeat(4000),
        "=".repeat(4000),
        // Control bytes SmolLM2's vocabulary has no token for: they vanish, and must not count.
        format!("{} hello", "\u{4}\u{6}\u{13}".repeat(50_000)),
    ]);
    texts
}

#[test]
fn a_prompt_that_fits_is_never_refused_by_its_length() {
    let texts = texts();
    for (name, tok) in tokenizers() {
        for text in &texts {
            let ids = tok.encode(text).unwrap();
            match tok.encode_within(text, ids.len() + 1) {
                Ok(got) => assert_eq!(got, ids, "{name}"),
                Err(e) => panic!(
                    "{name}: {} bytes in {} tokens refused: {e}",
                    text.len(),
                    ids.len()
                ),
            }
        }
    }
}

#[test]
fn megabytes_of_text_are_refused_without_encoding() {
    let text = "a ".repeat(2_000_000);
    for (name, tok) in tokenizers() {
        match tok.encode_within(&text, 8192) {
            Err(TokenizerError::TooLong {
                at_least, limit, ..
            }) => {
                assert!(at_least >= limit, "{name}: {at_least}")
            }
            other => panic!("{name}: {:?}", other.map(|ids| ids.len())),
        }
    }
}

#[test]
fn truncation_and_padding_saved_in_tokenizer_json_do_not_apply() {
    let path = model_path("gpt2-tokenizer/tokenizer.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    json["truncation"] = serde_json::json!({"direction": "Right", "max_length": 4,
                                            "strategy": "LongestFirst", "stride": 0});
    json["padding"] = serde_json::json!({"strategy": {"Fixed": 64}, "direction": "Right",
        "pad_to_multiple_of": null, "pad_id": 0, "pad_type_id": 0, "pad_token": "!"});
    let dir = common::TempDir::new("saved-truncation");
    let saved = dir.join("tokenizer.json");
    std::fs::write(&saved, serde_json::to_vec(&json).unwrap()).unwrap();
    let text = "Once upon a time there was a tokenizer that cut every prompt short.";
    let plain = TextTokenizer::from_file(&path, None)
        .unwrap()
        .encode(text)
        .unwrap();
    assert!(plain.len() > 4, "{plain:?}");
    let saved = TextTokenizer::from_file(&saved, None).unwrap();
    assert_eq!(saved.encode(text).unwrap(), plain);
}
