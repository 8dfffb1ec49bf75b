//! GGUF files: metadata, tensors as [`Weights`], the decoder hyper-parameters of each supported family as
//! llama.cpp reads them, and the embedded tokenizer and chat template.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::QTensor;
use candle_core::Device;

mod layout;

pub use layout::read_content;

use super::{invalid, LoadOptions, Loaded};
use crate::model::decoder::{check_shape, Decoder, DecoderConfig, Label, LongRope};
use crate::model::linear::Activation;
use crate::model::weights::{Weight, Weights};
use crate::model::{CausalLm, ModelError};
use crate::tokenizer::{gguf::from_gguf, TextTokenizer};

/// GGUF `general.architecture` values rill runs.
pub const ARCHITECTURES: &[&str] = &[
    "llama", "mistral", "smollm", "qwen2", "qwen3", "phi3", "gemma", "gemma2", "gemma3",
];

/// An open GGUF file: its parsed header and a reader for tensor data.
pub struct GgufFile {
    pub path: PathBuf,
    pub content: Content,
    reader: BufReader<File>,
    progress: indicatif::ProgressBar,
    device: Device,
}

impl GgufFile {
    pub fn open(path: &Path, device: &Device) -> Result<Self, ModelError> {
        let io = |source| ModelError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut reader = BufReader::new(File::open(path).map_err(io)?);
        let content = layout::read_content(&mut reader).map_err(|e| invalid(path, e))?;
        let progress = super::progress_bar(content.tensor_infos.len() as u64, "loading tensors");
        Ok(Self {
            path: path.to_path_buf(),
            content,
            reader,
            progress,
            device: device.clone(),
        })
    }

    /// A metadata value, or an error naming the missing key.
    pub fn meta(&self, key: &str) -> Result<&Value, ModelError> {
        self.content
            .metadata
            .get(key)
            .ok_or_else(|| invalid(&self.path, format!("missing metadata `{key}`")))
    }

    pub fn meta_u32(&self, key: &str) -> Result<u32, ModelError> {
        self.meta(key)?.to_u32().map_err(|e| invalid(&self.path, e))
    }

    pub fn meta_f32(&self, key: &str) -> Result<f32, ModelError> {
        self.meta(key)?.to_f32().map_err(|e| invalid(&self.path, e))
    }

    pub fn meta_str(&self, key: &str) -> Option<&str> {
        self.content
            .metadata
            .get(key)
            .and_then(|v| v.to_string().ok())
            .map(String::as_str)
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// Reads one tensor onto `device`.
    pub fn tensor(&mut self, name: &str, device: &Device) -> Result<Arc<QTensor>, ModelError> {
        let t = self
            .content
            .tensor(&mut self.reader, name, device)
            .map_err(|e| invalid(&self.path, e))?;
        self.progress.inc(1);
        Ok(Arc::new(t))
    }

    /// Ends the progress bar.
    pub fn finish(&self) {
        self.progress.finish_and_clear();
    }
}

impl Weights for GgufFile {
    fn get(&mut self, name: &str) -> Result<Weight, ModelError> {
        let dev = self.device.clone();
        Ok(Weight::Quant(self.tensor(name, &dev)?))
    }

    fn has(&self, name: &str) -> bool {
        self.has_tensor(name)
    }

    fn device(&self) -> &Device {
        &self.device
    }
}

/// Loads a GGUF model: its decoder, and the tokenizer from `tokenizer.json` beside it or else from metadata.
pub fn load(
    file: &Path,
    tok_json: Option<&Path>,
    name: &str,
    device: &Device,
    opts: &LoadOptions,
) -> Result<Loaded, ModelError> {
    let mut g = GgufFile::open(file, device)?;
    let arch = g.meta_str("general.architecture").unwrap_or("").to_string();
    if !ARCHITECTURES.contains(&arch.as_str()) {
        return Err(ModelError::Unsupported(format!(
            "{}: GGUF architecture `{arch}` (rill runs {})",
            file.display(),
            ARCHITECTURES.join(", ")
        )));
    }
    let tokenizer = match tok_json {
        Some(t) => TextTokenizer::from_file(t, None),
        None => from_gguf(&g.content.metadata),
    }
    .map_err(|e| invalid(file, e))?;
    let template = g.meta_str("tokenizer.chat_template").map(str::to_string);
    let chat = super::chat_template(template, &tokenizer, file)?;
    let mut cfg = decoder_config(&g, &arch)?;
    cfg.long_rope = long_rope(&mut g, &arch, cfg.context)?;
    // Checked with the LongRoPE factors (finite, positive, one per frequency), then as served.
    let cfg = cfg
        .checked()
        .map(|c| c.serving(opts.ctx_size))
        .and_then(DecoderConfig::checked)
        .map_err(|reason| invalid(file, reason))?;
    let label = Label {
        name: name.to_string(),
        quantization: quant_name(&g),
        n_params: count_params(&g),
    };
    let model = Decoder::load(cfg, &mut g, label).map_err(super::in_file(file))?;
    g.finish();
    let model: Box<dyn CausalLm> = Box::new(model);
    Ok(Loaded {
        model,
        tokenizer,
        chat,
    })
}

/// Phi-3's LongRoPE as llama.cpp's converter stores it: the `rope_factors_short` / `rope_factors_long`
/// tensors, `rope.scaling.original_context_length` and `rope.scaling.attn_factor`; `None` without the tensors.
fn long_rope(g: &mut GgufFile, arch: &str, context: usize) -> Result<Option<LongRope>, ModelError> {
    let (short, long) = ("rope_factors_short.weight", "rope_factors_long.weight");
    if !g.has_tensor(short) && !g.has_tensor(long) {
        return Ok(None);
    }
    let device = g.device().clone();
    let mut factors = |name: &str| -> Result<Vec<f32>, ModelError> {
        Ok(g.get(name)?.to_f32(&device)?.flatten_all()?.to_vec1()?)
    };
    let (short, long) = (factors(short)?, factors(long)?);
    let original = g
        .meta_u32(&format!("{arch}.rope.scaling.original_context_length"))
        .map_err(|_| {
            invalid(
                &g.path,
                "LongRoPE factors without `rope.scaling.original_context_length`",
            )
        })? as usize;
    let attn_factor = g
        .meta_f32(&format!("{arch}.rope.scaling.attn_factor"))
        .unwrap_or_else(|_| {
            LongRope::default_attn_factor(context as f64 / original.max(1) as f64, original)
        });
    Ok(Some(LongRope {
        short,
        long,
        original,
        attn_factor,
    }))
}

/// The decoder hyper-parameters of `arch` from metadata, as llama.cpp reads them.
fn decoder_config(g: &GgufFile, arch: &str) -> Result<DecoderConfig, ModelError> {
    let key = |k: &str| format!("{arch}.{k}");
    let u = |k: &str| g.meta_u32(&key(k)).map(|v| v as usize);
    let f = |k: &str| g.meta_f32(&key(k)).ok();
    let n_heads = u("attention.head_count")?;
    let dim = u("embedding_length")?;
    let n_layers = u("block_count")?;
    let head_dim = u("attention.key_length")
        .or_else(|_| u("rope.dimension_count"))
        .unwrap_or(dim / n_heads.max(1));
    let n_kv_heads = u("attention.head_count_kv").unwrap_or(n_heads);
    check_shape(n_layers, n_heads, n_kv_heads, head_dim)
        .map_err(|reason| invalid(&g.path, reason))?;
    let gemma = arch.starts_with("gemma");
    // Which layers slide, as llama.cpp sets its pattern: gemma2 every other layer from the first, gemma3 five
    // layers of every six. Other families' windows are ignored by llama.cpp, and so here.
    let period = match arch {
        "gemma2" => 2,
        "gemma3" => 6,
        _ => 0,
    };
    let sliding: Vec<bool> = (0..n_layers)
        .map(|i| period > 0 && i % period < period - 1)
        .collect();
    let big_gemma = (arch == "gemma2" && n_layers == 46) || (arch == "gemma3" && n_layers == 62);
    let attn_scale = if big_gemma {
        1.0 / ((dim / n_heads.max(1)) as f32).sqrt()
    } else {
        1.0 / (head_dim as f32).sqrt()
    };
    let rope_linear = match g.meta_str(&key("rope.scaling.type")) {
        Some("linear") => f("rope.scaling.factor").unwrap_or(1.0),
        Some("none") | None => 1.0,
        Some(other) => {
            return Err(ModelError::Unsupported(format!(
                "{}: rope scaling `{other}`",
                g.path.display()
            )))
        }
    };
    DecoderConfig {
        arch: arch.to_string(),
        n_layers,
        n_heads,
        n_kv_heads,
        head_dim,
        context: u("context_length").unwrap_or(4096),
        rms_eps: f("attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
        rope_base: f("rope.freq_base").unwrap_or(10_000.0),
        rope_base_local: (arch == "gemma3").then_some(10_000.0),
        rope_linear,
        rope_neox: !matches!(arch, "llama" | "mistral" | "smollm"),
        sliding_window: if period > 0 {
            u("attention.sliding_window").ok()
        } else {
            None
        },
        sliding,
        attn_scale,
        attn_softcap: f("attn_logit_softcapping").filter(|_| arch == "gemma2"),
        final_softcap: f("final_logit_softcapping").filter(|_| arch == "gemma2"),
        embed_scale: gemma.then(|| (dim as f32).sqrt()),
        act: if gemma {
            Activation::GeluTanh
        } else {
            Activation::Silu
        },
        rope_freqs: None,
        long_rope: None,
        rope_attn_factor: 1.0,
    }
    .checked()
    .map_err(|reason| invalid(&g.path, reason))
}

/// The most common weight type among the 2-D tensors, e.g. `Q4_K`.
fn quant_name(g: &GgufFile) -> String {
    let mut counts = std::collections::HashMap::new();
    for t in g
        .content
        .tensor_infos
        .values()
        .filter(|t| t.shape.rank() == 2)
    {
        *counts
            .entry(format!("{:?}", t.ggml_dtype))
            .or_insert(0usize) += t.shape.elem_count();
    }
    counts
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|(k, _)| k)
        .unwrap_or_default()
}

fn count_params(g: &GgufFile) -> usize {
    g.content
        .tensor_infos
        .values()
        .map(|t| t.shape.elem_count())
        .sum()
}
