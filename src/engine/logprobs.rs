//! Log probabilities of tokens under the model's own distribution: `log_softmax` of the raw logits, before any
//! sampling transform (logit bias, penalties, temperature, top-k/p, min-p), as OpenAI and vLLM report them.
//!
//! The cost is paid only by requests that ask: one pass for the maximum, one for the sum of exponentials, and
//! one selection of the `k` most likely tokens (a bounded insertion, no sort of the vocabulary).

/// One token and its log probability.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub id: u32,
    pub logprob: f32,
    /// The token's bytes (a token may hold part of a UTF-8 character).
    pub bytes: Vec<u8>,
}

/// A position's log probabilities: the token that was there (sampled, or given in the prompt) and the `k`
/// most likely ones, most likely first (ties: lower id first).
#[derive(Debug, Clone, PartialEq)]
pub struct Logprobs {
    pub chosen: TokenLogprob,
    pub top: Vec<TokenLogprob>,
}

/// The largest finite logit, if any.
pub fn finite_max(logits: &[f32]) -> Option<f32> {
    let max = logits
        .iter()
        .copied()
        .filter(|l| l.is_finite())
        .fold(f32::NEG_INFINITY, f32::max);
    (max > f32::NEG_INFINITY).then_some(max)
}

/// `log(sum(exp(logits)))`, the normalizer of `log_softmax`, over the finite logits (0 when there are none).
/// Sums in vocabulary order, so the same logits always give the same bits.
pub fn log_normalizer(logits: &[f32]) -> f32 {
    let Some(max) = finite_max(logits) else {
        return 0.0;
    };
    let sum: f64 = logits
        .iter()
        .filter(|l| l.is_finite())
        .map(|&l| (l - max).exp() as f64)
        .sum();
    max + sum.ln() as f32
}

/// The `k` largest logits as `(id, logit)`, largest first, lower id first among equals; NaN never counts.
/// Small `k` (OpenAI's at most 20) keeps a sorted list while scanning; a large one selects, then sorts `k`.
pub fn top_k(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    if k > 32 {
        return top_k_select(logits, k);
    }
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    if k == 0 {
        return best;
    }
    for (id, &l) in logits.iter().enumerate() {
        if l.is_nan() || (best.len() == k && l <= best[k - 1].1) {
            continue;
        }
        // Strictly greater than everything after the insertion point: an equal logit seen earlier (lower id)
        // stays ahead.
        let at = best.partition_point(|&(_, b)| b >= l);
        best.insert(at, (id as u32, l));
        best.truncate(k);
    }
    best
}

fn top_k_select(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let by_rank = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    let mut all: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .filter(|(_, l)| !l.is_nan())
        .map(|(i, &l)| (i as u32, l))
        .collect();
    if k < all.len() {
        all.select_nth_unstable_by(k - 1, by_rank);
        all.truncate(k);
    }
    all.sort_unstable_by(by_rank);
    all
}

/// The log probabilities of `chosen` and of the `k` most likely tokens under `logits`; `bytes` gives a token's
/// bytes.
pub fn compute(logits: &[f32], chosen: u32, k: usize, bytes: impl Fn(u32) -> Vec<u8>) -> Logprobs {
    let norm = log_normalizer(logits);
    let entry = |id: u32, logit: f32| TokenLogprob {
        id,
        logprob: logit - norm,
        bytes: bytes(id),
    };
    let chosen_logit = logits.get(chosen as usize).copied().unwrap_or(f32::NAN);
    Logprobs {
        chosen: entry(chosen, chosen_logit),
        top: top_k(logits, k)
            .into_iter()
            .map(|(id, l)| entry(id, l))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizer_matches_a_direct_softmax() {
        let logits = [1.0f32, -2.0, 0.5, 3.25, f32::NEG_INFINITY];
        let direct: f64 = logits.iter().map(|&l| (l as f64).exp()).sum::<f64>().ln();
        assert!((log_normalizer(&logits) as f64 - direct).abs() < 1e-6);
        let total: f32 = logits
            .iter()
            .map(|&l| (l - log_normalizer(&logits)).exp())
            .sum();
        assert!((total - 1.0).abs() < 1e-6);
        assert_eq!(log_normalizer(&[f32::NEG_INFINITY; 3]), 0.0);
    }

    #[test]
    fn top_k_is_a_sorted_selection_with_stable_ties() {
        let logits = [0.5f32, 2.0, f32::NAN, 2.0, -1.0, 3.0, 0.5];
        assert_eq!(top_k(&logits, 3), vec![(5, 3.0), (1, 2.0), (3, 2.0)]);
        assert_eq!(top_k(&logits, 0), vec![]);
        assert_eq!(top_k(&logits, 100).len(), 6, "NaN is never selected");
        // Against a full sort on random data.
        let mut x = 12345u64;
        let random: Vec<f32> = (0..5000)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((x >> 40) % 1000) as f32 / 37.0
            })
            .collect();
        let mut sorted: Vec<(u32, f32)> = random
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l))
            .collect();
        sorted.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        assert_eq!(top_k(&random, 20), sorted[..20]);
        assert_eq!(top_k(&random, 300), sorted[..300], "the selecting path");
    }

    #[test]
    fn compute_reports_the_chosen_token_and_the_top_list() {
        let logits = [0.0f32, 1.0, 2.0];
        let lp = compute(&logits, 0, 2, |id| vec![b'a' + id as u8]);
        let norm = log_normalizer(&logits);
        assert_eq!(lp.chosen.id, 0);
        assert_eq!(lp.chosen.logprob, -norm);
        assert_eq!(lp.chosen.bytes, b"a");
        assert_eq!(
            lp.top.iter().map(|t| (t.id, t.logprob)).collect::<Vec<_>>(),
            vec![(2, 2.0 - norm), (1, 1.0 - norm)]
        );
    }
}
