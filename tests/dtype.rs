//! `--dtype` on a safetensors checkpoint: a bf16 or f16 checkpoint kept in its own type (the default on the
//! CPU) gives exactly the logits of the same checkpoint widened to f32 (the dense kernel widens each weight as it
//! loads it, which is exact); converting an f32 checkpoint to f16 or bf16 stays close to it.

mod common;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use rill::load::{self, LoadOptions, ModelLocator, WeightDtype};
use rill::model::{CausalLm, SeqStep};

/// `models/<model>` with its weights stored as `dtype`, in a fresh temporary folder.
fn converted_copy(model: &str, dtype: DType) -> common::TempDir {
    let src = common::model_path(model);
    let dir = common::TempDir::new(&format!("dtype-{}-{dtype:?}", model.replace('/', "-")));
    for f in std::fs::read_dir(&src).unwrap() {
        let f = f.unwrap().path();
        if f.extension().is_some_and(|e| e == "safetensors") {
            let tensors = candle_core::safetensors::load(&f, &Device::Cpu).unwrap();
            let tensors: std::collections::HashMap<String, Tensor> = tensors
                .into_iter()
                .map(|(k, t)| (k, t.to_dtype(dtype).unwrap()))
                .collect();
            candle_core::safetensors::save(&tensors, dir.join(f.file_name().unwrap())).unwrap();
        } else {
            std::fs::copy(&f, dir.join(f.file_name().unwrap())).unwrap();
        }
    }
    dir
}

fn load_as(dir: &Path, dtype: WeightDtype) -> load::Loaded {
    let locator = ModelLocator {
        models_dir: dir.to_path_buf(),
        hub_cache: dir.to_path_buf(),
        offline: true,
    };
    let source = locator.resolve(dir.to_str().unwrap()).unwrap();
    let opts = LoadOptions {
        dtype,
        ..Default::default()
    };
    load::load_with(&source, "llama", &Device::Cpu, &opts).unwrap()
}

/// The logits after a prompt in one chunk and after three more tokens one at a time.
fn logits(model: &dyn CausalLm) -> Vec<Vec<f32>> {
    let mut cache = model.new_cache();
    let mut out = Vec::new();
    for step in [&[15496u32, 11, 995, 0][..], &[464], &[2068], &[7586]] {
        let l = model
            .forward(&mut [SeqStep::new(step, &mut cache)])
            .unwrap();
        out.push(l.squeeze(0).unwrap().to_vec1::<f32>().unwrap());
    }
    out
}

fn bits(v: &[Vec<f32>]) -> Vec<u32> {
    v.iter().flatten().map(|x| x.to_bits()).collect()
}

/// Untied (llama) and tied (qwen2: the output head is the embedding table, kept once in its own type).
#[test]
fn half_checkpoints_kept_half_give_the_bits_of_f32() {
    for (family, dtype) in [
        ("arch/llama", DType::BF16),
        ("arch/llama", DType::F16),
        ("arch/qwen2", DType::BF16),
        ("tiny-gpt2", DType::BF16),
        ("tiny-gpt2", DType::F16),
    ] {
        let dir = converted_copy(family, dtype);
        let kept = load_as(&dir, WeightDtype::Auto);
        let wide = load_as(&dir, WeightDtype::F32);
        let label = format!("{dtype:?}").to_uppercase();
        assert_eq!(kept.model.info().quantization, label);
        assert_eq!(wide.model.info().quantization, "F32");
        assert_eq!(
            bits(&logits(kept.model.as_ref())),
            bits(&logits(wide.model.as_ref())),
            "{family} {dtype:?}"
        );
    }
}

/// The largest difference between two runs' logits, as a fraction of the largest logit of `want`.
fn worst(got: &[Vec<f32>], want: &[Vec<f32>]) -> f32 {
    let scale = want.iter().flatten().fold(0f32, |m, x| m.max(x.abs()));
    got.iter()
        .flatten()
        .zip(want.iter().flatten())
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max)
        / scale
}

/// Tolerances of [`worst`]: a few units in the last place of each half type (f16 keeps 11 significant bits,
/// bf16 8).
const HALF_TOLERANCES: [(WeightDtype, &str, f32); 2] = [
    (WeightDtype::F16, "F16", 0.01),
    (WeightDtype::Bf16, "BF16", 0.04),
];

#[test]
fn converting_an_f32_checkpoint_stays_close() {
    for model in ["arch/llama", "tiny-gpt2"] {
        let dir = common::model_path(model);
        let want = logits(load_as(&dir, WeightDtype::Auto).model.as_ref());
        for (dtype, label, tol) in HALF_TOLERANCES {
            let m = load_as(&dir, dtype);
            assert_eq!(m.model.info().quantization, label);
            let worst = worst(&logits(m.model.as_ref()), &want);
            assert!(
                worst > 0.0 && worst < tol,
                "{model} {label}: largest logit change {worst} of the largest logit"
            );
            eprintln!("{model} {label}: largest logit change {worst} of the largest logit");
        }
    }
}

/// candle's matrix product (the GPU's path) with weights kept in f16 or bf16: the activations are rounded to
/// the weight's type and the product comes back as f32, close to the f32 weights' logits. It runs in a child
/// process (`RILL_CANDLE_F32=1` is read at load and would change the other tests of this binary).
#[test]
fn candle_products_of_half_weights_stay_close() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "candle_products_in_this_process",
            "--ignored",
            "--nocapture",
        ])
        .env("RILL_CANDLE_F32", "1")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("1 passed"), "{text}");
}

#[test]
#[ignore = "run by candle_products_of_half_weights_stay_close with RILL_CANDLE_F32=1"]
fn candle_products_in_this_process() {
    assert!(std::env::var_os("RILL_CANDLE_F32").is_some());
    for model in ["arch/llama", "tiny-gpt2"] {
        let dir = common::model_path(model);
        let want = logits(load_as(&dir, WeightDtype::F32).model.as_ref());
        for (dtype, label, tol) in HALF_TOLERANCES {
            let worst = worst(&logits(load_as(&dir, dtype).model.as_ref()), &want);
            assert!(
                worst > 0.0 && worst < tol,
                "{model} {label}: largest logit change {worst} of the largest logit"
            );
            eprintln!("candle {model} {label}: largest logit change {worst} of the largest logit");
        }
    }
}
