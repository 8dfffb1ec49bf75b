//! `--dtype` on a safetensors checkpoint: a bf16 or f16 checkpoint kept in its own type (the default on the
//! CPU) gives exactly the logits of the same checkpoint widened to f32 (the dense kernel widens each weight as it
//! loads it, which is exact); converting an f32 checkpoint to f16 or bf16 stays close to it.

mod common;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use rill::load::{self, LoadOptions, ModelLocator, WeightDtype};
use rill::model::{CausalLm, SeqStep};

/// `models/arch/<family>` with its weights stored as `dtype`, in a fresh temporary folder.
fn converted_copy(family: &str, dtype: DType) -> PathBuf {
    let src = common::model_path(&format!("arch/{family}"));
    let dir = std::env::temp_dir().join(format!(
        "rill-dtype-{}-{family}-{dtype:?}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
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
        ("llama", DType::BF16),
        ("llama", DType::F16),
        ("qwen2", DType::BF16),
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
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn converting_an_f32_checkpoint_stays_close() {
    let f32_model = common::load("arch/llama");
    let want = logits(f32_model.model.as_ref());
    let dir = common::model_path("arch/llama");
    for (dtype, label, tol) in [
        (WeightDtype::F16, "F16", 0.02),
        (WeightDtype::Bf16, "BF16", 0.2),
    ] {
        let m = load_as(&dir, dtype);
        assert_eq!(m.model.info().quantization, label);
        let got = logits(m.model.as_ref());
        let worst = got
            .iter()
            .flatten()
            .zip(want.iter().flatten())
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            worst > 0.0 && worst < tol,
            "{label}: largest logit change {worst}"
        );
        eprintln!("{label}: largest logit change {worst}");
    }
}
