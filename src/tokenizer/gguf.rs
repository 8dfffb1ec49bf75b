//! Builds a tokenizer from GGUF metadata (`tokenizer.ggml.*`) that gives llama.cpp's token ids:
//! - `gpt2`: byte-level BPE with the merges stored in the file and the split rules `tokenizer.ggml.pre` names
//!   (`gpt-2`, `smollm`, `llama-bpe`, `qwen2`);
//! - `llama`: SentencePiece BPE (Llama 2, Mistral, TinyLlama, Phi-3, Gemma). llama.cpp merges, among adjacent
//!   pieces, the pair whose joined text is the highest-scoring token, then falls back to `<0xNN>` byte tokens
//!   for what no token covers; here that is a BPE whose merges are every (left, right) split of every token
//!   into two tokens, ranked by the joined token's score, with byte fallback. Spaces become `▁`, and text
//!   after the start or a special token gets a leading `▁` when `tokenizer.ggml.add_space_prefix` says so.
//!
//! Any other vocabulary or split rule is refused with its name, never served with wrong ids.

use candle_core::quantized::gguf_file::Value;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{Prepend, Replace};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, SplitDelimiterBehavior, Tokenizer,
};

use super::{TextTokenizer, TokenizerError};
use std::collections::HashMap;

/// GGUF token types that are matched as whole special tokens: control (3) and user-defined (4).
const SPECIAL_TYPES: [i32; 2] = [3, 4];
/// GGUF token types that never take part in SentencePiece merges: unknown (2), control (3), byte (6).
const NOT_MERGED: [i32; 3] = [2, 3, 6];

/// llama.cpp's split regex for `pre = llama-bpe` (Llama 3): the tokenizer.json one with its case-insensitive
/// group spelled out, as llama.cpp runs it.
const LLAMA3_SPLIT: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// llama.cpp's split regex for `pre = qwen2` (Qwen2, Qwen2.5, Qwen3): single digits.
const QWEN2_SPLIT: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Builds the tokenizer stored in a GGUF file's metadata.
pub fn from_gguf(meta: &HashMap<String, Value>) -> Result<TextTokenizer, TokenizerError> {
    let g = &Meta(meta);
    let model = g.meta_str("tokenizer.ggml.model").unwrap_or("");
    let tokens = strings(g, "tokenizer.ggml.tokens")?;
    let types: Vec<i32> = match g.0.get("tokenizer.ggml.token_type") {
        Some(Value::Array(v)) => v.iter().map(|t| t.to_i32().unwrap_or(1)).collect(),
        _ => vec![1; tokens.len()],
    };
    if types.len() != tokens.len() {
        return Err(TokenizerError::Unsupported(format!(
            "{} token types for {} tokens",
            types.len(),
            tokens.len()
        )));
    }
    let (mut tok, add_bos_default) = match model {
        "gpt2" => (byte_level_bpe(g, &tokens)?, g.meta_str("tokenizer.ggml.pre") == Some("llama-bpe")),
        "llama" => (sentencepiece_bpe(g, &tokens, &types)?, true),
        other => {
            return Err(TokenizerError::Unsupported(format!(
                "tokenizer.ggml.model = `{other}` (rill reproduces `gpt2` byte-level BPE and `llama` SentencePiece vocabularies; put a tokenizer.json beside the file)"
            )))
        }
    };
    let specials = tokens
        .iter()
        .zip(&types)
        .filter(|(_, ty)| SPECIAL_TYPES.contains(ty))
        .map(|(t, _)| AddedToken::from(t.clone(), true).normalized(false));
    tok.add_special_tokens(specials.collect::<Vec<_>>())
        .map_err(|e| TokenizerError::Unsupported(e.to_string()))?;
    let id_text = |key: &str| {
        g.meta_u32(key)
            .ok()
            .and_then(|id| tokens.get(id as usize).cloned())
    };
    let add_bos =
        g.0.get("tokenizer.ggml.add_bos_token")
            .and_then(|v| v.to_bool().ok())
            .unwrap_or(add_bos_default);
    let mut t = TextTokenizer::new(
        tok,
        id_text("tokenizer.ggml.eos_token_id"),
        id_text("tokenizer.ggml.bos_token_id"),
        add_bos,
    );
    for key in ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
        if let Some(id) = g.meta_u32(key).ok().filter(|id| !t.eos_ids.contains(id)) {
            t.eos_ids.push(id);
        }
    }
    Ok(t)
}

/// Byte-level BPE with the file's merges and the split rules `tokenizer.ggml.pre` names.
fn byte_level_bpe(g: &Meta<'_>, tokens: &[String]) -> Result<Tokenizer, TokenizerError> {
    let merges = strings(g, "tokenizer.ggml.merges")?;
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
    let pre = g.meta_str("tokenizer.ggml.pre").unwrap_or("default");
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        // llama.cpp takes a whole pre-token that is itself a token without merging, for Llama 3.
        .ignore_merges(matches!(pre, "llama-bpe" | "llama3" | "llama-v3"))
        .build()
        .map_err(|e| TokenizerError::Unsupported(e.to_string()))?;
    let mut tok = Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(pre_tokenizer(pre)?));
    tok.with_decoder(Some(ByteLevelDecoder::default()));
    Ok(tok)
}

/// SentencePiece BPE as llama.cpp runs it (see the module comment).
fn sentencepiece_bpe(
    g: &Meta<'_>,
    tokens: &[String],
    types: &[i32],
) -> Result<Tokenizer, TokenizerError> {
    let scores: Vec<f32> = match g.0.get("tokenizer.ggml.scores") {
        Some(Value::Array(v)) => v.iter().map(|s| s.to_f32().unwrap_or(0.0)).collect(),
        _ => {
            return Err(TokenizerError::Unsupported(
                "a SentencePiece vocabulary without `tokenizer.ggml.scores`".into(),
            ))
        }
    };
    if scores.len() != tokens.len() {
        return Err(TokenizerError::Unsupported(format!(
            "{} scores for {} tokens",
            scores.len(),
            tokens.len()
        )));
    }
    let mergeable: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| !NOT_MERGED.contains(&types[*i]))
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    // Every way to make a token from two tokens, best joined score first (ties: lower id first).
    let mut merges: Vec<(f32, usize, String, String)> = Vec::new();
    for (&text, &id) in &mergeable {
        for (at, _) in text.char_indices().skip(1) {
            let (left, right) = text.split_at(at);
            if mergeable.contains_key(left) && mergeable.contains_key(right) {
                merges.push((scores[id], id, left.to_string(), right.to_string()));
            }
        }
    }
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let unk = g
        .meta_u32("tokenizer.ggml.unknown_token_id")
        .ok()
        .and_then(|id| tokens.get(id as usize).cloned());
    let mut builder = BPE::builder()
        .vocab_and_merges(
            vocab,
            merges.into_iter().map(|(_, _, l, r)| (l, r)).collect(),
        )
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(unk) = unk {
        builder = builder.unk_token(unk);
    }
    let bpe = builder
        .build()
        .map_err(|e| TokenizerError::Unsupported(e.to_string()))?;
    let space_prefix =
        g.0.get("tokenizer.ggml.add_space_prefix")
            .and_then(|v| v.to_bool().ok())
            .unwrap_or(true);
    let tokenizer_err = |e: tokenizers::Error| TokenizerError::Unsupported(e.to_string());
    let mut normalizers: Vec<NormalizerWrapper> = Vec::new();
    if space_prefix {
        normalizers.push(Prepend::new("\u{2581}".into()).into());
    }
    normalizers.push(Replace::new(" ", "\u{2581}").map_err(tokenizer_err)?.into());
    let mut tok = Tokenizer::new(bpe);
    tok.with_normalizer(Some(tokenizers::normalizers::Sequence::new(normalizers)))
        .map_err(tokenizer_err)?;
    let mut decoders: Vec<DecoderWrapper> = vec![
        Replace::new("\u{2581}", " ").map_err(tokenizer_err)?.into(),
        ByteFallback::default().into(),
        Fuse::default().into(),
    ];
    if space_prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    tok.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(tok)
}

/// The pre-tokenizer matching llama.cpp's split rules for a `tokenizer.ggml.pre` value.
fn pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper, TokenizerError> {
    let byte_level = |regex| PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, regex));
    Ok(match pre {
        "default" | "gpt-2" | "gpt2" => byte_level(true),
        "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level(true)]).into(),
        "llama-bpe" | "llama3" | "llama-v3" | "smaug-bpe" => split_then_bytes(LLAMA3_SPLIT)?,
        "qwen2" | "deepseek-r1-qwen" => split_then_bytes(QWEN2_SPLIT)?,
        other => {
            return Err(TokenizerError::Unsupported(format!(
                "tokenizer.ggml.pre = `{other}`"
            )))
        }
    })
}

/// Splits by `regex` (each match a pre-token), then maps bytes to the byte-level alphabet.
fn split_then_bytes(regex: &str) -> Result<PreTokenizerWrapper, TokenizerError> {
    let split = Split::new(
        SplitPattern::Regex(regex.into()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(|e| TokenizerError::Unsupported(e.to_string()))?;
    Ok(Sequence::new(vec![
        split.into(),
        PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, false)),
    ])
    .into())
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
