//! A tiny llama GGUF made on the fly (the Hub is out of reach and weights never go into git): 2 layers, 4
//! query and 2 kv heads of 16, SwiGLU 128, Q4_1 layers and a Q8_0 tied embedding (rill's own kernels), with
//! pseudo-random weights and GPT-2's `tokenizer.json` beside it.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};

/// GPT-2's vocabulary, which the model uses.
pub const VOCAB: u32 = 50257;

/// The file, under cargo's temporary folder for tests (`target/tmp/tiny-llama/`), written once per test
/// process. Its bytes are the same every time, so each process writes its own copy and renames it into place:
/// test binaries running at once never see half a file, and runs leave one copy behind, not one each.
pub fn tiny_llama() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tiny-llama");
        std::fs::create_dir_all(&dir).unwrap();
        let into_place = |name: &str, write: &dyn Fn(&Path)| {
            let part = dir.join(format!("{name}.{}", std::process::id()));
            write(&part);
            std::fs::rename(&part, dir.join(name)).unwrap();
        };
        into_place("tokenizer.json", &|p| {
            std::fs::copy(super::model_path("gpt2-tokenizer/tokenizer.json"), p).unwrap();
        });
        into_place("tiny-llama.gguf", &|p| write_tiny_llama(p).unwrap());
        dir.join("tiny-llama.gguf")
    })
}

pub fn write_tiny_llama(path: &Path) -> candle_core::Result<()> {
    let (dim, heads, kv_heads, ff, layers) = (64usize, 4u32, 2u32, 128usize, 2);
    let kv_dim = dim / heads as usize * kv_heads as usize;
    let mut state = 0x5EEDu64;
    let mut tensor = |shape: (usize, usize), scale: f32, dtype: GgmlDType| {
        let n = shape.0 * shape.1;
        let values: Vec<f32> = (0..n)
            .map(|_| {
                state = state.wrapping_add(0x9E3779B97F4A7C15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
                z ^= z >> 31;
                ((z >> 40) as f32 / (1u64 << 23) as f32 - 1.0) * scale
            })
            .collect();
        let t = Tensor::from_vec(values, shape, &Device::Cpu)?;
        QTensor::quantize(&t, dtype)
    };
    let norm = |n: usize| {
        QTensor::quantize(
            &Tensor::from_vec(
                (0..n).map(|i| 1.0 + (i % 7) as f32 * 0.05).collect(),
                n,
                &Device::Cpu,
            )?,
            GgmlDType::F32,
        )
    };
    let mut tensors: Vec<(String, QTensor)> = vec![(
        "token_embd.weight".into(),
        tensor((VOCAB as usize, dim), 0.5, GgmlDType::Q8_0)?,
    )];
    for l in 0..layers {
        let w = |n: &str| format!("blk.{l}.{n}.weight");
        tensors.push((w("attn_norm"), norm(dim)?));
        tensors.push((w("attn_q"), tensor((dim, dim), 0.25, GgmlDType::Q4_1)?));
        tensors.push((w("attn_k"), tensor((kv_dim, dim), 0.25, GgmlDType::Q4_1)?));
        tensors.push((w("attn_v"), tensor((kv_dim, dim), 0.25, GgmlDType::Q4_1)?));
        tensors.push((w("attn_output"), tensor((dim, dim), 0.2, GgmlDType::Q4_1)?));
        tensors.push((w("ffn_norm"), norm(dim)?));
        tensors.push((w("ffn_gate"), tensor((ff, dim), 0.2, GgmlDType::Q4_1)?));
        tensors.push((w("ffn_up"), tensor((ff, dim), 0.2, GgmlDType::Q4_1)?));
        tensors.push((w("ffn_down"), tensor((dim, ff), 0.2, GgmlDType::Q4_1)?));
    }
    tensors.push(("output_norm.weight".into(), norm(dim)?));
    use gguf_file::Value as V;
    let meta = [
        ("general.architecture", V::String("llama".into())),
        ("llama.block_count", V::U32(layers)),
        ("llama.embedding_length", V::U32(dim as u32)),
        ("llama.feed_forward_length", V::U32(ff as u32)),
        ("llama.attention.head_count", V::U32(heads)),
        ("llama.attention.head_count_kv", V::U32(kv_heads)),
        ("llama.attention.layer_norm_rms_epsilon", V::F32(1e-5)),
        ("llama.rope.freq_base", V::F32(10_000.0)),
        ("llama.context_length", V::U32(256)),
    ];
    let meta: Vec<(&str, &V)> = meta.iter().map(|(k, v)| (*k, v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut f = std::fs::File::create(path)?;
    gguf_file::write(&mut f, &meta, &tensors)
}
