//! Text ↔ token ids: a HuggingFace `tokenizer.json` or one built from GGUF metadata, the model's end-of-turn
//! ids, its chat template, and the incremental decoder that streams text token by token.

pub mod bound;
pub mod chat;
pub mod detok;
pub mod gguf;

use std::path::Path;

pub use chat::{ChatMessage, ChatTemplate};
pub use detok::IncrementalDecoder;

/// Errors from loading or using a tokenizer or chat template.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("cannot load tokenizer {path}: {reason}")]
    Load { path: String, reason: String },
    #[error("unsupported GGUF tokenizer: {0}")]
    Unsupported(String),
    #[error("tokenizer: {0}")]
    Tokenize(String),
    #[error("chat template: {0}")]
    Template(String),
    /// Refused from its length alone, before encoding (see [`bound`]).
    #[error("the prompt has at least {at_least} tokens ({bytes} bytes of text), but the model's context is {limit} tokens")]
    TooLong {
        bytes: usize,
        at_least: usize,
        limit: usize,
    },
    /// A tokenizer whose every end-of-sequence token the model has no row for (see [`TextTokenizer::fit_rows`]).
    #[error("the tokenizer's {what} token `{text}` is id {id}, but the model has {rows} token rows: the tokenizer does not belong to these weights")]
    ForeignSpecial {
        what: &'static str,
        text: String,
        id: u32,
        rows: usize,
    },
    /// A prompt token the model has no row for: its tokenizer holds more tokens than its weights.
    #[error("the prompt holds token `{token}` (id {id}), past this model's {rows} token rows")]
    OutsideModel { token: String, id: u32, rows: usize },
}

/// Token texts that end a turn in common model families, used as stop ids when present as special tokens.
const END_OF_TURN_TEXTS: &[&str] = &[
    "<|endoftext|>",
    "<|im_end|>",
    "<|eot_id|>",
    "<|end|>",
    "</s>",
    "<|end_of_text|>",
];

/// A tokenizer plus what generation needs to know about its special tokens.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    /// Ids that end generation (EOS and end-of-turn tokens).
    pub eos_ids: Vec<u32>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    /// Whether prompts start with the BOS token.
    pub add_bos: Option<u32>,
    /// The fewest tokens a text can become, by its length, when the tokenizer bounds it ([`bound`]).
    length_bound: Option<bound::LengthBound>,
}

impl TextTokenizer {
    /// Wraps a tokenizer; `eos` and `bos` are token texts from the model's configuration.
    pub fn new(
        mut inner: tokenizers::Tokenizer,
        eos: Option<String>,
        bos: Option<String>,
        add_bos: bool,
    ) -> Self {
        // A `tokenizer.json` saved with truncation or padding on would cut prompts to its length, or fill them
        // with padding, without a word: a prompt is encoded whole, and a long one refused by the engine.
        inner
            .with_truncation(None)
            .expect("turning truncation off cannot fail");
        inner.with_padding(None);
        let mut eos_ids: Vec<u32> = eos.iter().filter_map(|t| inner.token_to_id(t)).collect();
        for text in END_OF_TURN_TEXTS {
            if let Some(id) = inner.token_to_id(text) {
                if !eos_ids.contains(&id) && is_special(&inner, id) {
                    eos_ids.push(id);
                }
            }
        }
        let add_bos = if add_bos {
            bos.as_deref().and_then(|b| inner.token_to_id(b))
        } else {
            None
        };
        Self {
            length_bound: bound::LengthBound::of(&inner),
            inner,
            eos_ids,
            bos_token: bos,
            eos_token: eos,
            add_bos,
        }
    }

    /// Loads `tokenizer.json`, reading special tokens from `tokenizer_config.json` beside it when present.
    pub fn from_file(
        path: &Path,
        config: Option<&serde_json::Value>,
    ) -> Result<Self, TokenizerError> {
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| TokenizerError::Load {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let token = |k: &str| config.and_then(|c| c.get(k)).and_then(token_text);
        let add_bos = config
            .and_then(|c| c.get("add_bos_token"))
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        Ok(Self::new(
            inner,
            token("eos_token"),
            token("bos_token"),
            add_bos,
        ))
    }

    /// The id of the BOS token, when the model has one: what a text with no tokens of its own starts from, as
    /// documents began in training (and as `generate` without inputs starts).
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_token
            .as_deref()
            .and_then(|b| self.inner.token_to_id(b))
    }

    /// Fits the tokenizer to a model with `rows` token rows (embedding and output head): end ids past the rows
    /// are dropped (the model can never produce them), and when none is left while some were named the tokenizer
    /// is refused (a tokenizer made for other weights: generation could never end). A BOS past the rows is no
    /// longer put before prompts. Other tokens past the rows are left: some checkpoints' tokenizers hold a few
    /// more tokens than their weights and run as long as prompts avoid them (see
    /// [`TokenizerError::OutsideModel`]).
    pub fn fit_rows(&mut self, rows: usize) -> Result<(), TokenizerError> {
        let inside = |id: &u32| (*id as usize) < rows;
        if let Some(&id) = self.eos_ids.iter().find(|id| !inside(id)) {
            if !self.eos_ids.iter().any(inside) {
                return Err(TokenizerError::ForeignSpecial {
                    what: "end-of-sequence",
                    text: self.decode(&[id], false).unwrap_or_default(),
                    id,
                    rows,
                });
            }
            tracing::warn!("end-of-sequence id {id} is past the model's {rows} token rows; ending on the others");
            self.eos_ids.retain(inside);
        }
        if let Some(bos) = self.add_bos.filter(|id| !inside(id)) {
            tracing::warn!("the BOS token (id {bos}) is past the model's {rows} token rows; prompts start without it");
            self.add_bos = None;
        }
        Ok(())
    }

    /// Prompt text → ids, with BOS first when the model wants it. Special-token texts in `text` become
    /// their single ids, as chat templates require.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| TokenizerError::Tokenize(e.to_string()))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if let Some(bos) = self.add_bos {
            if enc.get_ids().first() != Some(&bos) {
                ids.push(bos);
            }
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Prompt text → ids as [`Self::encode`] gives them, but a text so long that it must have at least `limit`
    /// tokens is refused from its length alone, without the memory encoding it would take (see [`bound`]).
    pub fn encode_within(&self, text: &str, limit: usize) -> Result<Vec<u32>, TokenizerError> {
        if let Some(bound) = &self.length_bound {
            let at_least = bound.fewest_tokens(text);
            if at_least >= limit {
                return Err(TokenizerError::TooLong {
                    bytes: text.len(),
                    at_least,
                    limit,
                });
            }
        }
        self.encode(text)
    }

    /// Ids → text; special tokens are dropped when `skip_special` is set.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| TokenizerError::Tokenize(e.to_string()))
    }
}

impl TextTokenizer {
    /// Whether `id` is a special token (BOS, EOS, end of turn, …), which never stands for text.
    pub fn is_special(&self, id: u32) -> bool {
        is_special(&self.inner, id)
    }

    /// The bytes one token stands for, as the model sees it: byte-level BPE pieces mapped back through the
    /// byte alphabet, SentencePiece `<0xNN>` byte tokens as that byte and `▁` as a space, added tokens as
    /// their text. A token may be part of a UTF-8 character, so this is bytes, not a string.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        let added = self.inner.get_added_vocabulary().get_added_tokens_decoder();
        if let Some(t) = added.get(&id) {
            return t.content.clone().into_bytes();
        }
        let Some(piece) = self.inner.id_to_token(id) else {
            return Vec::new();
        };
        let byte_level = matches!(
            self.inner.get_decoder(),
            Some(tokenizers::DecoderWrapper::ByteLevel(_))
        );
        if byte_level {
            return piece
                .chars()
                .flat_map(|c| match byte_level_byte(c) {
                    Some(b) => vec![b],
                    None => c.to_string().into_bytes(),
                })
                .collect();
        }
        if let Some(hex) = piece.strip_prefix("<0x").and_then(|p| p.strip_suffix('>')) {
            if let Ok(b) = u8::from_str_radix(hex, 16) {
                return vec![b];
            }
        }
        piece.replace('\u{2581}', " ").into_bytes()
    }
}

/// The byte a character of the byte-level BPE alphabet stands for: printable Latin-1 bytes map to themselves,
/// the other 68 bytes to U+0100 onwards, in byte order.
fn byte_level_byte(c: char) -> Option<u8> {
    let printable = |b: u32| (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    let code = c as u32;
    if code < 0x100 && printable(code) {
        return Some(code as u8);
    }
    let n = code.checked_sub(0x100)?;
    (0u32..256)
        .filter(|&b| !printable(b))
        .nth(n as usize)
        .map(|b| b as u8)
}

fn is_special(tok: &tokenizers::Tokenizer, id: u32) -> bool {
    tok.get_added_vocabulary()
        .get_added_tokens_decoder()
        .get(&id)
        .is_some_and(|t| t.special)
}

/// A special token in `tokenizer_config.json` is either a string or `{"content": ...}`.
fn token_text(v: &serde_json::Value) -> Option<String> {
    v.as_str().map(str::to_string).or_else(|| {
        v.get("content")
            .and_then(|c| c.as_str())
            .map(str::to_string)
    })
}
