//! Token selection: penalties, then greedy (temperature 0) or seeded sampling with top-k, top-p and min-p.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub use super::argmax::argmax;
use super::grammar::{apply_mask, Constraint, GrammarError};

/// How to pick each next token. Defaults are neutral: no penalty, no truncation, temperature 1.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 picks the most likely token (greedy).
    pub temperature: f32,
    /// Keep the smallest set of tokens whose probability sums to at least this (1 = off).
    pub top_p: f32,
    /// Keep the k most likely tokens (0 = off).
    pub top_k: usize,
    /// Drop tokens less likely than `min_p` × the most likely one (0 = off).
    pub min_p: f32,
    /// Divides positive and multiplies negative logits of recent tokens (1 = off), as HF and llama.cpp do.
    pub repetition_penalty: f32,
    /// How many recent tokens (prompt included) the repetition penalty looks at.
    pub repeat_last_n: usize,
    /// OpenAI-style: subtracted once from every token already generated.
    pub presence_penalty: f32,
    /// OpenAI-style: subtracted per occurrence of a token already generated.
    pub frequency_penalty: f32,
    /// Same seed, same tokens, on the CPU whatever the batch, prompt chunking or prefix-cache hit (the
    /// logits are bit-identical; see `model::attention::attend_rows`); `None` draws a fresh seed.
    pub seed: Option<u64>,
    /// Added to the given tokens' logits before anything else (OpenAI's `logit_bias`; -100 bans a token).
    pub logit_bias: Vec<(u32, f32)>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            repeat_last_n: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
            logit_bias: Vec::new(),
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }

    /// Refuses values the sampler has no meaning for (the engine checks every request with it, whoever sent
    /// it): a temperature below 0, `top_p` or `min_p` outside 0..=1 (a `min_p` above 1 would drop every token),
    /// a repetition penalty of 0 or below, and anything not a number.
    pub fn check(&self) -> Result<(), OutOfRange> {
        let unit = 0.0..=1.0;
        let fields = [
            (
                "temperature",
                self.temperature,
                self.temperature >= 0.0,
                "at least 0",
            ),
            (
                "top_p",
                self.top_p,
                unit.contains(&self.top_p),
                "between 0 and 1",
            ),
            (
                "min_p",
                self.min_p,
                unit.contains(&self.min_p),
                "between 0 and 1",
            ),
            (
                "repetition_penalty",
                self.repetition_penalty,
                self.repetition_penalty > 0.0,
                "above 0",
            ),
            ("presence_penalty", self.presence_penalty, true, "a number"),
            (
                "frequency_penalty",
                self.frequency_penalty,
                true,
                "a number",
            ),
        ];
        let biases = (self.logit_bias.iter()).map(|&(_, b)| ("logit_bias", b, true, "a number"));
        match (fields.into_iter().chain(biases)).find(|&(_, v, ok, _)| !(ok && v.is_finite())) {
            Some((name, value, _, range)) => Err(OutOfRange { name, range, value }),
            None => Ok(()),
        }
    }
}

/// A sampling value outside the range [`SamplingParams::check`] allows.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("`{name}` must be {range}, got {value}")]
pub struct OutOfRange {
    pub name: &'static str,
    pub range: &'static str,
    pub value: f32,
}

/// Per-request sampler state: the parameters and the seeded generator.
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = match params.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_os_rng(),
        };
        Self { params, rng }
    }

    /// Picks the next token from `logits`; `context` is every token so far and `generated` how many of its
    /// last entries the model produced.
    /// Whether [`Self::sample`] is the plain argmax of the logits: temperature 0, no penalty and no bias.
    pub fn is_plain_argmax(&self) -> bool {
        let p = &self.params;
        p.temperature <= 0.0
            && p.logit_bias.is_empty()
            && (p.repetition_penalty == 1.0 || p.repeat_last_n == 0)
            && p.presence_penalty == 0.0
            && p.frequency_penalty == 0.0
    }

    pub fn sample(&mut self, logits: &mut [f32], context: &[u32], generated: usize) -> u32 {
        self.apply_penalties(logits, context, generated);
        self.pick(logits)
    }

    /// As [`Sampler::sample`], but only a token `constraint` allows. The cheap path first: pick as if
    /// unconstrained and keep the pick when the grammar allows it (one token checked); only a rejected pick
    /// computes the full mask and picks again among the allowed tokens. Greedily this is exactly the masked
    /// argmax; sampled, it draws from the truncated distribution restricted to the allowed tokens (rejection
    /// sampling), the same seed giving the same tokens.
    ///
    /// `closing` (the token budget is nearly spent) prefers whatever ends the answer soonest: EOS where the
    /// grammar is complete, else the likeliest allowed closing quote or bracket, so the answer still parses.
    pub fn sample_constrained(
        &mut self,
        logits: &mut [f32],
        context: &[u32],
        generated: usize,
        constraint: &mut Constraint,
        closing: bool,
    ) -> Result<u32, GrammarError> {
        self.apply_penalties(logits, context, generated);
        if closing {
            if let Some(id) = constraint.closing_pick(logits)? {
                return Ok(id);
            }
        }
        let first = self.pick(logits);
        if constraint.allows(first) {
            return Ok(first);
        }
        let mask = constraint.mask()?;
        apply_mask(&mask, logits);
        if logits.iter().all(|&l| l == f32::NEG_INFINITY) {
            return Err(GrammarError::Invalid(
                "the grammar allows no token here".into(),
            ));
        }
        Ok(self.pick(logits))
    }

    fn pick(&mut self, logits: &[f32]) -> u32 {
        let id = if self.params.temperature <= 0.0 {
            argmax(logits)
        } else {
            self.draw(logits)
        };
        id as u32
    }

    fn apply_penalties(&self, logits: &mut [f32], context: &[u32], generated: usize) {
        let p = &self.params;
        for &(t, bias) in &p.logit_bias {
            if let Some(l) = logits.get_mut(t as usize) {
                *l += bias;
            }
        }
        if p.repetition_penalty != 1.0 && p.repeat_last_n > 0 {
            let recent = &context[context.len().saturating_sub(p.repeat_last_n)..];
            let mut seen = std::collections::HashSet::new();
            for &t in recent.iter().filter(|t| seen.insert(**t)) {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 {
                        *l / p.repetition_penalty
                    } else {
                        *l * p.repetition_penalty
                    };
                }
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            let mut counts = std::collections::HashMap::new();
            for &t in &context[context.len() - generated..] {
                *counts.entry(t).or_insert(0u32) += 1;
            }
            for (t, n) in counts {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l -= p.presence_penalty + p.frequency_penalty * n as f32;
                }
            }
        }
    }

    /// Samples from the temperature-scaled distribution after top-k, top-p and min-p truncation, in that
    /// order (as llama.cpp and HF do). Only as many candidates are sorted as top-p needs: a full sort of a 50k
    /// vocabulary per token would cost more than the model's forward pass at small sizes.
    fn draw(&mut self, logits: &[f32]) -> usize {
        let p = &self.params;
        // A +inf logit (an overflowing model) wins outright, as it does greedily; with no finite logit at all
        // there is no distribution to draw from, so take the greedy pick rather than fail.
        if let Some(i) = logits.iter().position(|&l| l == f32::INFINITY) {
            return i;
        }
        let Some(max) = super::logprobs::finite_max(logits) else {
            return argmax(logits);
        };
        let weight = |l: f32| ((l - max) / p.temperature).exp();
        let mut cand: Vec<(usize, f32)> = logits
            .iter()
            .copied()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .collect();
        if p.top_k > 0 && p.top_k < cand.len() {
            cand.select_nth_unstable_by(p.top_k - 1, by_logit);
            cand.truncate(p.top_k);
        }
        if p.top_p < 1.0 {
            let total: f32 = cand.iter().map(|c| weight(c.1)).sum();
            let keep = top_p_prefix(&mut cand, p.top_p * total, weight);
            cand.truncate(keep);
        }
        if p.min_p > 0.0 {
            // At least `min_p` times as likely as the best token: logit ≥ max + T·ln(min_p).
            let floor = max + p.temperature * p.min_p.min(1.0).ln();
            cand.retain(|c| c.1 >= floor);
        }
        let probs: Vec<f32> = cand.iter().map(|c| weight(c.1)).collect();
        let mass: f32 = probs.iter().sum();
        let mut r = self.rng.random::<f32>() * mass;
        for (c, x) in cand.iter().zip(&probs) {
            r -= x;
            if r <= 0.0 {
                return c.0;
            }
        }
        cand[cand.len() - 1].0
    }
}

/// Descending logit, then ascending id.
fn by_logit(a: &(usize, f32), b: &(usize, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// Sorts the head of `cand` until its weights reach `mass` and returns how many it takes (at least one): the
/// smallest set whose mass reaches it, the token that crosses included. Sorts 64 candidates first, then eight
/// times more until enough.
fn top_p_prefix(cand: &mut [(usize, f32)], mass: f32, weight: impl Fn(f32) -> f32) -> usize {
    let mut head = 64;
    loop {
        if head < cand.len() {
            cand.select_nth_unstable_by(head - 1, by_logit);
        }
        let head_len = head.min(cand.len());
        cand[..head_len].sort_unstable_by(by_logit);
        let mut acc = 0.0;
        for (i, c) in cand[..head_len].iter().enumerate() {
            if acc >= mass {
                return i.max(1);
            }
            acc += weight(c.1);
        }
        if head_len == cand.len() {
            return head_len.max(1);
        }
        head *= 8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![1.0, 3.0, 2.5, -1.0, 0.5]
    }

    #[test]
    fn greedy_takes_argmax() {
        let mut s = Sampler::new(SamplingParams::greedy());
        assert_eq!(s.sample(&mut logits(), &[], 0), 1);
    }

    /// Draw frequencies follow the truncated, temperature-scaled distribution.
    #[test]
    fn draws_follow_the_truncated_distribution() {
        let freq = |params: SamplingParams| {
            let mut s = Sampler::new(SamplingParams {
                seed: Some(11),
                ..params
            });
            let mut counts = [0usize; 5];
            for _ in 0..20_000 {
                counts[s.sample(&mut logits(), &[], 0) as usize] += 1;
            }
            counts.map(|c| c as f64 / 20_000.0)
        };
        let softmax = |ids: &[usize], t: f32| {
            let l = logits();
            let z: f32 = ids.iter().map(|&i| (l[i] / t).exp()).sum();
            let mut p = [0f64; 5];
            ids.iter()
                .for_each(|&i| p[i] = ((l[i] / t).exp() / z) as f64);
            p
        };
        let close = |got: [f64; 5], want: [f64; 5]| {
            got.iter().zip(&want).all(|(g, w)| (g - w).abs() < 0.015)
        };
        let plain = freq(SamplingParams::default());
        assert!(close(plain, softmax(&[0, 1, 2, 3, 4], 1.0)), "{plain:?}");
        let hot = freq(SamplingParams {
            temperature: 2.0,
            ..Default::default()
        });
        assert!(close(hot, softmax(&[0, 1, 2, 3, 4], 2.0)), "{hot:?}");
        // Probabilities 0.54, 0.33, 0.07, ...: top-p 0.6 keeps the first and the second, which crosses 0.6.
        let top_p = freq(SamplingParams {
            top_p: 0.6,
            ..Default::default()
        });
        assert!(close(top_p, softmax(&[1, 2], 1.0)), "{top_p:?}");
        let top_k = freq(SamplingParams {
            top_k: 2,
            ..Default::default()
        });
        assert!(close(top_k, softmax(&[1, 2], 1.0)), "{top_k:?}");
    }

    #[test]
    fn same_seed_same_tokens_and_different_seed_differs() {
        let run = |seed| {
            let mut s = Sampler::new(SamplingParams {
                seed: Some(seed),
                temperature: 1.5,
                ..Default::default()
            });
            (0..64)
                .map(|_| s.sample(&mut logits(), &[], 0))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    /// The incremental top-p prefix equals the one a full sort gives, also when it needs thousands of tokens.
    #[test]
    fn top_p_prefix_matches_a_full_sort() {
        for (n, top_p) in [(10, 0.5), (5000, 0.05), (5000, 0.9), (5000, 1.0)] {
            let cand: Vec<(usize, f32)> = (0..n)
                .map(|i| (i, ((i * 7919) % 1000) as f32 / 300.0))
                .collect();
            let weight = |l: f32| l.exp();
            let total: f32 = cand.iter().map(|c| weight(c.1)).sum();
            let mut sorted = cand.clone();
            sorted.sort_by(by_logit);
            let (mut acc, mut want) = (0.0, 0);
            while want < n && acc < top_p * total {
                acc += weight(sorted[want].1);
                want += 1;
            }
            let mut got = cand.clone();
            let keep = top_p_prefix(&mut got, top_p * total, weight);
            assert_eq!(keep, want.max(1), "n={n} top_p={top_p}");
            assert_eq!(got[..keep], sorted[..keep], "n={n} top_p={top_p}");
        }
    }

    #[test]
    fn logit_bias_bans_and_favours_tokens() {
        let mut s = Sampler::new(SamplingParams {
            logit_bias: vec![(1, -100.0)],
            ..SamplingParams::greedy()
        });
        assert_eq!(s.sample(&mut logits(), &[], 0), 2);
        let mut s = Sampler::new(SamplingParams {
            logit_bias: vec![(3, 5.0)],
            ..SamplingParams::greedy()
        });
        assert_eq!(s.sample(&mut logits(), &[], 0), 3); // -1 + 5 = 4 > 3
    }

    /// Degenerate logits never panic the generation thread.
    #[test]
    fn infinite_and_nan_logits_are_handled() {
        let mut s = Sampler::new(SamplingParams {
            seed: Some(1),
            ..Default::default()
        });
        assert_eq!(s.sample(&mut [f32::NAN; 5], &[], 0), 0);
        assert_eq!(s.sample(&mut [f32::NEG_INFINITY; 3], &[], 0), 0);
        assert_eq!(s.sample(&mut [0.0, f32::INFINITY, 1.0], &[], 0), 1);
        assert_eq!(s.sample(&mut [f32::NAN, 2.0, f32::NEG_INFINITY], &[], 0), 1);
    }

    #[test]
    fn top_k_one_is_greedy() {
        let mut s = Sampler::new(SamplingParams {
            top_k: 1,
            seed: Some(1),
            ..Default::default()
        });
        assert!((0..32).all(|_| s.sample(&mut logits(), &[], 0) == 1));
    }

    #[test]
    fn top_p_and_min_p_truncate() {
        let mut s = Sampler::new(SamplingParams {
            top_p: 0.5,
            seed: Some(3),
            ..Default::default()
        });
        assert!((0..64).all(|_| s.sample(&mut logits(), &[], 0) == 1));
        let mut s = Sampler::new(SamplingParams {
            min_p: 0.5,
            seed: Some(3),
            ..Default::default()
        });
        assert!((0..64).all(|_| [1, 2].contains(&s.sample(&mut logits(), &[], 0))));
    }

    #[test]
    fn penalties_push_away_from_repeats() {
        let mut s = Sampler::new(SamplingParams {
            repetition_penalty: 2.0,
            ..SamplingParams::greedy()
        });
        assert_eq!(s.sample(&mut logits(), &[1], 0), 2); // 3.0 / 2 = 1.5 < 2.5
        let mut s = Sampler::new(SamplingParams {
            frequency_penalty: 0.4,
            ..SamplingParams::greedy()
        });
        assert_eq!(s.sample(&mut logits(), &[7, 1, 1], 2), 2); // 3.0 - 0.8 = 2.2 < 2.5
        assert_eq!(s.sample(&mut logits(), &[1, 7], 1), 1); // prompt tokens are not counted
        let mut s = Sampler::new(SamplingParams {
            presence_penalty: 1.0,
            ..SamplingParams::greedy()
        });
        assert_eq!(s.sample(&mut logits(), &[1], 1), 2);
    }
}
