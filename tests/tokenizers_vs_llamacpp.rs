//! Every GGUF vocabulary type and split rule rill builds (`gpt2` BPE with the `gpt-2`, `smollm`, `llama-bpe` and
//! `qwen2` rules; `llama` SentencePiece with and without the space prefix) gives llama.cpp's token ids on a
//! corpus of multilingual text, emoji, code, whitespace runs and special tokens
//! (`tests/fixtures/tokenizer-corpus.json`; ids from `scripts/make-arch-fixtures.py --llamacpp`, which records
//! each tokenizer file's sha256).

mod common;

use candle_core::Device;
use common::{golden, ids, model_path};
use rill::load::gguf::GgufFile;
use rill::tokenizer::gguf::from_gguf;

fn check(name: &str) {
    let g = golden("tokenizer-llamacpp-golden.json");
    let corpus = golden("tokenizer-corpus.json");
    let path = model_path(&format!("arch/tok-{name}.gguf"));
    assert_eq!(
        common::sha256(&path),
        g[name]["sha256"].as_str().unwrap(),
        "tok-{name}.gguf is not the file llama.cpp's ids were made from: rerun scripts/make-arch-fixtures.py"
    );
    let file = GgufFile::open(&path, &Device::Cpu).unwrap();
    let tok = from_gguf(&file.content.metadata).unwrap();
    let want = g[name]["ids"].as_array().unwrap();
    let mut mismatches = Vec::new();
    for (text, want) in corpus.as_array().unwrap().iter().zip(want) {
        let text = text.as_str().unwrap();
        let got = tok.encode(text).unwrap();
        if got != ids(want) {
            mismatches.push(format!(
                "{text:?}\n  rill      {got:?}\n  llama.cpp {:?}",
                ids(want)
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{name}: {} of {} texts differ:\n{}",
        mismatches.len(),
        want.len(),
        mismatches.join("\n")
    );
}

#[test]
fn gpt2_bpe() {
    check("gpt2");
}

#[test]
fn smollm_bpe() {
    check("smollm");
}

#[test]
fn llama3_bpe() {
    check("llama-bpe");
}

#[test]
fn qwen2_bpe() {
    check("qwen2");
}

#[test]
fn sentencepiece() {
    check("spm");
}

#[test]
fn sentencepiece_without_space_prefix() {
    check("spm-nospace");
}

/// A vocabulary rill cannot reproduce is refused at load, naming what it is.
#[test]
fn unknown_vocabularies_are_refused() {
    let path = model_path("arch/tok-gpt2.gguf");
    let mut meta = GgufFile::open(&path, &Device::Cpu)
        .unwrap()
        .content
        .metadata;
    meta.insert(
        "tokenizer.ggml.pre".into(),
        candle_core::quantized::gguf_file::Value::String("jais".into()),
    );
    let err = from_gguf(&meta).err().expect("refused").to_string();
    assert!(err.contains("jais"), "{err}");
    meta.insert(
        "tokenizer.ggml.model".into(),
        candle_core::quantized::gguf_file::Value::String("bert".into()),
    );
    let err = from_gguf(&meta).err().expect("refused").to_string();
    assert!(err.contains("bert"), "{err}");
}
