//! Same request, same answer: a sequence's generated ids and the bits of their log probabilities do not depend
//! on the batch it shares steps with, the prefill chunk size, a prefix-cache hit, or where a position was
//! computed (inside a prompt chunk or alone). Checked on the tiny GPT-2 fixture (f32) and on a tiny llama GGUF
//! made here (Q4_1 and Q8_0 weights through rill's own kernels, grouped-query attention, rotary positions).
//!
//! Every run is compared against a solo, uncached, unchunked run of the same request.

mod common;

use std::sync::OnceLock;

use candle_core::Device;
use common::tiny_llama::tiny_llama;
use proptest::prelude::*;
use rill::engine::{EngineConfig, EngineHandle, Event, GenRequest, SamplingParams};
use rill::load::{self, ModelSource};

/// A generated token as compared: id, logprob bits, and the alternatives' (id, logprob bits).
type Step = (u32, u32, Vec<(u32, u32)>);
/// Prompt logprob bits (`None` for the first token), then the generated steps.
type Answer = (Vec<Option<u32>>, Vec<Step>);

const TOP: usize = 5;
const VOCAB: u32 = common::tiny_llama::VOCAB;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Model {
    Gpt2,
    Llama,
}

fn start(m: Model, config: EngineConfig) -> EngineHandle {
    match m {
        Model::Gpt2 => common::engine("tiny-gpt2", config),
        Model::Llama => {
            let source = ModelSource::Gguf {
                file: tiny_llama().to_path_buf(),
                tokenizer: Some(tiny_llama().with_file_name("tokenizer.json")),
            };
            EngineHandle::start(
                move || load::load(&source, "tiny-llama", &Device::Cpu),
                config,
            )
            .unwrap()
        }
    }
}

/// The reference: one request at a time, no prefix cache, the whole prompt in one chunk.
fn solo(m: Model) -> &'static EngineHandle {
    static GPT2: OnceLock<EngineHandle> = OnceLock::new();
    static LLAMA: OnceLock<EngineHandle> = OnceLock::new();
    let config = EngineConfig {
        max_running: 1,
        prefill_chunk: 4096,
        prefix_cache_bytes: 0,
        ..EngineConfig::default()
    };
    match m {
        Model::Gpt2 => GPT2.get_or_init(|| start(m, config)),
        Model::Llama => LLAMA.get_or_init(|| start(m, config)),
    }
}

/// Engines that batch up to 8 sequences, keep a prefix cache, and prefill in chunks of 1, 3 or 7 tokens.
fn busy(m: Model, chunk: usize) -> &'static EngineHandle {
    type Cell = OnceLock<EngineHandle>;
    static ENGINES: [[Cell; 3]; 2] = [
        [Cell::new(), Cell::new(), Cell::new()],
        [Cell::new(), Cell::new(), Cell::new()],
    ];
    let (row, col) = (
        m as usize,
        [1, 3, 7].iter().position(|&c| c == chunk).unwrap(),
    );
    ENGINES[row][col].get_or_init(|| {
        start(
            m,
            EngineConfig {
                max_running: 8,
                prefill_chunk: chunk,
                ..EngineConfig::default()
            },
        )
    })
}

fn request(prompt: &[u32], tokens: usize, seed: Option<u64>, prompt_logprobs: bool) -> GenRequest {
    let sampling = match seed {
        None => SamplingParams::greedy(),
        Some(s) => SamplingParams {
            temperature: 0.9,
            top_k: 40,
            seed: Some(s),
            ..SamplingParams::default()
        },
    };
    GenRequest {
        constraint: None,
        sampling,
        max_tokens: Some(tokens),
        ignore_eos: true,
        logprobs: Some(TOP),
        prompt_logprobs: prompt_logprobs.then_some(TOP),
        ..GenRequest::new(prompt.to_vec())
    }
}

fn collect(mut events: rill::engine::EventStream) -> Answer {
    let (mut prompt, mut steps) = (Vec::new(), Vec::new());
    while let Some(ev) = events.blocking_next() {
        match ev {
            Event::Prompt(p) => {
                prompt = p
                    .iter()
                    .map(|t| t.logprobs.as_ref().map(|l| l.chosen.logprob.to_bits()))
                    .collect()
            }
            Event::Delta { tokens, .. } => {
                for t in tokens {
                    let lp = t.logprobs.expect("logprobs were asked for");
                    assert_eq!(lp.chosen.id, t.id);
                    let top = lp.top.iter().map(|a| (a.id, a.logprob.to_bits())).collect();
                    steps.push((t.id, lp.chosen.logprob.to_bits(), top));
                }
            }
            Event::Done(_) => return (prompt, steps),
            Event::Error(e) => panic!("{e}"),
        }
    }
    panic!("the stream ended without Done")
}

fn run(e: &EngineHandle, req: GenRequest) -> Answer {
    collect(e.submit(req).unwrap())
}

fn prompt_strategy() -> impl Strategy<Value = Vec<u32>> {
    prop::collection::vec(0..VOCAB - 1, 2..40)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// A request run among random companions, with a random chunk size and a warm prefix cache, gives the
    /// solo run's ids and logprob bits.
    #[test]
    fn batch_chunk_and_cache_do_not_change_the_answer(
        llama in any::<bool>(),
        prompt in prompt_strategy(),
        companions in prop::collection::vec(prompt_strategy(), 0..6),
        chunk in prop::sample::select(vec![1usize, 3, 7]),
        seed in prop::option::of(any::<u64>()),
        cached in 1usize..40,
    ) {
        let m = if llama { Model::Llama } else { Model::Gpt2 };
        let want = run(solo(m), request(&prompt, 8, seed, false));
        let e = busy(m, chunk);
        // Warm the prefix cache with a beginning of the prompt (or all of it).
        let head = &prompt[..cached.min(prompt.len())];
        run(e, request(head, 2, None, false));
        let others: Vec<_> = companions
            .iter()
            .map(|p| e.submit(request(p, 6, Some(7), false)).unwrap())
            .collect();
        let got = run(e, request(&prompt, 8, seed, false));
        others.into_iter().for_each(|o| drop(collect(o)));
        prop_assert_eq!(got, want);
    }
}

/// The tokens a sequence generates, computed one at a time in decode steps, get the same logprobs when the
/// same text is later sent as a prompt and scored by a prefill chunk (and by a cache hit on the way).
#[test]
fn generated_and_prompt_positions_agree() {
    for m in [Model::Gpt2, Model::Llama] {
        let prompt: Vec<u32> = vec![464, 2068, 7586, 21831, 18045, 625];
        let (_, steps) = run(solo(m), request(&prompt, 12, None, false));
        let mut full = prompt.clone();
        full.extend(steps.iter().map(|s| s.0));
        for e in [solo(m), busy(m, 3), busy(m, 7)] {
            let (scored, _) = run(e, request(&full, 1, None, true));
            assert_eq!(scored.len(), full.len());
            assert_eq!(scored[0], None, "the first token has no logprob");
            let generated: Vec<Option<u32>> = scored[prompt.len()..].to_vec();
            let want: Vec<Option<u32>> = steps.iter().map(|s| Some(s.1)).collect();
            assert_eq!(generated, want, "{m:?}");
        }
    }
}

/// Prompt logprobs skip the prefix cache (they need every position's logits) and still agree with a cold run.
#[test]
fn prompt_logprobs_after_a_cache_hit_are_the_cold_ones() {
    for m in [Model::Gpt2, Model::Llama] {
        let prompt: Vec<u32> = (0..30).map(|i| (i * 997 + 13) % VOCAB).collect();
        let cold = run(solo(m), request(&prompt, 4, None, true));
        let e = busy(m, 7);
        run(e, request(&prompt, 4, None, false));
        let again = run(e, request(&prompt, 4, None, true));
        assert_eq!(again, cold, "{m:?}");
        assert_eq!(cold.0.len(), prompt.len());
    }
}

/// Logprobs are log-softmax of the model's logits: the top list is sorted, holds the greedy pick first, and
/// its probabilities sum to at most one.
#[test]
fn logprobs_are_a_distribution() {
    for m in [Model::Gpt2, Model::Llama] {
        let (_, steps) = run(solo(m), request(&[464, 2068, 7586], 10, None, false));
        for (id, lp, top) in steps {
            let lp = f32::from_bits(lp);
            let top: Vec<(u32, f32)> = top.iter().map(|&(i, b)| (i, f32::from_bits(b))).collect();
            assert_eq!(top.len(), TOP);
            assert_eq!(top[0], (id, lp), "greedy picks the most likely token");
            assert!(top.windows(2).all(|w| w[0].1 >= w[1].1));
            let mass: f32 = top.iter().map(|t| t.1.exp()).sum();
            assert!(lp <= 0.0 && mass <= 1.0 + 1e-5, "{mass}");
        }
    }
}
