//! A prompt is refused from its length alone only when it cannot fit (`TextTokenizer::encode_within`): on every
//! tokenizer rill builds from GGUF metadata and on HuggingFace byte-level BPE, for texts that pack the most
//! bytes into a token (whitespace runs, repeated words, special-token texts, emoji), a prompt of n tokens is
//! never refused under a limit of n + 1, and a few megabytes of text are refused under a real context without
//! being encoded.

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
