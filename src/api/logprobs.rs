//! Log probabilities on the wire, shared by the dialects: request validation, and the
//! `{token, logprob, bytes, top_logprobs}` entry that OpenAI chat and Ollama both use. The values are the
//! model's own distribution (`log_softmax` of the raw logits), before any sampling transform.

use serde_json::{json, Value};

use crate::api::error::ApiError;
use crate::engine::logprobs::{Logprobs, TokenLogprob};

/// A token's text for display: its bytes as UTF-8, with U+FFFD for a partial character (the exact bytes go
/// in `bytes`).
pub fn token_text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Checks a count of alternatives: an integer from 0 to `max` (the server's `--max-logprobs`, 20 by
/// default as OpenAI allows).
pub fn top_count(name: &str, v: Option<i64>, max: usize) -> Result<usize, ApiError> {
    match v {
        None => Ok(0),
        Some(n) if n >= 0 && n as u64 <= max as u64 => Ok(n as usize),
        Some(n) => Err(ApiError::bad_request(format!(
            "`{name}` must be between 0 and {max}, got {n}"
        ))),
    }
}

/// A token's text on the wire: its text, or `token_id:<id>` when the request asked for ids (vLLM's
/// `return_tokens_as_token_ids`, which keeps tokens with equal text apart).
pub fn token_label(id: u32, bytes: &[u8], as_ids: bool) -> String {
    if as_ids {
        format!("token_id:{id}")
    } else {
        token_text(bytes)
    }
}

/// `{token, logprob, bytes}` of one token.
pub fn token_json(t: &TokenLogprob) -> Value {
    json!({ "token": token_text(&t.bytes), "logprob": t.logprob, "bytes": t.bytes })
}

/// One position's entry: the chosen token with its `top_logprobs` list (empty when none were asked for).
pub fn entry_json(lp: &Logprobs) -> Value {
    let mut v = token_json(&lp.chosen);
    v["top_logprobs"] = lp.top.iter().map(token_json).collect();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_entries() {
        assert_eq!(top_count("top_logprobs", None, 20).unwrap(), 0);
        assert_eq!(top_count("top_logprobs", Some(20), 20).unwrap(), 20);
        assert_eq!(top_count("top_logprobs", Some(500), 1000).unwrap(), 500);
        for bad in [-1, 21, i64::MAX, i64::MIN] {
            let e = top_count("top_logprobs", Some(bad), 20)
                .unwrap_err()
                .to_string();
            assert!(e.contains("between 0 and 20"), "{e}");
        }
        assert_eq!(token_label(7, b"hi", true), "token_id:7");
        assert_eq!(token_label(7, b"hi", false), "hi");
        let t = |id, logprob: f32, bytes: &[u8]| TokenLogprob {
            id,
            logprob,
            bytes: bytes.to_vec(),
        };
        let lp = Logprobs {
            chosen: t(1, -0.5, b" hi"),
            top: vec![t(1, -0.5, b" hi"), t(2, -1.25, &[0xE2, 0x82])],
        };
        assert_eq!(
            entry_json(&lp),
            json!({"token": " hi", "logprob": -0.5, "bytes": [32, 104, 105], "top_logprobs": [
                {"token": " hi", "logprob": -0.5, "bytes": [32, 104, 105]},
                {"token": "\u{FFFD}", "logprob": -1.25, "bytes": [226, 130]},
            ]})
        );
    }
}
