//! HuggingFace folders: `config.json`, safetensors weights (one file or shards), `tokenizer.json`,
//! `tokenizer_config.json` and `generation_config.json`. GPT-2 has its own model; every llama-family
//! `model_type` becomes a [`Decoder`], its tensor names mapped onto GGUF's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device};
use serde_json::Value;

use super::resolve::read_json;
use super::{invalid, LoadOptions, Loaded, WeightDtype};
use crate::model::decoder::{check_shape, Decoder, DecoderConfig, Label};
use crate::model::gpt2::Gpt2;
use crate::model::linear::{Activation, GPU_F32_MAX_PARAMS};
use crate::model::weights::{Weight, Weights};
use crate::model::{dtype_label, CausalLm, ModelError};
use crate::tokenizer::{ChatTemplate, TextTokenizer};

mod rope;
use rope::{rope, RopeSettings};

/// `model_type` values rill runs from safetensors.
pub const MODEL_TYPES: &[&str] = &[
    "gpt2",
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "phi3",
    "gemma",
    "gemma2",
    "gemma3",
    "gemma3_text",
];

/// Loads a HuggingFace folder.
pub fn load(
    dir: &Path,
    weights: &[PathBuf],
    name: &str,
    device: &Device,
    opts: &LoadOptions,
) -> Result<Loaded, ModelError> {
    let config_path = dir.join("config.json");
    let config = read_json(&config_path)?;
    let model_type = config
        .get("model_type")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !MODEL_TYPES.contains(&model_type) {
        return Err(ModelError::Unsupported(format!(
            "{}: model_type `{model_type}` (rill runs {})",
            config_path.display(),
            MODEL_TYPES.join(", ")
        )));
    }
    let (tokenizer, chat) = tokenizer_and_template(dir, &config)?;
    let model: Box<dyn CausalLm> = if model_type == "gpt2" {
        let stored = stored_dtype(weights)?;
        let keep = |values| matrix_dtype(opts.dtype, device.is_cpu(), stored, values);
        let gpt2 =
            Gpt2::load(&config_path, weights, name, device, &keep).map_err(super::in_file(dir))?;
        Box::new(gpt2.serving(opts.ctx_size)?)
    } else {
        // Multimodal checkpoints keep the text model's settings in `text_config`.
        let text = config.get("text_config").unwrap_or(&config);
        let cfg = decoder_config(
            &Json {
                v: text,
                path: &config_path,
            },
            model_type,
        )?
        .serving(opts.ctx_size)
        .checked()
        .map_err(|reason| invalid(&config_path, reason))?;
        let sandwich = matches!(cfg.arch.as_str(), "gemma2" | "gemma3");
        let mut w = SafeWeights::open(
            weights,
            device,
            cfg.arch.starts_with("gemma"),
            sandwich,
            opts.dtype,
        )?;
        let label = Label {
            name: name.to_string(),
            quantization: w.dtype_name(),
            n_params: w.n_params(),
        };
        Box::new(Decoder::load(cfg, &mut w, label).map_err(super::in_file(dir))?)
    };
    Ok(Loaded {
        model,
        tokenizer,
        chat,
    })
}

/// `tokenizer.json` with `tokenizer_config.json`'s settings, EOS ids from `config.json` and
/// `generation_config.json`, and the chat template.
fn tokenizer_and_template(
    dir: &Path,
    config: &Value,
) -> Result<(TextTokenizer, ChatTemplate), ModelError> {
    let optional = |f: &str| {
        Some(dir.join(f))
            .filter(|p| p.exists())
            .map(|p| read_json(&p))
            .transpose()
    };
    let tok_config = optional("tokenizer_config.json")?;
    let generation = optional("generation_config.json")?;
    let tok_path = dir.join("tokenizer.json");
    let mut tokenizer = TextTokenizer::from_file(&tok_path, tok_config.as_ref())
        .map_err(|e| invalid(&tok_path, e))?;
    for id in eos_ids(Some(config))
        .into_iter()
        .chain(eos_ids(generation.as_ref()))
    {
        if !tokenizer.eos_ids.contains(&id) {
            tokenizer.eos_ids.push(id);
        }
    }
    // A template that does not parse is named by the file it came from.
    let (template, template_file) = match tok_config
        .as_ref()
        .and_then(ChatTemplate::source_from_config)
    {
        Some(t) => (Some(t), dir.join("tokenizer_config.json")),
        None => {
            let file = dir.join("chat_template.jinja");
            (std::fs::read_to_string(&file).ok(), file)
        }
    };
    let chat = super::chat_template(template, &tokenizer, &template_file)?;
    Ok((tokenizer, chat))
}

/// `eos_token_id`: a number or a list.
fn eos_ids(config: Option<&Value>) -> Vec<u32> {
    match config.and_then(|c| c.get("eos_token_id")) {
        Some(Value::Number(n)) => n.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|n| n.as_u64().map(|n| n as u32))
            .collect(),
        _ => vec![],
    }
}

/// A `config.json` object with typed lookups whose errors name the file and the field.
struct Json<'a> {
    v: &'a Value,
    path: &'a Path,
}

impl Json<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.v.get(key).filter(|v| !v.is_null())
    }

    fn usize(&self, key: &str) -> Result<usize, ModelError> {
        self.opt_usize(key)?
            .ok_or_else(|| invalid(self.path, format!("missing `{key}`")))
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>, ModelError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(|n| Some(n as usize))
                .ok_or_else(|| invalid(self.path, format!("`{key}` is not a whole number: {v}"))),
        }
    }

    fn opt_f32(&self, key: &str) -> Result<Option<f32>, ModelError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(|n| Some(n as f32))
                .ok_or_else(|| invalid(self.path, format!("`{key}` is not a number: {v}"))),
        }
    }

    fn opt_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    fn sub<'b>(&'b self, key: &str) -> Option<Json<'b>> {
        self.get(key)
            .filter(|v| v.is_object())
            .map(|v| Json { v, path: self.path })
    }
}

/// The decoder hyper-parameters of a llama-family `config.json`, as transformers reads them.
fn decoder_config(c: &Json<'_>, model_type: &str) -> Result<DecoderConfig, ModelError> {
    let arch = match model_type {
        "gemma3_text" => "gemma3",
        other => other,
    };
    let gemma = arch.starts_with("gemma");
    let hidden = c.usize("hidden_size")?;
    let n_layers = c.usize("num_hidden_layers")?;
    let n_heads = c.usize("num_attention_heads")?;
    let head_dim = match c.opt_usize("head_dim")? {
        Some(d) => d,
        None => hidden / n_heads.max(1),
    };
    let n_kv_heads = c.opt_usize("num_key_value_heads")?.unwrap_or(n_heads);
    check_shape(n_layers, n_heads, n_kv_heads, head_dim)
        .map_err(|reason| invalid(c.path, reason))?;
    if c.opt_f32("partial_rotary_factor")?
        .is_some_and(|f| f != 1.0)
    {
        return Err(ModelError::Unsupported(format!(
            "{}: partial rotary embeddings",
            c.path.display()
        )));
    }
    let context = c.opt_usize("max_position_embeddings")?.unwrap_or(4096);
    let RopeSettings {
        base: rope_base,
        local_base: rope_base_local,
        linear: rope_linear,
        freqs: rope_freqs,
        long: long_rope,
    } = rope(c, head_dim, gemma, context)?;
    let sliding_window = c.opt_usize("sliding_window")?;
    let sliding = sliding_layers(c, arch, n_layers, sliding_window.is_some())?;
    let act_name = c
        .opt_str("hidden_activation")
        .or(c.opt_str("hidden_act"))
        .unwrap_or("silu");
    let act = match act_name {
        "silu" | "swish" => Activation::Silu,
        "gelu_pytorch_tanh" | "gelu_tanh" | "gelu_new" => Activation::GeluTanh,
        other => {
            return Err(ModelError::Unsupported(format!(
                "{}: activation `{other}`",
                c.path.display()
            )))
        }
    };
    let attn_scale = match c.opt_f32("query_pre_attn_scalar")? {
        Some(s) if gemma => 1.0 / s.sqrt(),
        _ => 1.0 / (head_dim as f32).sqrt(),
    };
    DecoderConfig {
        arch: arch.to_string(),
        n_layers,
        n_heads,
        n_kv_heads,
        head_dim,
        context,
        rms_eps: c.opt_f32("rms_norm_eps")?.unwrap_or(1e-6),
        rope_base,
        rope_base_local,
        rope_linear,
        rope_neox: true,
        sliding_window: sliding_window.filter(|_| sliding.iter().any(|&s| s)),
        sliding,
        attn_scale,
        attn_softcap: c.opt_f32("attn_logit_softcapping")?.filter(|_| gemma),
        final_softcap: c.opt_f32("final_logit_softcapping")?.filter(|_| gemma),
        embed_scale: gemma.then(|| (hidden as f64).sqrt() as f32),
        act,
        rope_freqs,
        long_rope,
        rope_attn_factor: 1.0,
    }
    .checked()
    .map_err(|reason| invalid(c.path, reason))
}

/// Which layers use the sliding window: transformers 5's `layer_types` when present, else each family's rule.
fn sliding_layers(
    c: &Json<'_>,
    arch: &str,
    n_layers: usize,
    has_window: bool,
) -> Result<Vec<bool>, ModelError> {
    if let Some(types) = c.get("layer_types").and_then(Value::as_array) {
        if types.len() != n_layers {
            return Err(invalid(
                c.path,
                format!("{} layer_types for {n_layers} layers", types.len()),
            ));
        }
        return Ok(types
            .iter()
            .map(|t| t.as_str() == Some("sliding_attention"))
            .collect());
    }
    let pattern = c.opt_usize("sliding_window_pattern")?.unwrap_or(6).max(1);
    let use_window = c
        .get("use_sliding_window")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    Ok((0..n_layers)
        .map(|i| {
            has_window
                && match arch {
                    "gemma2" => i % 2 == 0,
                    "gemma3" => (i + 1) % pattern != 0,
                    "mistral" | "phi3" => true,
                    "qwen2" | "qwen3" => use_window,
                    _ => false,
                }
        })
        .collect())
}

/// What a matrix stored as `stored`, of `values` values, is kept as under `--dtype`, on the CPU or a GPU.
/// `f32`, `f16` and `bf16` convert. `auto` keeps a checkpoint's f16 and bf16 on the CPU, whose kernels read them as they
/// are; on a GPU it keeps them for matrices above [`GPU_F32_MAX_PARAMS`] (the bytes read decide a large model's
/// speed, and half of them fit where f32 would not) and widens smaller ones to f32 (a small model's step is
/// bound by launches, and f32 saves converting activations).
fn matrix_dtype(choice: WeightDtype, on_cpu: bool, stored: DType, values: usize) -> DType {
    match (choice, stored) {
        (WeightDtype::F16, _) => DType::F16,
        (WeightDtype::Bf16, _) => DType::BF16,
        (WeightDtype::Auto, own @ (DType::F16 | DType::BF16))
            if on_cpu || values > GPU_F32_MAX_PARAMS =>
        {
            own
        }
        _ => DType::F32,
    }
}

/// Maps a checkpoint's safetensors files.
fn open_safetensors(files: &[PathBuf]) -> Result<MmapedSafetensors, ModelError> {
    // SAFETY: the files are mapped read-only and not modified while they are mapped.
    unsafe { MmapedSafetensors::multi(files) }.map_err(|e| ModelError::Invalid {
        path: files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        reason: e.to_string(),
    })
}

/// The type that most values have, of `(type, values)` pairs (f32 when there are none).
fn dominant(pairs: impl Iterator<Item = (DType, usize)>) -> DType {
    let mut counts: HashMap<DType, usize> = HashMap::new();
    for (dtype, n) in pairs {
        *counts.entry(dtype).or_default() += n;
    }
    counts
        .into_iter()
        .max_by_key(|&(_, n)| n)
        .map_or(DType::F32, |(k, _)| k)
}

/// The type most of a checkpoint's values are stored in.
fn stored_dtype(files: &[PathBuf]) -> Result<DType, ModelError> {
    let st = open_safetensors(files)?;
    Ok(dominant(st.tensors().into_iter().filter_map(|(_, t)| {
        let values = t.shape().iter().product::<usize>();
        DType::try_from(t.dtype()).ok().map(|d| (d, values))
    })))
}

/// Safetensors tensors served under GGUF names.
struct SafeWeights {
    st: MmapedSafetensors,
    /// What matrices become (norms and vectors are always f32).
    dtype: WeightDtype,
    /// GGUF name → safetensors name.
    names: HashMap<String, String>,
    device: Device,
    /// Gemma stores norm weights as `w` for `x·(1 + w)`: add the 1 at load, as llama.cpp's converter does.
    norm_shift: bool,
}

impl SafeWeights {
    /// `sandwich`: the family norms each branch's input and output (gemma2, gemma3).
    fn open(
        files: &[PathBuf],
        device: &Device,
        norm_shift: bool,
        sandwich: bool,
        dtype: WeightDtype,
    ) -> Result<Self, ModelError> {
        let st = open_safetensors(files)?;
        let names = st
            .tensors()
            .into_iter()
            .filter_map(|(hf, _)| gguf_name(&hf, sandwich).map(|g| (g, hf)))
            .collect();
        if dtype == WeightDtype::F16
            && st
                .tensors()
                .iter()
                .any(|(_, t)| matches!(DType::try_from(t.dtype()), Ok(DType::BF16 | DType::F32)))
        {
            tracing::warn!(
                "--dtype f16 narrows a checkpoint stored wider: weights beyond f16's range become infinite"
            );
        }
        Ok(Self {
            st,
            dtype,
            names,
            device: device.clone(),
            norm_shift,
        })
    }

    /// The type most of the matrices' values are kept in, e.g. `BF16`.
    fn dtype_name(&self) -> String {
        let kept = self.st.tensors().into_iter().filter_map(|(_, t)| {
            let (Ok(stored), [_, _]) = (DType::try_from(t.dtype()), t.shape()) else {
                return None;
            };
            let values = t.shape().iter().product::<usize>();
            let on_cpu = self.device.is_cpu();
            Some((matrix_dtype(self.dtype, on_cpu, stored, values), values))
        });
        dtype_label(dominant(kept))
    }

    fn n_params(&self) -> usize {
        self.st
            .tensors()
            .iter()
            .map(|(_, t)| t.shape().iter().product::<usize>())
            .sum()
    }
}

impl Weights for SafeWeights {
    fn get(&mut self, name: &str) -> Result<Weight, ModelError> {
        let hf = self.names.get(name).ok_or_else(|| {
            ModelError::Unsupported(format!("no safetensors tensor maps to `{name}`"))
        })?;
        let t = self.st.load(hf, &self.device)?;
        if t.rank() != 2 || name.ends_with("norm.weight") {
            let t = t.to_dtype(DType::F32)?;
            return Ok(Weight::Dense(
                if self.norm_shift && name.ends_with("norm.weight") {
                    (t + 1.0)?
                } else {
                    t
                },
            ));
        }
        let kept = matrix_dtype(self.dtype, self.device.is_cpu(), t.dtype(), t.elem_count());
        Ok(Weight::Dense(t.to_dtype(kept)?))
    }

    fn has(&self, name: &str) -> bool {
        self.names.contains_key(name)
    }

    fn device(&self) -> &Device {
        &self.device
    }
}

/// The GGUF name of a HuggingFace tensor name, for the tensors the decoder reads (others: `None`).
/// `sandwich`: the family has pre- and post-feed-forward norms, so `post_attention_layernorm` is the
/// attention branch's output norm rather than the MLP's input norm.
fn gguf_name(hf: &str, sandwich: bool) -> Option<String> {
    if matches!(hf, "lm_head.weight" | "language_model.lm_head.weight") {
        return Some("output.weight".into());
    }
    let rest = ["model.language_model.", "language_model.model.", "model."]
        .iter()
        .find_map(|p| hf.strip_prefix(p))?;
    match rest {
        "embed_tokens.weight" => return Some("token_embd.weight".into()),
        "norm.weight" => return Some("output_norm.weight".into()),
        _ => {}
    }
    let rest = rest.strip_prefix("layers.")?;
    let (layer, tail) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, kind) = tail.rsplit_once('.')?;
    let module = match module {
        "input_layernorm" => "attn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.qkv_proj" => "attn_qkv",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "post_attention_layernorm" if sandwich => "post_attention_norm",
        "post_attention_layernorm" | "pre_feedforward_layernorm" => "ffn_norm",
        "post_feedforward_layernorm" => "post_ffw_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" | "mlp.gate_up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{module}.{kind}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--dtype auto` keeps half types on the CPU and for large matrices on a GPU; small GPU matrices, f32
    /// checkpoints and explicit choices behave as the choice says.
    #[test]
    fn matrices_are_kept_as_the_choice_device_and_size_say() {
        use WeightDtype as W;
        let (small, large) = (GPU_F32_MAX_PARAMS, GPU_F32_MAX_PARAMS + 1);
        let cases = [
            (W::Auto, true, DType::BF16, small, DType::BF16),
            (W::Auto, true, DType::F16, large, DType::F16),
            (W::Auto, true, DType::F32, large, DType::F32),
            (W::Auto, false, DType::BF16, small, DType::F32),
            (W::Auto, false, DType::BF16, large, DType::BF16),
            (W::Auto, false, DType::F16, large, DType::F16),
            (W::Auto, false, DType::F32, large, DType::F32),
            (W::F32, false, DType::BF16, large, DType::F32),
            (W::F32, true, DType::F16, small, DType::F32),
            (W::Bf16, false, DType::F32, small, DType::BF16),
            (W::F16, true, DType::BF16, small, DType::F16),
        ];
        for (choice, on_cpu, stored, values, want) in cases {
            assert_eq!(
                matrix_dtype(choice, on_cpu, stored, values),
                want,
                "{choice:?} on_cpu={on_cpu} {stored:?} {values}"
            );
        }
    }

    #[test]
    fn maps_huggingface_names_onto_gguf_names() {
        let cases = [
            (
                "model.embed_tokens.weight",
                false,
                Some("token_embd.weight"),
            ),
            ("lm_head.weight", false, Some("output.weight")),
            ("model.norm.weight", false, Some("output_norm.weight")),
            (
                "model.layers.3.self_attn.q_proj.bias",
                false,
                Some("blk.3.attn_q.bias"),
            ),
            (
                "model.layers.0.post_attention_layernorm.weight",
                false,
                Some("blk.0.ffn_norm.weight"),
            ),
            (
                "model.layers.0.post_attention_layernorm.weight",
                true,
                Some("blk.0.post_attention_norm.weight"),
            ),
            (
                "model.layers.1.pre_feedforward_layernorm.weight",
                true,
                Some("blk.1.ffn_norm.weight"),
            ),
            (
                "model.layers.2.mlp.gate_up_proj.weight",
                false,
                Some("blk.2.ffn_up.weight"),
            ),
            (
                "model.language_model.layers.2.self_attn.k_norm.weight",
                true,
                Some("blk.2.attn_k_norm.weight"),
            ),
            ("model.layers.2.self_attn.rotary_emb.inv_freq", false, None),
            ("vision_tower.encoder.weight", false, None),
        ];
        for (hf, gemma, want) in cases {
            assert_eq!(gguf_name(hf, gemma).as_deref(), want, "{hf}");
        }
    }
}
