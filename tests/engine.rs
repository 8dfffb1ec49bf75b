//! Generation-thread behaviour, mostly over a scripted fake model behind the `CausalLm` trait (so each
//! property is tested alone and fast), plus seed determinism and batching invariance on the tiny GPT-2.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use common::{engine, model_path};
use rill::engine::{
    EngineConfig, EngineError, EngineHandle, Event, FinishReason, GenRequest, SamplingParams,
};
use rill::load::Loaded;
use rill::model::{CausalLm, ModelError, ModelInfo, SeqCache, SeqStep};
use rill::tokenizer::{ChatTemplate, TextTokenizer};

const VOCAB: usize = 50257;
const EOS: u32 = 50256;

/// Predicts `last token + 1` (so every sequence's stream is checkable on its own), panics on token
/// `PANIC_ON`, predicts EOS after token `EOS_AFTER`, and counts forward passes.
struct Counting {
    info: ModelInfo,
    step_delay: Duration,
    forwards: Arc<AtomicUsize>,
}

/// KV cache bytes the fake model says one position costs.
const KV_PER_TOKEN: usize = 1000;

const PANIC_ON: u32 = 666;
const EOS_AFTER: u32 = 777;

impl CausalLm for Counting {
    fn forward(&self, batch: &mut [SeqStep<'_>]) -> Result<Tensor, ModelError> {
        self.forwards.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(self.step_delay);
        let mut logits = vec![0f32; batch.len() * VOCAB];
        for (i, s) in batch.iter_mut().enumerate() {
            assert!(!s.tokens.contains(&PANIC_ON), "scripted panic");
            let last = *s.tokens.last().unwrap();
            let next = if last == EOS_AFTER {
                EOS
            } else {
                (last + 1) % EOS
            };
            logits[i * VOCAB + next as usize] = 10.0;
            s.cache.advance(s.tokens.len());
        }
        Ok(Tensor::from_vec(
            logits,
            (batch.len(), VOCAB),
            &Device::Cpu,
        )?)
    }

    fn new_cache(&self) -> SeqCache {
        SeqCache::new(1)
    }

    fn info(&self) -> &ModelInfo {
        &self.info
    }
}

fn gpt2_tokenizer() -> TextTokenizer {
    let dir = model_path("gpt2-tokenizer");
    let config =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer_config.json")).unwrap())
            .unwrap();
    TextTokenizer::from_file(&dir.join("tokenizer.json"), Some(&config)).unwrap()
}

fn fake(config: EngineConfig, step_delay: Duration) -> (EngineHandle, Arc<AtomicUsize>) {
    let forwards = Arc::new(AtomicUsize::new(0));
    let counter = forwards.clone();
    let load = move || {
        let info = ModelInfo {
            name: "fake".into(),
            arch: "fake".into(),
            quantization: "F32".into(),
            vocab_size: VOCAB,
            context_length: 100_000,
            n_params: 0,
            kv_bytes_per_token: KV_PER_TOKEN,
        };
        let model: Box<dyn CausalLm> = Box::new(Counting {
            info,
            step_delay,
            forwards: counter,
        });
        Ok(Loaded {
            model,
            tokenizer: gpt2_tokenizer(),
            chat: ChatTemplate::new(None, None, None).unwrap(),
        })
    };
    (EngineHandle::start(load, config).unwrap(), forwards)
}

fn request(prompt: Vec<u32>, max_tokens: usize) -> GenRequest {
    GenRequest {
        constraint: None,
        prompt,
        sampling: SamplingParams::greedy(),
        max_tokens: Some(max_tokens),
        stop: vec![],
        ignore_eos: false,
        logprobs: None,
        prompt_logprobs: None,
    }
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "timed out waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn dropping_the_stream_cancels_and_stops_consuming_steps() {
    let (e, forwards) = fake(EngineConfig::default(), Duration::from_millis(2));
    let mut s = e.submit(request(vec![1, 2, 3], 50_000)).unwrap();
    for _ in 0..3 {
        assert!(matches!(s.blocking_next(), Some(Event::Delta { .. })));
    }
    drop(s);
    let stats = &e.shared().stats;
    wait_until("the sequence to leave the batch", || {
        stats.running.load(Ordering::SeqCst) == 0
    });
    let steps = forwards.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        forwards.load(Ordering::SeqCst),
        steps,
        "a cancelled request kept the model stepping"
    );
    assert!(
        steps < 100,
        "{steps} steps ran for a request cancelled after 3 tokens"
    );
    assert_eq!(stats.cancelled.load(Ordering::SeqCst), 1);
}

#[test]
fn a_panicking_step_fails_its_requests_but_not_the_thread() {
    let (e, _) = fake(EngineConfig::default(), Duration::ZERO);
    let err = e
        .submit(request(vec![5, PANIC_ON], 4))
        .unwrap()
        .collect_blocking()
        .unwrap_err();
    assert!(
        matches!(&err, EngineError::Model(m) if m.contains("scripted panic")),
        "{err:?}"
    );
    let (_, tokens, done) = e
        .submit(request(vec![10], 4))
        .unwrap()
        .collect_blocking()
        .unwrap();
    assert_eq!(
        tokens.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![11, 12, 13, 14]
    );
    assert_eq!(done.finish, FinishReason::Length);
}

#[test]
fn a_full_queue_refuses_before_any_event() {
    let config = EngineConfig {
        max_running: 1,
        queue_capacity: 1,
        ..EngineConfig::default()
    };
    let (e, _) = fake(config, Duration::from_millis(2));
    let mut running = e.submit(request(vec![1], 50_000)).unwrap();
    assert!(
        matches!(running.blocking_next(), Some(Event::Delta { .. })),
        "first request is admitted"
    );
    let _waiting = e.submit(request(vec![1], 1)).unwrap();
    assert_eq!(
        e.submit(request(vec![1], 1)).err(),
        Some(EngineError::QueueFull(1))
    );
}

#[test]
fn requests_are_validated_before_they_are_queued() {
    let (e, _) = fake(EngineConfig::default(), Duration::ZERO);
    assert_eq!(
        e.submit(request(vec![], 1)).err(),
        Some(EngineError::EmptyPrompt)
    );
    assert_eq!(
        e.submit(request(vec![1; 100_000], 1)).err(),
        Some(EngineError::PromptTooLong {
            prompt: 100_000,
            context: 100_000
        })
    );
    assert_eq!(
        e.submit(request(vec![1], 0)).err(),
        Some(EngineError::NoTokens)
    );
    // Whoever builds the request (the CLI has no HTTP layer in front): values the sampler has no meaning for
    // are refused, naming the field. A `min_p` above 1 used to empty the candidates and panic the step.
    let odd = [
        ("min_p", 1.5),
        ("temperature", -1.0),
        ("temperature", f32::NAN),
        ("top_p", 2.0),
        ("repetition_penalty", 0.0),
    ];
    for (name, value) in odd {
        let mut req = request(vec![1], 1);
        let s = &mut req.sampling;
        *match name {
            "min_p" => &mut s.min_p,
            "temperature" => &mut s.temperature,
            "top_p" => &mut s.top_p,
            _ => &mut s.repetition_penalty,
        } = value;
        match e.submit(req).err() {
            Some(EngineError::Sampling(o)) => assert_eq!(o.name, name),
            other => panic!("{name} {value}: {other:?}"),
        }
    }
    // The engine still serves after the refusals.
    let (_, tokens, _) = e
        .submit(request(vec![5], 2))
        .unwrap()
        .collect_blocking()
        .unwrap();
    assert_eq!(tokens.len(), 2);
}

#[test]
fn concurrent_requests_get_their_own_streams() {
    let (e, forwards) = fake(EngineConfig::default(), Duration::from_millis(1));
    let starts = [100u32, 2000, 30_000, 45_000];
    let streams: Vec<_> = starts
        .iter()
        .map(|&s| e.submit(request(vec![s], 40)).unwrap())
        .collect();
    let handles: Vec<_> = streams
        .into_iter()
        .map(|s| std::thread::spawn(move || s.collect_blocking().unwrap()))
        .collect();
    for (start, h) in starts.iter().zip(handles) {
        let (_, tokens, done) = h.join().unwrap();
        let want: Vec<u32> = (1..=40).map(|i| start + i).collect();
        assert_eq!(tokens.iter().map(|t| t.id).collect::<Vec<_>>(), want);
        assert_eq!(done.usage.completion_tokens, 40);
    }
    // Four 40-token requests batched together need far fewer than 160 forward passes.
    assert!(
        forwards.load(Ordering::SeqCst) < 120,
        "{} forwards",
        forwards.load(Ordering::SeqCst)
    );
}

#[test]
fn a_slow_reader_loses_nothing_and_does_not_block_the_thread() {
    let config = EngineConfig {
        event_capacity: 2,
        ..EngineConfig::default()
    };
    let (e, _) = fake(config, Duration::ZERO);
    let slow = e.submit(request(vec![300], 200)).unwrap();
    // Another request completes while the first reader reads nothing.
    let (_, other, _) = e
        .submit(request(vec![9], 5))
        .unwrap()
        .collect_blocking()
        .unwrap();
    assert_eq!(other.len(), 5);
    let (text, tokens, done) = slow.collect_blocking().unwrap();
    let ids: Vec<u32> = tokens.iter().map(|t| t.id).collect();
    assert_eq!(ids, (301..=500).collect::<Vec<u32>>());
    assert_eq!(text, gpt2_tokenizer().decode(&ids, true).unwrap());
    assert_eq!(done.usage.completion_tokens, 200);
}

#[test]
fn eos_ends_generation_and_is_not_printed() {
    let (e, _) = fake(EngineConfig::default(), Duration::ZERO);
    let (text, tokens, done) = e
        .submit(request(vec![EOS_AFTER - 2], 50))
        .unwrap()
        .collect_blocking()
        .unwrap();
    assert_eq!(
        tokens.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![EOS_AFTER - 1, EOS_AFTER, EOS]
    );
    assert_eq!(done.finish, FinishReason::Eos);
    assert_eq!(
        text,
        gpt2_tokenizer()
            .decode(&[EOS_AFTER - 1, EOS_AFTER], true)
            .unwrap()
    );
    let mut req = request(vec![EOS_AFTER], 3);
    req.ignore_eos = true;
    let (_, tokens, done) = e.submit(req).unwrap().collect_blocking().unwrap();
    assert_eq!(
        tokens.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![EOS, 1, 2]
    );
    assert_eq!(done.finish, FinishReason::Length);
}

#[test]
fn stop_strings_end_generation_and_never_leak() {
    let (e, _) = fake(EngineConfig::default(), Duration::ZERO);
    let tok = gpt2_tokenizer();
    let ids: Vec<u32> = (1001..1041).collect();
    let full = tok.decode(&ids, true).unwrap();
    // A stop string that starts in the middle of one token and ends inside a later one.
    let at = full.char_indices().nth(full.chars().count() / 2).unwrap().0;
    let stop: String = full[at..].chars().take(5).collect();
    let mut req = request(vec![1000], 40);
    req.stop = vec![stop.clone()];
    let (text, _, done) = e.submit(req).unwrap().collect_blocking().unwrap();
    assert_eq!(text, &full[..full.find(&stop).unwrap()]);
    assert_eq!(done.finish, FinishReason::StopSequence(stop));
}

#[test]
fn same_seed_same_tokens_on_a_real_model() {
    let e = engine("tiny-gpt2", EngineConfig::default());
    let prompt = e.tokenizer().encode("Hello, world!").unwrap();
    let run = |seed| {
        let sampling = SamplingParams {
            temperature: 1.0,
            top_p: 0.95,
            seed: Some(seed),
            ..SamplingParams::default()
        };
        let req = GenRequest {
            constraint: None,
            prompt: prompt.clone(),
            sampling,
            max_tokens: Some(24),
            stop: vec![],
            ignore_eos: true,
            logprobs: None,
            prompt_logprobs: None,
        };
        e.submit(req)
            .unwrap()
            .collect_blocking()
            .unwrap()
            .1
            .iter()
            .map(|t| t.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(run(42), run(42));
    assert_ne!(run(42), run(43));
}

#[test]
fn batching_does_not_change_greedy_results() {
    // Without the prefix cache, so the batched runs compute their prompts as the solo runs did.
    let e = engine(
        "tiny-gpt2",
        EngineConfig {
            prefix_cache_bytes: 0,
            ..EngineConfig::default()
        },
    );
    let prompts: Vec<Vec<u32>> = [
        "Hello, world!",
        "The quick brown fox",
        "Café 東京 🚀",
        "In 1969, astronauts",
    ]
    .iter()
    .map(|p| e.tokenizer().encode(p).unwrap())
    .collect();
    let solo: Vec<_> = prompts
        .iter()
        .map(|p| {
            e.submit(common::greedy(p.clone(), 24))
                .unwrap()
                .collect_blocking()
                .unwrap()
                .1
        })
        .collect();
    let streams: Vec<_> = prompts
        .iter()
        .map(|p| e.submit(common::greedy(p.clone(), 24)).unwrap())
        .collect();
    for (alone, s) in solo.iter().zip(streams) {
        let together = s.collect_blocking().unwrap().1;
        assert_eq!(
            alone.iter().map(|t| t.id).collect::<Vec<_>>(),
            together.iter().map(|t| t.id).collect::<Vec<_>>()
        );
    }
}

/// A prompt that starts like an earlier request's tokens reuses that request's cache, and gives the greedy
/// tokens computing everything gives: a repeated prompt, and a next turn that extends a finished one.
#[test]
fn the_prefix_cache_reuses_finished_requests_without_changing_results() {
    let fresh = engine(
        "tiny-gpt2",
        EngineConfig {
            prefix_cache_bytes: 0,
            ..EngineConfig::default()
        },
    );
    let cached = engine("tiny-gpt2", EngineConfig::default());
    let run = |e: &rill::engine::EngineHandle, prompt: &[u32]| {
        let (_, tokens, c) = e
            .submit(common::greedy(prompt.to_vec(), 16))
            .unwrap()
            .collect_blocking()
            .unwrap();
        let ids: Vec<u32> = tokens.iter().map(|t| t.id).collect();
        (ids, c.usage.cached_prompt_tokens)
    };
    let first = cached.tokenizer().encode("The quick brown fox").unwrap();
    let (answer, hit) = run(&cached, &first);
    assert_eq!(hit, 0);
    assert_eq!((answer.clone(), 0), run(&fresh, &first));
    // The same prompt again: all of it but the last token, whose logits give the first new token.
    assert_eq!(run(&cached, &first), (answer.clone(), first.len() - 1));
    // The next turn: the finished request's cache holds its prompt and every generated token but the last.
    let mut next = first.clone();
    next.extend(&answer);
    next.extend(cached.tokenizer().encode(" and then").unwrap());
    let (continued, hit) = run(&cached, &next);
    assert_eq!(hit, first.len() + answer.len() - 1);
    assert_eq!(continued, run(&fresh, &next).0);
}

#[test]
fn the_kv_budget_refuses_what_cannot_fit_and_queues_what_cannot_fit_yet() {
    // Room for 10 positions: each request below needs 7 (1 prompt + 6 generated), so they cannot run together.
    let config = EngineConfig {
        kv_budget_bytes: 10 * KV_PER_TOKEN,
        ..EngineConfig::default()
    };
    let (e, _) = fake(config, Duration::from_millis(2));
    assert_eq!(
        e.submit(request(vec![1], 20)).err(),
        Some(EngineError::ExceedsKvBudget {
            needed: 21 * KV_PER_TOKEN,
            budget: 10 * KV_PER_TOKEN
        })
    );
    let first = e.submit(request(vec![100], 6)).unwrap();
    let second = e.submit(request(vec![200], 6)).unwrap();
    let timed = |mut s: rill::engine::EventStream| {
        std::thread::spawn(move || {
            let (mut first_token, mut done) = (None, None);
            while let Some(ev) = s.blocking_next() {
                match ev {
                    Event::Delta { .. } => first_token = first_token.or(Some(Instant::now())),
                    Event::Done(c) => done = Some((Instant::now(), c.usage.completion_tokens)),
                    Event::Error(err) => panic!("{err}"),
                    Event::Prompt(_) => panic!("no prompt logprobs were asked for"),
                }
            }
            (first_token.unwrap(), done.unwrap())
        })
    };
    let (a, b) = (timed(first), timed(second));
    let ((_, (a_done, a_tokens)), (b_first, (_, b_tokens))) =
        (a.join().unwrap(), b.join().unwrap());
    assert_eq!((a_tokens, b_tokens), (6, 6));
    assert!(
        b_first >= a_done,
        "the second request started before the first one freed its KV reservation"
    );
    // The thread retires a sequence just after handing out its Done, so wait for the slot to be released.
    let stats = &e.shared().stats;
    wait_until("both slots to be released", || {
        stats.running.load(Ordering::SeqCst) == 0
    });
}
