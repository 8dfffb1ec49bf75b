//! Builds a HuggingFace tokenizer from GGUF metadata (`tokenizer.ggml.*`) for byte-level BPE vocabularies.

use candle_core::quantized::gguf_file::Value;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use super::{TextTokenizer, TokenizerError};
use std::collections::HashMap;

/// GGUF token types that are matched as whole special tokens: control (3) and user-defined (4).
const SPECIAL_TYPES: [i32; 2] = [3, 4];

/// The split regex llama.cpp uses for `pre = llama-bpe` (Llama 3 style).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Builds the tokenizer stored in a GGUF file's metadata.
pub fn from_gguf(meta: &HashMap<String, Value>) -> Result<TextTokenizer, TokenizerError> {
    let g = &Meta(meta);
    let model = g.meta_str("tokenizer.ggml.model").unwrap_or("");
    if model != "gpt2" {
        return Err(TokenizerError::Unsupported(format!(
            "tokenizer.ggml.model = `{model}` (rill builds byte-level BPE `gpt2` vocabularies; put a tokenizer.json beside the file)"
        )));
    }
    let tokens = strings(g, "tokenizer.ggml.tokens")?;
    let merges = strings(g, "tokenizer.ggml.merges")?;
    let types: Vec<i32> = match g.0.get("tokenizer.ggml.token_type") {
        Some(Value::Array(v)) => v.iter().map(|t| t.to_i32().unwrap_or(1)).collect(),
        _ => vec![1; tokens.len()],
    };
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let merges = merges
        .iter()
        .filter_map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
        })
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| TokenizerError::Unsupported(e.to_string()))?;
    let mut tok = Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(pre_tokenizer(
        g.meta_str("tokenizer.ggml.pre").unwrap_or("default"),
    )?));
    tok.with_decoder(Some(ByteLevelDecoder::default()));
    let specials = tokens
        .iter()
        .zip(&types)
        .filter(|(_, ty)| SPECIAL_TYPES.contains(ty))
        .map(|(t, _)| AddedToken::from(t.clone(), true));
    tok.add_special_tokens(specials.collect::<Vec<_>>())
        .map_err(|e| TokenizerError::Unsupported(e.to_string()))?;
    let id_text = |key: &str| {
        g.meta_u32(key)
            .ok()
            .and_then(|id| tokens.get(id as usize).cloned())
    };
    let add_bos = g
        .0
        .get("tokenizer.ggml.add_bos_token")
        .and_then(|v| v.to_bool().ok());
    let mut t = TextTokenizer::new(
        tok,
        id_text("tokenizer.ggml.eos_token_id"),
        id_text("tokenizer.ggml.bos_token_id"),
        add_bos.unwrap_or(false),
    );
    if let Some(eot) = g
        .meta_u32("tokenizer.ggml.eot_token_id")
        .ok()
        .filter(|id| !t.eos_ids.contains(id))
    {
        t.eos_ids.push(eot);
    }
    Ok(t)
}

/// The pre-tokenizer matching llama.cpp's split rules for a `tokenizer.ggml.pre` value.
fn pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper, TokenizerError> {
    let byte_level = |regex| PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, regex));
    Ok(match pre {
        "default" | "gpt-2" | "gpt2" => byte_level(true),
        "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level(true)]).into(),
        "llama-bpe" | "llama3" | "smaug-bpe" => {
            let split = Split::new(
                SplitPattern::Regex(LLAMA3_SPLIT.into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| TokenizerError::Unsupported(e.to_string()))?;
            Sequence::new(vec![split.into(), byte_level(false)]).into()
        }
        other => {
            return Err(TokenizerError::Unsupported(format!(
                "tokenizer.ggml.pre = `{other}`"
            )))
        }
    })
}

fn strings(g: &Meta<'_>, key: &str) -> Result<Vec<String>, TokenizerError> {
    match g.0.get(key) {
        Some(Value::Array(v)) => Ok(v
            .iter()
            .filter_map(|s| s.to_string().ok().cloned())
            .collect()),
        _ => Err(TokenizerError::Unsupported(format!("missing `{key}`"))),
    }
}

/// Typed lookups in GGUF metadata.
struct Meta<'a>(&'a HashMap<String, Value>);

impl Meta<'_> {
    fn meta_str(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .and_then(|v| v.to_string().ok())
            .map(String::as_str)
    }

    fn meta_u32(&self, key: &str) -> Result<u32, TokenizerError> {
        self.0
            .get(key)
            .and_then(|v| v.to_u32().ok())
            .ok_or_else(|| TokenizerError::Unsupported(format!("missing `{key}`")))
    }
}
