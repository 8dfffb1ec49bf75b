//! Team steps (`rill::pool::team`: every thread runs the whole step, sections shared, no thread waiting on
//! another that lost its CPU) give exactly the logits of fork-join steps, on every family's special parts:
//! biases (qwen2), q/k norms (qwen3), fused QKV and gate/up (phi3), soft caps, post-norms and GeGLU (gemma2),
//! dense float weights, K-quants with padded parts, GPT-2, an f16 cache, prompt chunks and several sequences at
//! once.

mod common;

use candle_core::DType;
use rill::model::{CausalLm, SeqStep};
use rill::pool::team;

/// Every logit of a short run: a 5-token and a 3-token prompt in one step (the second wanting all its rows'
/// logits), then three decoding steps of both.
fn run(m: &dyn CausalLm, kv: DType) -> Vec<f32> {
    let (mut a, mut b) = (m.new_cache().stored_as(kv), m.new_cache().stored_as(kv));
    let mut all = Vec::new();
    let mut keep =
        |t: candle_core::Tensor| all.extend(t.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    let (pa, pb) = ([5u32, 17, 230, 9, 41], [77u32, 3, 120]);
    let mut sb = SeqStep::new(&pb, &mut b);
    sb.all_logits = true;
    keep(m.forward(&mut [SeqStep::new(&pa, &mut a), sb]).unwrap());
    for t in 0..3u32 {
        let (ta, tb) = ([11 + t], [200 + 7 * t]);
        keep(
            m.forward(&mut [SeqStep::new(&ta, &mut a), SeqStep::new(&tb, &mut b)])
                .unwrap(),
        );
    }
    all
}

/// The tests here switch team steps on and off and count them: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn team_steps_give_the_bits_of_fork_join_steps() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    rill::pool::set_threads(2);
    for (model, kv) in [
        ("arch/qwen2", DType::F32),
        ("arch/qwen2-q4_k_m.gguf", DType::F32),
        ("arch/qwen3-q4_k_m.gguf", DType::F32),
        ("arch/qwen3-f32.gguf", DType::F32),
        ("arch/phi3-q4_k_m.gguf", DType::F16),
        ("arch/gemma2-q4_k_m.gguf", DType::F32),
        ("arch/gemma3-f32.gguf", DType::F32),
        ("arch/llama-q4_k_m.gguf", DType::F16),
        ("smollm2", DType::F32),
        ("tiny-gpt2", DType::F32),
        ("tiny-gpt2", DType::F16),
    ] {
        let loaded = common::load(model);
        let m = loaded.model.as_ref();
        team::set_enabled(false);
        let before = team::steps_run();
        let fork_join = run(m, kv);
        team::set_enabled(true);
        let teamed = run(m, kv);
        let ran = team::steps_run() - before;
        if rill::pool::threads() > 1 {
            assert_eq!(ran, 4, "{model}: every step should have run as a team step");
        }
        let worst = fork_join
            .iter()
            .zip(&teamed)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(
            fork_join == teamed,
            "{model}: logits differ by up to {worst}"
        );
    }
}

/// Each sequence's tokens, the logits of the step after them, and each cache's length.
type Run = (Vec<Vec<u32>>, Vec<f32>, [usize; 2]);

/// The argmax tokens of `steps` single decode steps of two sequences, then the logits of one more step (which
/// read every cache position those steps wrote), with each sequence's cache length.
fn single_steps(m: &dyn CausalLm, kv: DType, steps: usize) -> Run {
    let (mut a, mut b) = prefilled(m, kv);
    let (mut ta, mut tb) = (11u32, 200u32);
    let mut tokens = vec![Vec::new(), Vec::new()];
    for _ in 0..steps {
        let l = m
            .forward(&mut [SeqStep::new(&[ta], &mut a), SeqStep::new(&[tb], &mut b)])
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        ta = rill::model::argmax::argmax(&l[0]) as u32;
        tb = rill::model::argmax::argmax(&l[1]) as u32;
        tokens[0].push(ta);
        tokens[1].push(tb);
    }
    let next = next_logits(m, &mut a, &mut b, ta, tb);
    (tokens, next, [a.len(), b.len()])
}

/// The same through [`CausalLm::forward_greedy`]; `None` when the model cannot run steps as one.
fn one_burst(m: &dyn CausalLm, kv: DType, steps: usize) -> Option<Run> {
    let (mut a, mut b) = prefilled(m, kv);
    let tokens = m
        .forward_greedy(
            &mut [SeqStep::new(&[11], &mut a), SeqStep::new(&[200], &mut b)],
            steps,
        )
        .unwrap()?;
    let next = next_logits(
        m,
        &mut a,
        &mut b,
        tokens[0][steps - 1],
        tokens[1][steps - 1],
    );
    Some((tokens, next, [a.len(), b.len()]))
}

fn prefilled(m: &dyn CausalLm, kv: DType) -> (rill::model::SeqCache, rill::model::SeqCache) {
    let (mut a, mut b) = (m.new_cache().stored_as(kv), m.new_cache().stored_as(kv));
    m.forward(&mut [
        SeqStep::new(&[5, 17, 230, 9, 41], &mut a),
        SeqStep::new(&[77, 3, 120], &mut b),
    ])
    .unwrap();
    (a, b)
}

fn next_logits(
    m: &dyn CausalLm,
    a: &mut rill::model::SeqCache,
    b: &mut rill::model::SeqCache,
    ta: u32,
    tb: u32,
) -> Vec<f32> {
    m.forward(&mut [SeqStep::new(&[ta], a), SeqStep::new(&[tb], b)])
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Greedy steps run as one team step give the tokens of single steps, write the same keys and values (the
/// step after them gives the same logits) and count the same positions; families that cannot (GPT-2, a
/// soft-capped output) decline without touching the caches.
#[test]
fn greedy_steps_run_as_one_give_the_tokens_of_single_steps() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    rill::pool::set_threads(2);
    team::set_enabled(true);
    for (model, kv, can) in [
        ("arch/qwen2", DType::F32, true),
        ("arch/qwen3-q4_k_m.gguf", DType::F32, true),
        ("arch/phi3-q4_k_m.gguf", DType::F16, true),
        ("arch/gemma3-f32.gguf", DType::F32, true),
        ("arch/llama-q4_k_m.gguf", DType::F16, true),
        ("smollm2", DType::F32, true),
        ("arch/gemma2-q4_k_m.gguf", DType::F32, false),
        ("tiny-gpt2", DType::F32, false),
    ] {
        let loaded = common::load(model);
        let m = loaded.model.as_ref();
        let steps = 5;
        let single = single_steps(m, kv, steps);
        match one_burst(m, kv, steps) {
            Some(burst) => {
                assert!(can, "{model}: ran steps as one");
                assert_eq!(burst.0, single.0, "{model}: tokens");
                assert_eq!(burst.2, single.2, "{model}: cache lengths");
                assert!(
                    burst.1 == single.1,
                    "{model}: the next step's logits differ"
                );
            }
            None if rill::pool::threads() > 1 => assert!(!can, "{model}: declined"),
            None => {}
        }
    }
}
