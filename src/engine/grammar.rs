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
    /// A Lark grammar that also allows free text (tools with `auto`): near the end of the token budget such an
    /// answer is not steered to close, since text may simply stop.
    LarkWithText(String),
}

impl Grammar {
    /// The cache key: the grammar's kind and canonical text.
    fn key(&self) -> String {
        match self {
            Self::JsonSchema(v) => format!("json:{v}"),
            Self::Lark(s) | Self::LarkWithText(s) => format!("lark:{s}"),
        }
    }

    /// Whether an answer nearing its token budget should be steered to close (structured answers, which are
    /// useless cut off), rather than left to run into the limit (text).
    fn steer_to_close(&self) -> bool {
        !matches!(self, Self::LarkWithText(_))
    }

    fn top_level(&self) -> TopLevelGrammar {
        match self {
            Self::JsonSchema(v) => TopLevelGrammar::from_json_schema(v.clone()),
            Self::Lark(s) | Self::LarkWithText(s) => TopLevelGrammar::from_lark(s.clone()),
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
    /// Tokens that end or close things, for answers steered to close.
    closers: Arc<Closers>,
}

/// Tokens that end an answer or close what is open, in order of preference: EOS (where the grammar is
/// complete), then tokens of only `"`, `}` and `]` — those that start with a quote first inside a string (it
/// ends the string), those that start with a bracket first outside one (a quote there would open a string).
struct Closers {
    eos: SimpleVob,
    quote_first: SimpleVob,
    bracket_first: SimpleVob,
}

impl Closers {
    fn new(words: &[Vec<u8>], eos_ids: &[u32]) -> Self {
        let n = words.len();
        let (mut eos, mut quote_first, mut bracket_first) = (
            SimpleVob::alloc(n),
            SimpleVob::alloc(n),
            SimpleVob::alloc(n),
        );
        for (id, w) in words.iter().enumerate() {
            if w.is_empty() || !w.iter().all(|b| matches!(b, b'"' | b'}' | b']')) {
                continue;
            }
            if w[0] == b'"' {
                quote_first.allow_token(id as u32);
            } else {
                bracket_first.allow_token(id as u32);
            }
        }
        for &id in eos_ids.iter().filter(|&&id| (id as usize) < n) {
            eos.allow_token(id);
        }
        Self {
            eos,
            quote_first,
            bracket_first,
        }
    }

    /// Preference of token `id` (higher is better) with a string open or not, or `None` when it closes
    /// nothing.
    fn rank(&self, id: u32, in_string: bool) -> Option<u8> {
        if self.eos.is_allowed(id) {
            Some(2)
        } else if self.quote_first.is_allowed(id) {
            Some(u8::from(in_string))
        } else if self.bracket_first.is_allowed(id) {
            Some(u8::from(!in_string))
        } else {
            None
        }
    }
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
        let closers = Closers::new(&words, &tok.eos_ids);
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
            closers: Arc::new(closers),
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
            return Ok(Constraint::new(matcher, self.closers(grammar)));
        }
        drop(cache);
        let parser = self
            .factory
            .create_parser(grammar.top_level())
            .map_err(|e| GrammarError::Invalid(e.to_string()))?;
        let mut matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(GrammarError::Invalid(e));
        }
        // Some grammars compile and only fail when asked for a first token: one with no finite answer (a schema
        // that is nothing but a reference to itself). Asking here makes that a refusal before the request runs.
        if let Err(e) = matcher.compute_mask() {
            let reason = e.to_string();
            let reason = reason.lines().next().unwrap_or_default();
            return Err(GrammarError::Invalid(format!(
                "it allows no first token, so no answer ({reason}); a schema that is only a reference to itself does this"
            )));
        }
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_ENTRIES {
            cache.pop_front();
        }
        cache.push_back((key, matcher.deep_clone()));
        Ok(Constraint::new(matcher, self.closers(grammar)))
    }

    /// The closing tokens for answers under `grammar`, when they are steered to close near the budget's end.
    fn closers(&self, grammar: &Grammar) -> Option<Arc<Closers>> {
        grammar.steer_to_close().then(|| self.closers.clone())
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
    /// Whether the text so far ends inside a JSON string (and just after a backslash there).
    in_string: bool,
    escaped: bool,
    /// Tokens that end or close something, when answers under this grammar are steered to close.
    closers: Option<Arc<Closers>>,
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
        Self {
            matcher: self.matcher.deep_clone(),
            in_string: self.in_string,
            escaped: self.escaped,
            closers: self.closers.clone(),
        }
    }
}

impl Constraint {
    fn new(matcher: Matcher, closers: Option<Arc<Closers>>) -> Self {
        Self {
            matcher,
            in_string: false,
            escaped: false,
            closers,
        }
    }

    /// Follows the quotes and escapes of a token's bytes.
    fn track_strings(&mut self, token: u32) {
        let Ok(env) = self.matcher.tok_env() else {
            return;
        };
        let bytes = env.tok_trie().token(token);
        if bytes.first() == Some(&TokTrie::SPECIAL_TOKEN_MARKER) {
            return;
        }
        for &b in bytes {
            match (self.in_string, self.escaped, b) {
                (true, true, _) => self.escaped = false,
                (true, false, b'\\') => self.escaped = true,
                (true, false, b'"') => self.in_string = false,
                (false, _, b'"') => self.in_string = true,
                _ => {}
            }
        }
    }

    /// The allowed token that best brings the answer to an end — EOS where the grammar is complete, else a
    /// closing quote, else a bracket (see `Closers`), the likeliest of its rank; `None` when nothing allowed
    /// closes anything here.
    pub fn closing_pick(&mut self, logits: &[f32]) -> Result<Option<u32>, GrammarError> {
        let Some(closers) = self.closers.clone() else {
            return Ok(None);
        };
        let mask = self.mask()?;
        let in_string = self.in_string;
        let mut best: Option<(u32, u8, f32)> = None;
        mask.iter_set_entries(|i| {
            if let Some(rank) = closers.rank(i as u32, in_string) {
                let l = logits.get(i).copied().unwrap_or(f32::NEG_INFINITY);
                if best.is_none_or(|(_, r, b)| (rank, l) > (r, b)) {
                    best = Some((i as u32, rank, l));
                }
            }
        });
        Ok(best.map(|(id, ..)| id))
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
            .map_err(|e| GrammarError::Invalid(e.to_string()))?;
        self.track_strings(token);
        Ok(())
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
