//! Every weight type gives a position the same bits however it is computed: inside a prompt chunk, alone after
//! its prefix, or in a batch beside another sequence. Checked on every mix of the `llama-wide` fixture (rill's
//! own kernels for Q4_1, Q4_K and Q8_0, candle's for the others; candle's Q6_K takes a different path for one
//! row than for several, which `QLinear` evens out).

mod common;

use rill::model::{CausalLm, SeqStep};

fn logits(m: &dyn CausalLm, steps: &[&[u32]]) -> Vec<f32> {
    let mut cache = m.new_cache();
    let mut last = Vec::new();
    for s in steps {
        last = m
            .forward(&mut [SeqStep::new(s, &mut cache)])
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
    }
    last
}

/// Asserts the two logit rows are the same bits, reporting only the largest difference.
fn same(a: &[f32], b: &[f32], what: &str) {
    let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(a == b, "{what}: logits differ by up to {worst}");
}

#[test]
fn every_weight_type_is_batch_and_chunk_invariant() {
    let prompt: Vec<u32> = (0..20).map(|i| (i * 997 + 13) % 50000).collect();
    let other: Vec<u32> = (0..7).map(|i| (i * 331 + 5) % 50000).collect();
    for mix in [
        "f32", "f16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q3_k_m", "q2_k", "q5_1", "q5_0", "q4_1", "q4_0",
    ] {
        let loaded = common::load(&format!("arch/llama-wide-{mix}.gguf"));
        let m = loaded.model.as_ref();
        let whole = logits(m, &[&prompt]);
        same(&whole, &logits(m, &[&prompt[..19], &prompt[19..]]), &format!("{mix}: alone after its prefix"));
        same(&whole, &logits(m, &[&prompt[..5], &prompt[5..13], &prompt[13..]]), &format!("{mix}: in chunks"));
        // Beside another sequence: both advance in one step.
        let (mut a, mut b) = (m.new_cache(), m.new_cache());
        m.forward(&mut [SeqStep::new(&prompt[..19], &mut a)]).unwrap();
        let both = m
            .forward(&mut [SeqStep::new(&prompt[19..], &mut a), SeqStep::new(&other, &mut b)])
            .unwrap();
        let first: Vec<f32> = both.get(0).unwrap().to_vec1().unwrap();
        same(&whole, &first, &format!("{mix}: in a batch"));
    }
}
