//! Constrained decoding: a grammar (a JSON schema, or llguidance's Lark syntax) compiled against the model's
//! vocabulary, and the per-sequence [`Constraint`] the sampler consults at every step.
//!
//! The vocabulary goes to llguidance as raw bytes per token id, taken from rill's own tokenizer (special tokens
//! marked the way llguidance expects), so any tokenizer rill loads — a `tokenizer.json` or one built from GGUF
//! metadata — can be constrained. Compiled grammars are cached by their text: a client that sends the same
//! tool schema with every request pays the compile once.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{self, SimpleVob, TokEnv, TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};

use crate::tokenizer::TextTokenizer;

/// What a request's output must match.
#[derive(Debug, Clone, PartialEq)]
pub enum Grammar {
    /// JSON valid against this schema (`{"type": "object"}` for "any JSON object").
    JsonSchema(serde_json::Value),
    /// A grammar in llguidance's Lark syntax (tool calls are built this way; `%json {…}` embeds a schema).
    Lark(String),
}

impl Grammar {
    /// The cache key: the grammar's kind and canonical text.
    fn key(&self) -> String {
        match self {
            Self::JsonSchema(v) => format!("json:{v}"),
            Self::Lark(s) => format!("lark:{s}"),
        }
    }

    fn top_level(&self) -> TopLevelGrammar {
        match self {
            Self::JsonSchema(v) => TopLevelGrammar::from_json_schema(v.clone()),
            Self::Lark(s) => TopLevelGrammar::from_lark(s.clone()),
        }
    }
}

/// Why a grammar cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GrammarError {
    /// The schema or grammar is invalid or uses something unsupported (the request's fault: a 400).
    #[error("invalid grammar: {0}")]
    Invalid(String),
    /// The model's vocabulary could not be prepared for constrained decoding.
    #[error("constrained decoding is unavailable for this model: {0}")]
    Unavailable(String),
}

/// Grammars compiled so far, most recently used last.
const CACHE_ENTRIES: usize = 64;

/// Compiles grammars for one model's vocabulary. Shared by every request; compiling is thread-safe.
pub struct GrammarCompiler {
    factory: ParserFactory,
    cache: Mutex<VecDeque<(String, Matcher)>>,
}

impl std::fmt::Debug for GrammarCompiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrammarCompiler").finish_non_exhaustive()
    }
}

impl GrammarCompiler {
    /// Prepares the vocabulary of `tok` for a model whose logits have `vocab_size` entries (ids past the
    /// tokenizer's own are never allowed).
    pub fn new(tok: &TextTokenizer, vocab_size: usize) -> Result<Self, GrammarError> {
        let words: Vec<Vec<u8>> = (0..vocab_size as u32)
            .map(|id| {
                if tok.is_special(id) {
                    // llguidance's marker for special tokens: they never match grammar text.
                    let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                    w.extend(tok.token_bytes(id));
                    w
                } else {
                    tok.token_bytes(id)
                }
            })
            .collect();
        let eos = tok.eos_ids.first().copied().unwrap_or(0);
        let info = TokRxInfo::new(vocab_size as u32, eos);
        let trie = TokTrie::from(&info, &words).with_eos_tokens(&tok.eos_ids);
        let env: TokEnv = Arc::new(TrieEnv(trie));
        let mut factory = ParserFactory::new_simple(&env)
            .map_err(|e| GrammarError::Unavailable(e.to_string()))?;
        factory.quiet();
        Ok(Self {
            factory,
            cache: Mutex::new(VecDeque::new()),
        })
    }

    /// A fresh constraint for `grammar`, compiled or from the cache.
    pub fn compile(&self, grammar: &Grammar) -> Result<Constraint, GrammarError> {
        let key = grammar.key();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = cache.iter().position(|(k, _)| *k == key) {
            let entry = cache.remove(i).expect("found");
            let matcher = entry.1.deep_clone();
            cache.push_back(entry);
            return Ok(Constraint::new(matcher));
        }
        drop(cache);
        let parser = self
            .factory
            .create_parser(grammar.top_level())
            .map_err(|e| GrammarError::Invalid(e.to_string()))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(GrammarError::Invalid(e));
        }
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_ENTRIES {
            cache.pop_front();
        }
        cache.push_back((key, matcher.deep_clone()));
        Ok(Constraint::new(matcher))
    }
}

/// The vocabulary as llguidance sees it. Text is tokenized greedily over the trie (llguidance only needs this
/// for text a grammar forces, which rill does not use).
struct TrieEnv(TokTrie);

impl TokenizerEnv for TrieEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.0
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<toktrie::TokenId> {
        self.0.greedy_tokenize(s)
    }

    fn tokenize_is_canonical(&self) -> bool {
        false
    }
}

/// One sequence's place in its grammar.
pub struct Constraint {
    matcher: Matcher,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint")
            .field("stopped", &self.matcher.is_stopped())
            .finish()
    }
}

impl Clone for Constraint {
    fn clone(&self) -> Self {
        Self::new(self.matcher.deep_clone())
    }
}

impl Constraint {
    fn new(matcher: Matcher) -> Self {
        Self { matcher }
    }

    /// Whether `token` may come next (cheap: one token checked, nothing computed for the rest).
    pub fn allows(&mut self, token: u32) -> bool {
        matches!(self.matcher.validate_tokens(&[token]), Ok(1))
    }

    /// Every token that may come next (EOS among them once the grammar is complete).
    pub fn mask(&mut self) -> Result<SimpleVob, GrammarError> {
        self.matcher
            .compute_mask_or_eos()
            .map_err(|e| GrammarError::Invalid(e.to_string()))
    }

    /// Moves past `token`, which [`Constraint::allows`] or the mask allowed.
    pub fn consume(&mut self, token: u32) -> Result<(), GrammarError> {
        self.matcher
            .consume_token(token)
            .map_err(|e| GrammarError::Invalid(e.to_string()))
    }

    /// The grammar is complete and nothing more may follow: the sequence should end.
    pub fn is_finished(&self) -> bool {
        self.matcher.is_stopped()
    }
}

/// Sets every logit `mask` does not allow to -inf.
pub fn apply_mask(mask: &SimpleVob, logits: &mut [f32]) {
    for (i, l) in logits.iter_mut().enumerate() {
        if !mask.is_allowed(i as u32) {
            *l = f32::NEG_INFINITY;
        }
    }
}
