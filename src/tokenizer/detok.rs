//! Incremental detokenization: turns a stream of token ids into text deltas without ever decoding a token
//! alone, holding back bytes that do not yet form a complete UTF-8 character.
//!
//! It keeps a small window of ids: `prefix..read` is text already emitted, `read..` is new. Each step decodes
//! the window with and without the new ids and emits the difference, unless the new text ends in U+FFFD
//! (an incomplete character), in which case it waits for the next token. Spaces, punctuation and CJK text are
//! emitted as soon as they are complete.

use super::{TextTokenizer, TokenizerError};

const REPLACEMENT: char = '\u{FFFD}';

/// One request's decoder state.
#[derive(Debug, Clone, Default)]
pub struct IncrementalDecoder {
    ids: Vec<u32>,
    prefix: usize,
    read: usize,
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

    /// Returns whatever text is still held back, complete or not; call once when the sequence ends.
    pub fn flush(&mut self, tok: &TextTokenizer) -> Result<String, TokenizerError> {
        self.delta(tok, true)
    }

    fn delta(&mut self, tok: &TextTokenizer, at_end: bool) -> Result<String, TokenizerError> {
        if self.read == self.ids.len() {
            return Ok(String::new());
        }
        let before = tok.decode(&self.ids[self.prefix..self.read], self.skip_special)?;
        let after = tok.decode(&self.ids[self.prefix..], self.skip_special)?;
        if !at_end && after.ends_with(REPLACEMENT) {
            return Ok(String::new());
        }
        let new = match after.strip_prefix(before.as_str()) {
            Some(new) => new.to_string(),
            // A decoder that rewrites earlier text (rare): emit what differs after the common prefix.
            None => after[common_prefix_len(&before, &after)..].to_string(),
        };
        if new.is_empty() && !at_end {
            // Nothing visible yet (e.g. a skipped special token): keep the window but move on.
            self.read = self.ids.len();
            return Ok(new);
        }
        self.prefix = self.read;
        self.read = self.ids.len();
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
