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

#[test]
fn team_steps_give_the_bits_of_fork_join_steps() {
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
