//! How much text one token can stand for, so that a prompt far too long for the context is refused from its
//! length alone. Encoding a few megabytes of text costs hundreds of bytes of working memory per byte of it (the
//! tokenizer keeps offsets, alignments and token strings for every piece), only to find the prompt does not fit.
//!
//! The bound holds when every step of the tokenizer's pipeline keeps the text it is given:
//! - a token's string is at least as long as the normalized text it covers: byte-level BPE writes each byte as
//!   one character (so characters count bytes), a metaspace `▁` (3 bytes) stands for a space, a byte-fallback
//!   token (`<0x41>`) for one byte, an added token is its own text, and an unknown token stands for one
//!   character (at most 4 bytes, so no token counts for less than 4);
//! - normalization shrinks text at most 4× (a compatibility character such as 𝐀, 4 bytes, becomes `A`; the
//!   Kelvin sign, 3 bytes, lowercases to `k`; the Hangul jamo of one syllable, 9 bytes, compose into 3), and
//!   adding or replacing by something at least as long never shrinks it;
//! - pre-tokenizers only split, the model never skips a character (a byte-fallback vocabulary holding all 256
//!   bytes, or one unfused unknown token per unknown character), and no added token absorbs the whitespace
//!   beside it (`lstrip`, `rstrip`). A byte-level vocabulary may lack some bytes: those are not counted.
//!
//! A step that may drop or merge away text (stripping, a shorter replacement, a split that removes what it
//! matches, a word-level model whose one unknown token covers a word of any length) leaves no bound.

use serde_json::Value;
use tokenizers::models::ModelWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::Tokenizer;

/// What a tokenizer's pipeline says about the fewest tokens a text can become.
#[derive(Debug, Clone, PartialEq)]
pub struct LengthBound {
    /// The most bytes of input text one token covers.
    pub per_token: usize,
    /// Bytes a byte-level vocabulary has no token for: they become no token (or share one unknown token), so
    /// they count for nothing. SmolLM2's lacks a few control bytes and bytes that never lead a UTF-8
    /// character of the planes text uses. Indexed by byte; empty when every byte has its token.
    vanishing: Vec<bool>,
}

impl LengthBound {
    /// The bound of `t`'s pipeline, or `None` when it gives none.
    pub fn of(t: &Tokenizer) -> Option<Self> {
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
        let ModelWrapper::BPE(bpe) = t.get_model() else {
            return None;
        };
        let byte_level = mentions_type(&pre, "ByteLevel");
        let unfused_unknown = bpe.unk_token.is_some() && !bpe.fuse_unk;
        let mut vanishing = Vec::new();
        if byte_level && !unfused_unknown {
            let missing = ByteLevel::alphabet()
                .into_iter()
                .filter(|c| t.token_to_id(&c.to_string()).is_none())
                .filter_map(super::byte_level_byte);
            for b in missing {
                vanishing.resize(256, false);
                vanishing[b as usize] = true;
            }
        } else if !byte_level {
            // Byte fallback without every byte token falls to the unknown token, or to nothing.
            let all_bytes = (0..=255u8).all(|b| t.token_to_id(&format!("<0x{b:02X}>")).is_some());
            if !(unfused_unknown || bpe.byte_fallback && all_bytes) {
                return None;
            }
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
        Some(Self {
            per_token: longest.max(4) * shrink,
            vanishing,
        })
    }

    /// The fewest tokens `text` can become.
    pub fn fewest_tokens(&self, text: &str) -> usize {
        let counted = if self.vanishing.is_empty() {
            text.len()
        } else {
            text.bytes()
                .filter(|&b| !self.vanishing[b as usize])
                .count()
        };
        counted.div_ceil(self.per_token)
    }
}

/// By how much a normalizer (its serialized form) may shrink text at most; `None` when it may drop text.
fn normalizer_shrink(n: &Value) -> Option<usize> {
    match n["type"].as_str()? {
        "NFC" | "NFD" | "NFKC" | "NFKD" | "Lowercase" => Some(4),
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
    use serde_json::json;

    fn per_token(t: &Tokenizer) -> Option<usize> {
        LengthBound::of(t).map(|b| b.per_token)
    }

    fn tokenizer(normalizer: Value, pre: Value, model: Value) -> Tokenizer {
        with_added(normalizer, pre, model, json!([]))
    }

    fn with_added(normalizer: Value, pre: Value, model: Value, added: Value) -> Tokenizer {
        let json = json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
            "normalizer": normalizer, "pre_tokenizer": pre, "post_processor": null, "decoder": null,
            "model": model,
        });
        Tokenizer::from_bytes(serde_json::to_vec(&json).unwrap()).unwrap()
    }

    /// A BPE model over `tokens` (with `AAAA`, 4 bytes, made from `A`s) and `extra` settings.
    fn bpe(mut tokens: Vec<String>, extra: Value) -> Value {
        tokens.extend(["A", "AA", "AAAA"].map(String::from));
        tokens.dedup();
        let vocab: serde_json::Map<String, Value> = tokens
            .into_iter()
            .enumerate()
            .map(|(i, t)| (t, json!(i)))
            .collect();
        let mut m = json!({"type": "BPE", "vocab": vocab, "merges": [["A", "A"], ["AA", "AA"]]});
        m.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        m
    }

    fn byte_chars() -> Vec<String> {
        let mut all: Vec<String> = ByteLevel::alphabet()
            .iter()
            .map(|c| c.to_string())
            .collect();
        all.sort();
        all
    }

    fn byte_tokens() -> Vec<String> {
        (0..=255u8).map(|b| format!("<0x{b:02X}>")).collect()
    }

    fn byte_level() -> Value {
        json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true})
    }

    #[test]
    fn pipelines_that_keep_text_have_a_bound_and_others_none() {
        let bl = |normalizer| {
            per_token(&tokenizer(
                normalizer,
                byte_level(),
                bpe(byte_chars(), json!({})),
            ))
        };
        // The longest token is 4 characters, each a byte; NFKC may shrink text 4× (𝐀 → A).
        assert_eq!(bl(Value::Null), Some(4));
        assert_eq!(bl(json!({"type": "NFKC"})), Some(16));
        assert_eq!(
            bl(json!({"type": "Strip", "strip_left": true, "strip_right": true})),
            None
        );
        assert_eq!(
            bl(json!({"type": "Replace", "pattern": {"String": "  "}, "content": " "})),
            None
        );
        let grows = json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"});
        assert_eq!(bl(grows), Some(4));
        let removes = json!({"type": "WhitespaceSplit"});
        let fallback = bpe(byte_tokens(), json!({"byte_fallback": true}));
        assert_eq!(per_token(&tokenizer(Value::Null, removes, fallback)), None);
    }

    #[test]
    fn every_character_must_become_a_token() {
        let plain =
            |tokens, extra| per_token(&tokenizer(Value::Null, Value::Null, bpe(tokens, extra)));
        let unk = || vec!["<unk>".to_string()];
        // "<0x41>" is 6 bytes for one byte of text.
        assert_eq!(
            plain(byte_tokens(), json!({"byte_fallback": true})),
            Some(6)
        );
        // Byte fallback without the byte tokens falls to the unknown token, fused, or to nothing.
        assert_eq!(
            plain(
                unk(),
                json!({"byte_fallback": true, "unk_token": "<unk>", "fuse_unk": true})
            ),
            None
        );
        assert_eq!(plain(unk(), json!({"byte_fallback": true})), None);
        assert_eq!(plain(unk(), json!({})), None);
        assert_eq!(
            plain(unk(), json!({"unk_token": "<unk>", "fuse_unk": true})),
            None
        );
        // One unknown token per character: an emoji (4 bytes) under `?` still counts 4.
        assert_eq!(plain(unk(), json!({"unk_token": "<unk>"})), Some(5));
        assert_eq!(plain(vec!["?".into()], json!({"unk_token": "?"})), Some(4));
        // A byte-level vocabulary missing a byte drops it: such bytes are not counted.
        let mut missing = byte_chars();
        missing.retain(|c| c != "z");
        let t = tokenizer(Value::Null, byte_level(), bpe(missing, json!({})));
        let bound = LengthBound::of(&t).unwrap();
        let text = format!("{}AAAA", "z".repeat(1000));
        assert_eq!(t.encode(text.as_str(), false).unwrap().len(), 1);
        assert_eq!(bound.fewest_tokens(&text), 1);
    }

    #[test]
    fn an_added_token_that_strips_whitespace_gives_no_bound() {
        let end = |rstrip| {
            json!([{"id": 300, "content": "<|end|>", "single_word": false,
            "lstrip": false, "rstrip": rstrip, "normalized": false, "special": true}])
        };
        let model = || bpe(byte_chars(), json!({}));
        let t = with_added(Value::Null, byte_level(), model(), end(false));
        assert_eq!(per_token(&t), Some(7));
        let t = with_added(Value::Null, byte_level(), model(), end(true));
        assert_eq!(t.encode("<|end|>      ", false).unwrap().len(), 1);
        assert_eq!(per_token(&t), None);
    }
}
