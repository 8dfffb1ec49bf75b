//! Incremental detokenization properties on real byte-level BPE vocabularies (GPT-2 and SmolLM2's GGUF):
//! streamed text equals the one-shot decode for any token sequence, and valid UTF-8 text never shows U+FFFD
//! mid-stream, whatever the split of its characters across tokens.

mod common;

use std::sync::OnceLock;

use common::model_path;
use proptest::prelude::*;
use rill::load::gguf::GgufFile;
use rill::tokenizer::{gguf::from_gguf, IncrementalDecoder, TextTokenizer};

fn gpt2() -> &'static TextTokenizer {
    static T: OnceLock<TextTokenizer> = OnceLock::new();
    T.get_or_init(|| {
        TextTokenizer::from_file(&model_path("gpt2-tokenizer/tokenizer.json"), None).unwrap()
    })
}

fn smollm2() -> &'static TextTokenizer {
    static T: OnceLock<TextTokenizer> = OnceLock::new();
    T.get_or_init(|| {
        from_gguf(
            &GgufFile::open(
                &model_path("smollm2/SmolLM2-135M-Instruct-Q4_1.gguf"),
                &candle_core::Device::Cpu,
            )
            .unwrap()
            .content
            .metadata,
        )
        .unwrap()
    })
}

/// Streams `ids` through a fresh decoder; returns every delta.
fn stream(tok: &TextTokenizer, ids: &[u32]) -> Vec<String> {
    let mut d = IncrementalDecoder::new(true);
    let mut out: Vec<String> = ids.iter().map(|&id| d.push(tok, id).unwrap()).collect();
    out.push(d.flush(tok).unwrap());
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Any id sequence, even one that spells invalid UTF-8: the stream adds up to the one-shot decode, less
    /// the replacement characters at its very end (bytes of a character the sequence never completed).
    #[test]
    fn streamed_equals_one_shot_for_any_ids(ids in proptest::collection::vec(0u32..50_256, 1..40)) {
        let tok = gpt2();
        let whole = tok.decode(&ids, true).unwrap();
        prop_assert_eq!(stream(tok, &ids).concat(), whole.trim_end_matches('\u{FFFD}'));
    }

    /// Valid text with multi-byte characters: no delta contains U+FFFD, and the stream is the text itself.
    #[test]
    fn valid_utf8_never_streams_a_replacement_char(text in "([a-z ]{0,4}[東京日本語の首都🚀🗼👩‍💻éü€]{1,3}){1,8}") {
        for tok in [gpt2(), smollm2()] {
            let ids = tok.encode(&text).unwrap();
            let deltas = stream(tok, &ids);
            prop_assert!(deltas.iter().all(|d| !d.contains('\u{FFFD}')), "{:?}", deltas);
            prop_assert_eq!(deltas.concat(), text.clone());
        }
    }
}

#[test]
fn text_is_emitted_as_soon_as_it_is_complete() {
    // Spaces, punctuation and CJK come out on the token that completes them, with no lag.
    let tok = gpt2();
    let text = "Hi, 東京! ok";
    let ids = tok.encode(text).unwrap();
    let deltas = stream(tok, &ids);
    assert_eq!(
        deltas.last().unwrap(),
        "",
        "everything was emitted before the flush: {deltas:?}"
    );
    let mut shown = String::new();
    for (i, d) in deltas.iter().enumerate().take(ids.len()) {
        shown.push_str(d);
        let whole = tok.decode(&ids[..=i], true).unwrap();
        // What is shown is the longest complete-character prefix of what the tokens so far spell.
        assert_eq!(shown, whole.trim_end_matches('\u{FFFD}'), "after token {i}");
    }
}

/// A sequence cut in the middle of a character (a token limit inside an emoji): the complete text is all that
/// comes out, with no U+FFFD for the bytes that never completed.
#[test]
fn an_unfinished_character_at_the_end_is_dropped() {
    for tok in [gpt2(), smollm2()] {
        let ids = tok.encode("ok 🎉🐍").unwrap();
        let cut = (1..ids.len())
            .find(|&n| tok.decode(&ids[..n], true).unwrap().ends_with('\u{FFFD}'))
            .expect("some prefix ends inside a character");
        let shown = stream(tok, &ids[..cut]).concat();
        assert_eq!(
            shown,
            tok.decode(&ids[..cut], true)
                .unwrap()
                .trim_end_matches('\u{FFFD}')
        );
        assert!(
            !shown.contains('\u{FFFD}') && shown.starts_with("ok"),
            "{shown:?}"
        );
    }
}
