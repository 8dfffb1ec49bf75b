//! Incremental detokenization: turns a stream of token ids into text deltas without ever decoding a token
//! alone, holding back bytes that do not yet form a complete UTF-8 character.
//!
//! It keeps a small window of ids: `prefix..read` is context already emitted, `read..` is new. Each step decodes
//! the window with and without the new ids and emits the difference, up to the last complete character: when
//! the new text ends in U+FFFD (a character whose bytes are still arriving), the complete part before it is
//! emitted now and the rest waits. So a token that carries a space and the first byte of a CJK character
//! shows its space at once. Spaces, punctuation and CJK text appear on the token that completes them. Bytes
//! still incomplete when the sequence ends are dropped.

use super::{TextTokenizer, TokenizerError};

const REPLACEMENT: char = '\u{FFFD}';

/// One request's decoder state.
#[derive(Debug, Clone, Default)]
pub struct IncrementalDecoder {
    ids: Vec<u32>,
    prefix: usize,
    read: usize,
    /// Bytes of the text of `read..` already emitted while its last character was incomplete.
    partial: usize,
    skip_special: bool,
}

impl IncrementalDecoder {
    pub fn new(skip_special: bool) -> Self {
        Self {
            skip_special,
            ..Self::default()
        }
    }

    /// Adds one token and returns the text that became complete (possibly empty).
    pub fn push(&mut self, tok: &TextTokenizer, id: u32) -> Result<String, TokenizerError> {
        self.ids.push(id);
        self.delta(tok, false)
    }

    /// Returns the complete text still held back; call once when the sequence ends. The bytes of a character
    /// that never completed (a token limit that cut an emoji, say) are dropped: they would only show as U+FFFD.
    pub fn flush(&mut self, tok: &TextTokenizer) -> Result<String, TokenizerError> {
        self.delta(tok, true)
    }

    fn delta(&mut self, tok: &TextTokenizer, at_end: bool) -> Result<String, TokenizerError> {
        if self.read == self.ids.len() {
            return Ok(String::new());
        }
        let before = tok.decode(&self.ids[self.prefix..self.read], self.skip_special)?;
        let after = tok.decode(&self.ids[self.prefix..], self.skip_special)?;
        let incomplete = !at_end && after.ends_with(REPLACEMENT);
        let complete = after.trim_end_matches(REPLACEMENT);
        // Text of the new tokens; a decoder that rewrites earlier text (rare) is diffed after the common prefix.
        let start = if complete.starts_with(before.as_str()) {
            before.len()
        } else {
            common_prefix_len(&before, complete)
        };
        let visible = &complete[start.min(complete.len())..];
        let new = visible.get(self.partial..).unwrap_or_default().to_string();
        if incomplete {
            self.partial += new.len();
        } else {
            self.prefix = self.read;
            self.read = self.ids.len();
            self.partial = 0;
        }
        Ok(new)
    }
}

fn common_prefix_len(a: &str, b: &str) -> usize {
    a.char_indices()
        .zip(b.chars())
        .take_while(|((_, x), y)| x == y)
        .last()
        .map_or(0, |((i, c), _)| i + c.len_utf8())
}
