//! How much text one token can stand for, so that a prompt far too long for the context is refused from its
//! length alone. Encoding a few megabytes of text costs hundreds of bytes of working memory per byte of it (the
//! tokenizer keeps offsets, alignments and token strings for every piece), only to find the prompt does not fit.
//!
//! The bound holds when every step of the tokenizer's pipeline keeps the text it is given:
//! - a token's string is at least as long as the normalized text it covers: byte-level BPE writes each byte as
//!   one character (so characters count bytes), a metaspace `▁` (3 bytes) stands for a space, a byte-fallback
//!   token (`<0x41>`) for one byte, and an added token is its own text;
//! - normalization shrinks text at most 3× (a compatibility character such as the Kelvin sign, 3 bytes, becomes
//!   `K`; the Hangul jamo of one syllable, 9 bytes, compose into 3), and adding or replacing by something at
//!   least as long never shrinks it;
//! - pre-tokenizers only split, the model never skips a character (byte-level, byte fallback, or one unknown
//!   token per unknown character), and no added token absorbs the whitespace beside it (`lstrip`, `rstrip`).
//!
//! A step that may drop or merge away text (stripping, a shorter replacement, a split that removes what it
//! matches, a word-level model whose one unknown token covers a word of any length) leaves no bound.

use serde_json::Value;
use tokenizers::models::ModelWrapper;
use tokenizers::Tokenizer;

/// The most bytes of input text one token can cover, or `None` when the pipeline gives no such bound.
pub fn max_bytes_per_token(t: &Tokenizer) -> Option<usize> {
    let shrink = match t.get_normalizer() {
        None => 1,
        Some(n) => normalizer_shrink(&serde_json::to_value(n).ok()?)?,
    };
    let pre = match t.get_pre_tokenizer() {
        None => Value::Null,
        Some(p) => serde_json::to_value(p).ok()?,
    };
    if !pre_tokenizer_keeps_text(&pre) {
        return None;
    }
    let byte_level = mentions_type(&pre, "ByteLevel");
    let keeps_every_char = match t.get_model() {
        ModelWrapper::BPE(bpe) => {
            byte_level || bpe.byte_fallback || (bpe.unk_token.is_some() && !bpe.fuse_unk)
        }
        _ => false,
    };
    if !keeps_every_char {
        return None;
    }
    let added = t.get_added_tokens_decoder();
    // An added token that strips the whitespace beside it covers any run of it.
    if added.values().any(|a| a.lstrip || a.rstrip) {
        return None;
    }
    let longest = t
        .get_vocab(true)
        .iter()
        .map(|(text, id)| match added.contains_key(id) {
            true => text.len(),
            false if byte_level => text.chars().count(),
            false => text.len(),
        })
        .max()?;
    Some(longest.max(1) * shrink)
}

/// By how much a normalizer (its serialized form) may shrink text at most; `None` when it may drop text.
fn normalizer_shrink(n: &Value) -> Option<usize> {
    match n["type"].as_str()? {
        "NFC" | "NFD" | "NFKC" | "NFKD" | "Lowercase" => Some(3),
        "Prepend" | "ByteLevel" => Some(1),
        "Replace" => {
            let from = n["pattern"]["String"].as_str()?;
            let to = n["content"].as_str()?;
            (to.len() >= from.len()).then_some(1)
        }
        "Sequence" => n["normalizers"]
            .as_array()?
            .iter()
            .try_fold(1, |acc, m| Some(acc * normalizer_shrink(m)?)),
        _ => None,
    }
}

/// Whether a pre-tokenizer (its serialized form, `null` for none) only splits, never removing text.
fn pre_tokenizer_keeps_text(p: &Value) -> bool {
    match p["type"].as_str() {
        None => p.is_null(),
        Some("ByteLevel" | "Metaspace" | "Digits" | "Punctuation" | "UnicodeScripts") => true,
        Some("Split") => p["behavior"] != "Removed",
        Some("Sequence") => p["pretokenizers"]
            .as_array()
            .is_some_and(|all| all.iter().all(pre_tokenizer_keeps_text)),
        Some(_) => false,
    }
}

/// Whether a serialized pipeline step is, or holds, a step of type `ty`.
fn mentions_type(v: &Value, ty: &str) -> bool {
    match v {
        Value::Object(m) => {
            m.get("type").is_some_and(|t| t == ty) || m.values().any(|x| mentions_type(x, ty))
        }
        Value::Array(a) => a.iter().any(|x| mentions_type(x, ty)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer(normalizer: Value, pre: Value, model: Value) -> Tokenizer {
        with_added(normalizer, pre, model, serde_json::json!([]))
    }

    fn with_added(normalizer: Value, pre: Value, model: Value, added: Value) -> Tokenizer {
        let json = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
            "normalizer": normalizer, "pre_tokenizer": pre, "post_processor": null, "decoder": null,
            "model": model,
        });
        Tokenizer::from_bytes(serde_json::to_vec(&json).unwrap()).unwrap()
    }

    fn bpe(extra: Value) -> Value {
        let mut m = serde_json::json!({"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "<unk>": 3},
                                       "merges": [["a", "b"]]});
        m.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        m
    }

    #[test]
    fn pipelines_that_keep_text_have_a_bound_and_others_none() {
        let byte_level = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false,
                                            "trim_offsets": true, "use_regex": true});
        let t = tokenizer(Value::Null, byte_level.clone(), bpe(serde_json::json!({})));
        assert_eq!(max_bytes_per_token(&t), Some(5)); // "<unk>"
        let nfc = serde_json::json!({"type": "NFC"});
        let t = tokenizer(nfc, byte_level.clone(), bpe(serde_json::json!({})));
        assert_eq!(max_bytes_per_token(&t), Some(15));
        let strip = serde_json::json!({"type": "Strip", "strip_left": true, "strip_right": true});
        assert_eq!(
            max_bytes_per_token(&tokenizer(
                strip,
                byte_level.clone(),
                bpe(serde_json::json!({}))
            )),
            None
        );
        let shorter =
            serde_json::json!({"type": "Replace", "pattern": {"String": "  "}, "content": " "});
        assert_eq!(
            max_bytes_per_token(&tokenizer(shorter, byte_level, bpe(serde_json::json!({})))),
            None
        );
        // Without byte-level or byte fallback, unknown characters vanish unless each gets its own unknown token.
        let plain = |extra| max_bytes_per_token(&tokenizer(Value::Null, Value::Null, bpe(extra)));
        assert_eq!(plain(serde_json::json!({})), None);
        assert_eq!(
            plain(serde_json::json!({"unk_token": "<unk>", "fuse_unk": true})),
            None
        );
        assert_eq!(plain(serde_json::json!({"unk_token": "<unk>"})), Some(5));
        assert_eq!(plain(serde_json::json!({"byte_fallback": true})), Some(5));
        // A special token that strips the spaces after it stands for any number of them.
        let end = |rstrip| {
            serde_json::json!([{"id": 4, "content": "<|end|>", "single_word": false,
            "lstrip": false, "rstrip": rstrip, "normalized": false, "special": true}])
        };
        let fallback = || bpe(serde_json::json!({"byte_fallback": true}));
        let t = with_added(Value::Null, Value::Null, fallback(), end(false));
        assert_eq!(max_bytes_per_token(&t), Some(7));
        let t = with_added(Value::Null, Value::Null, fallback(), end(true));
        assert_eq!(t.encode("<|end|>      ", false).unwrap().len(), 1);
        assert_eq!(max_bytes_per_token(&t), None);
        let removes = serde_json::json!({"type": "WhitespaceSplit"});
        let t = tokenizer(
            Value::Null,
            removes,
            bpe(serde_json::json!({"byte_fallback": true})),
        );
        assert_eq!(max_bytes_per_token(&t), None);
    }
}
