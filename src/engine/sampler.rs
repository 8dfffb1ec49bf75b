//! Token selection: penalties, then greedy (temperature 0) or seeded sampling with top-k, top-p and min-p.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

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
    /// Same seed, same tokens; `None` draws a fresh seed.
    pub seed: Option<u64>,
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
}

/// A chosen token and its log-probability under the model's (penalized) distribution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampled {
    pub id: u32,
    pub logprob: f32,
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
    pub fn sample(&mut self, logits: &mut [f32], context: &[u32], generated: usize) -> Sampled {
        self.apply_penalties(logits, context, generated);
        let lse = log_sum_exp(logits);
        let id = if self.params.temperature <= 0.0 {
            argmax(logits)
        } else {
            self.draw(logits)
        };
        Sampled {
            id: id as u32,
            logprob: logits[id] - lse,
        }
    }

    fn apply_penalties(&self, logits: &mut [f32], context: &[u32], generated: usize) {
        let p = &self.params;
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

    /// Samples from the temperature-scaled distribution after top-k, min-p and top-p truncation.
    fn draw(&mut self, logits: &[f32]) -> usize {
        let p = &self.params;
        let mut cand: Vec<(usize, f32)> = logits
            .iter()
            .copied()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .collect();
        cand.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if p.top_k > 0 {
            cand.truncate(p.top_k);
        }
        let max = cand[0].1;
        let mut probs: Vec<f32> = cand
            .iter()
            .map(|(_, l)| ((l - max) / p.temperature).exp())
            .collect();
        let total: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= total);
        let mut keep = probs.len();
        if p.min_p > 0.0 {
            keep = probs
                .iter()
                .take_while(|&&x| x >= p.min_p * probs[0])
                .count()
                .max(1);
        }
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            let n = probs[..keep].iter().take_while(|&&x| {
                let below = acc < p.top_p;
                acc += x;
                below
            });
            keep = n.count().max(1);
        }
        let mass: f32 = probs[..keep].iter().sum();
        let mut r = self.rng.random::<f32>() * mass;
        for (i, x) in probs[..keep].iter().enumerate() {
            r -= x;
            if r <= 0.0 {
                return cand[i].0;
            }
        }
        cand[keep - 1].0
    }
}

/// Index of the largest logit; the first one on ties.
pub fn argmax(logits: &[f32]) -> usize {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best
}

fn log_sum_exp(logits: &[f32]) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    max + logits.iter().map(|l| (l - max).exp()).sum::<f32>().ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![1.0, 3.0, 2.5, -1.0, 0.5]
    }

    #[test]
    fn greedy_takes_argmax_and_reports_logprob() {
        let mut s = Sampler::new(SamplingParams::greedy());
        let out = s.sample(&mut logits(), &[], 0);
        assert_eq!(out.id, 1);
        let expected = 3.0 - logits().iter().map(|l: &f32| l.exp()).sum::<f32>().ln();
        assert!((out.logprob - expected).abs() < 1e-5);
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
                .map(|_| s.sample(&mut logits(), &[], 0).id)
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn top_k_one_is_greedy() {
        let mut s = Sampler::new(SamplingParams {
            top_k: 1,
            seed: Some(1),
            ..Default::default()
        });
        assert!((0..32).all(|_| s.sample(&mut logits(), &[], 0).id == 1));
    }

    #[test]
    fn top_p_and_min_p_truncate() {
        let mut s = Sampler::new(SamplingParams {
            top_p: 0.5,
            seed: Some(3),
            ..Default::default()
        });
        assert!((0..64).all(|_| s.sample(&mut logits(), &[], 0).id == 1));
        let mut s = Sampler::new(SamplingParams {
            min_p: 0.5,
            seed: Some(3),
            ..Default::default()
        });
        assert!((0..64).all(|_| [1, 2].contains(&s.sample(&mut logits(), &[], 0).id)));
    }

    #[test]
    fn penalties_push_away_from_repeats() {
        let mut s = Sampler::new(SamplingParams {
            repetition_penalty: 2.0,
            ..SamplingParams::greedy()
        });
        assert_eq!(s.sample(&mut logits(), &[1], 0).id, 2); // 3.0 / 2 = 1.5 < 2.5
        let mut s = Sampler::new(SamplingParams {
            frequency_penalty: 0.4,
            ..SamplingParams::greedy()
        });
        assert_eq!(s.sample(&mut logits(), &[7, 1, 1], 2).id, 2); // 3.0 - 0.8 = 2.2 < 2.5
        assert_eq!(s.sample(&mut logits(), &[1, 7], 1).id, 1); // prompt tokens are not counted
        let mut s = Sampler::new(SamplingParams {
            presence_penalty: 1.0,
            ..SamplingParams::greedy()
        });
        assert_eq!(s.sample(&mut logits(), &[1], 1).id, 2);
    }
}
