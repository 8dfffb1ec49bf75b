//! The decoder-only transformer most local models are: llama (Llama 2/3, SmolLM, TinyLlama, Mistral), qwen2,
//! qwen3, phi3, gemma2 and gemma3. One block, pre-norm attention with rotary positions and grouped-query heads,
//! then a gated MLP; the families differ only in the switches of [`DecoderConfig`] and in which tensors they
//! carry, which the block finds by name:
//!
//! - `attn_q/k/v` (or one fused `attn_qkv`, phi3), with biases when present (qwen2);
//! - `attn_q_norm` / `attn_k_norm`, a per-head RMSNorm of queries and keys before rotation (qwen3, gemma3);
//! - `post_attention_norm` / `post_ffw_norm`, norms on each branch's output (gemma2, gemma3);
//! - `ffn_gate` + `ffn_up`, or one `ffn_up` holding both (phi3).
//!
//! Tensors are asked for by their GGUF names; the loading layer maps HuggingFace names onto them (and folds
//! gemma's `1 + w` norm weights, as llama.cpp's converter does). The batching plumbing (caches, rows, logit
//! rows) is shared with every architecture through [`super::attention`] and [`super::SeqStep`].

use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Tensor};
use std::sync::Arc;

use super::attention::Scoring;
use super::gpu;
use super::linear::Linear;
use super::norm::RmsNorm;
use super::rope::Rope;
use super::weights::{Weight, Weights};
use super::{
    check_context, output_rows, row_spans, CausalLm, ModelError, ModelInfo, SeqCache, SeqStep,
};

mod config;
pub(crate) use config::refuse_implausible;
pub use config::{check_shape, DecoderConfig, LongRope, MAX_CONTEXT, MAX_LAYERS};

struct Layer {
    attn_norm: RmsNorm,
    /// Q, K and V stacked: one matmul per layer.
    wqkv: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    wo: Linear,
    post_attn_norm: Option<RmsNorm>,
    ffn_norm: RmsNorm,
    /// Gate and up stacked.
    gate_up: Linear,
    down: Linear,
    post_ffn_norm: Option<RmsNorm>,
    /// Index of this layer's rotary table.
    rope: usize,
    scoring: Scoring,
}

/// The token embedding table, quantized or dense.
enum Embedding {
    Quant(Arc<QTensor>),
    Dense(Tensor),
}

/// A loaded decoder-only model.
pub struct Decoder {
    cfg: DecoderConfig,
    info: ModelInfo,
    embed: Embedding,
    /// Shared with team steps, which may outlive a call (a member that lost its CPU finishes its chunk).
    stack: Arc<Stack>,
    device: Device,
    /// Batched attention kernels, on a CUDA device.
    gpu: Option<Arc<gpu::Kernels>>,
}

/// The weights after the embedding.
struct Stack {
    layers: Vec<Layer>,
    norm: RmsNorm,
    output: Linear,
    /// Rotary tables: full-attention layers', then sliding layers' when their base differs.
    ropes: Vec<Rope>,
}

/// What the loading layer knows about the model beyond its math, for [`ModelInfo`].
pub struct Label {
    pub name: String,
    pub quantization: String,
    pub n_params: usize,
}

impl Decoder {
    /// Builds the model from `w`, tensors named as in GGUF files.
    pub fn load(cfg: DecoderConfig, w: &mut dyn Weights, label: Label) -> Result<Self, ModelError> {
        let device = w.device().clone();
        let eps = cfg.rms_eps;
        let embed = w.get("token_embd.weight")?;
        let (vocab, hidden) = embed.dims2()?;
        let freqs = match w.has("rope_freqs.weight") {
            true => Some(
                w.get("rope_freqs.weight")?
                    .to_f32(&device)?
                    .flatten_all()?
                    .to_vec1()?,
            ),
            false => cfg.rope_freqs.clone(),
        };
        let mut ropes = vec![Rope::new(
            cfg.head_dim,
            cfg.rope_base,
            cfg.rope_linear,
            freqs.as_deref(),
            cfg.context,
            cfg.rope_neox,
            &device,
        )?
        .with_attn_factor(cfg.rope_attn_factor)?];
        if let Some(local) = cfg.rope_base_local {
            ropes.push(Rope::new(
                cfg.head_dim,
                local,
                1.0,
                None,
                cfg.context,
                cfg.rope_neox,
                &device,
            )?);
        }
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let rope = if cfg.sliding[i] && ropes.len() > 1 {
                1
            } else {
                0
            };
            layers.push(load_layer(w, i, &cfg, rope)?);
        }
        // A configuration with fewer layers than its weights would run part of the model and answer garbage.
        let next = |s: &str| format!("blk.{}.{s}", cfg.n_layers);
        if ["attn_norm.weight", "attn_q.weight", "attn_qkv.weight"]
            .iter()
            .any(|s| w.has(&next(s)))
        {
            return Err(ModelError::Unsupported(format!(
                "{}: {} layers, but the weights hold more (layer {} is there)",
                cfg.arch, cfg.n_layers, cfg.n_layers
            )));
        }
        let norm = norm(w, "output_norm.weight", eps)?;
        // Tied embeddings: the output projection reuses the embedding table as it is stored.
        let output_w = if w.has("output.weight") {
            w.get("output.weight")?
        } else {
            embed.clone()
        };
        let output = Linear::new(output_w, None)?;
        let embed = match embed {
            Weight::Quant(q) => Embedding::Quant(q),
            // Kept in its own type (a tied output head shares it); looked-up rows are widened to f32.
            Weight::Dense(t) => Embedding::Dense(t),
        };
        let info = ModelInfo {
            name: label.name,
            arch: cfg.arch.clone(),
            quantization: label.quantization,
            vocab_size: vocab,
            context_length: cfg.context,
            n_params: label.n_params,
            kv_bytes_per_token: 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * 4,
        };
        let q_width = cfg.n_heads * cfg.head_dim;
        if layers[0].wqkv.out_dim() != q_width + 2 * cfg.n_kv_heads * cfg.head_dim
            || layers[0].wo.out_dim() != hidden
            || output.out_dim() != vocab
        {
            return Err(ModelError::Unsupported(format!(
                "{}: tensor shapes do not match the hyper-parameters ({} heads of {}, {} kv heads, hidden {hidden})",
                cfg.arch, cfg.n_heads, cfg.head_dim, cfg.n_kv_heads
            )));
        }
        Ok(Self {
            cfg,
            info,
            embed,
            stack: Arc::new(Stack {
                layers,
                norm,
                output,
                ropes,
            }),
            gpu: gpu::Kernels::load(&device),
            device,
        })
    }

    /// The embeddings of `ids` (a u32 tensor on the model's device), scaled where the family scales them.
    fn embed(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let xs = match &self.embed {
            Embedding::Quant(q) => q.embedding(ids)?,
            Embedding::Dense(t) => t.index_select(ids, 0)?.to_dtype(DType::F32)?,
        };
        match self.cfg.embed_scale {
            Some(s) => xs * s as f64,
            None => Ok(xs),
        }
    }

    /// Attention of one layer for every sequence; `xs` holds all new tokens stacked, normalized.
    fn attention(
        &self,
        layer: usize,
        xs: &Tensor,
        batch: &mut [SeqStep<'_>],
        spans: &[(usize, usize)],
        gpu: Option<&gpu::Step>,
    ) -> candle_core::Result<Tensor> {
        let l = &self.stack.layers[layer];
        let qkv = l.wqkv.forward(xs)?;
        let y = if self.device.is_cpu() {
            self.attention_host(layer, &qkv, batch, spans)?
        } else {
            self.attention_tensors(layer, &qkv, batch, spans, gpu)?
        };
        l.wo.forward(&y)
    }

    fn mlp(&self, layer: usize, xs: &Tensor) -> candle_core::Result<Tensor> {
        let l = &self.stack.layers[layer];
        l.down.forward(&l.gate_up.forward_glu(xs, self.cfg.act)?)
    }

    /// The logits after the embeddings `xs` of every new token: every layer, the final norm and the output
    /// head, over the rows that want logits.
    fn layers(
        &self,
        mut xs: Tensor,
        batch: &mut [SeqStep<'_>],
        spans: &[(usize, usize)],
        gpu: Option<&gpu::Step>,
    ) -> candle_core::Result<Tensor> {
        for i in 0..self.stack.layers.len() {
            xs = self.block(i, xs, batch, spans, gpu)?;
        }
        let last = self.stack.norm.forward(&output_rows(&xs, batch, spans)?)?;
        let logits = self.stack.output.forward(&last)?.to_dtype(DType::F32)?;
        match self.cfg.final_softcap {
            Some(c) => (logits / c as f64)?.tanh()? * c as f64,
            None => Ok(logits),
        }
    }

    /// The residual stream after layer `i`.
    fn block(
        &self,
        i: usize,
        xs: Tensor,
        batch: &mut [SeqStep<'_>],
        spans: &[(usize, usize)],
        gpu: Option<&gpu::Step>,
    ) -> candle_core::Result<Tensor> {
        let l = &self.stack.layers[i];
        let post = |t: Tensor, n: &Option<RmsNorm>| match n {
            Some(n) => n.forward(&t),
            None => Ok(t),
        };
        let h = l.attn_norm.forward(&xs)?;
        let h = post(self.attention(i, &h, batch, spans, gpu)?, &l.post_attn_norm)?;
        let xs = (xs + h)?;
        let h = l.ffn_norm.forward(&xs)?;
        let h = post(self.mlp(i, &h)?, &l.post_ffn_norm)?;
        xs + h
    }
}

fn norm(w: &mut dyn Weights, name: &str, eps: f32) -> Result<RmsNorm, ModelError> {
    let dev = w.device().clone();
    Ok(RmsNorm::new(w.get(name)?.to_f32(&dev)?, eps)?)
}

fn optional_norm(w: &mut dyn Weights, name: &str, eps: f32) -> Result<Option<RmsNorm>, ModelError> {
    if w.has(name) {
        norm(w, name, eps).map(Some)
    } else {
        Ok(None)
    }
}

/// Biases of `names`, if the first has one (all or none).
fn biases(w: &mut dyn Weights, names: &[String]) -> Result<Option<Vec<Tensor>>, ModelError> {
    if !w.has(&names[0]) {
        return Ok(None);
    }
    let dev = w.device().clone();
    names
        .iter()
        .map(|n| Ok(w.get(n)?.to_f32(&dev)?))
        .collect::<Result<Vec<_>, ModelError>>()
        .map(Some)
}

fn load_layer(
    w: &mut dyn Weights,
    i: usize,
    cfg: &DecoderConfig,
    rope: usize,
) -> Result<Layer, ModelError> {
    let eps = cfg.rms_eps;
    let n = |s: &str| format!("blk.{i}.{s}");
    let wqkv = if w.has(&n("attn_qkv.weight")) {
        let b = biases(w, &[n("attn_qkv.bias")])?;
        Linear::fused(vec![w.get(&n("attn_qkv.weight"))?], b)?
    } else {
        let parts = vec![
            w.get(&n("attn_q.weight"))?,
            w.get(&n("attn_k.weight"))?,
            w.get(&n("attn_v.weight"))?,
        ];
        let b = biases(w, &[n("attn_q.bias"), n("attn_k.bias"), n("attn_v.bias")])?;
        Linear::fused(parts, b)?
    };
    let gate_up = if w.has(&n("ffn_gate.weight")) {
        Linear::fused(
            vec![w.get(&n("ffn_gate.weight"))?, w.get(&n("ffn_up.weight"))?],
            None,
        )?
    } else {
        Linear::new(w.get(&n("ffn_up.weight"))?, None)?
    };
    let (q_norm, k_norm) = (
        optional_norm(w, &n("attn_q_norm.weight"), eps)?,
        optional_norm(w, &n("attn_k_norm.weight"), eps)?,
    );
    for qk in [&q_norm, &k_norm].into_iter().flatten() {
        if qk.width() != cfg.head_dim {
            return Err(ModelError::Unsupported(format!(
                "layer {i}: a q/k norm of {} for heads of {}",
                qk.width(),
                cfg.head_dim
            )));
        }
    }
    Ok(Layer {
        attn_norm: norm(w, &n("attn_norm.weight"), eps)?,
        wqkv,
        q_norm,
        k_norm,
        wo: Linear::new(w.get(&n("attn_output.weight"))?, None)?,
        post_attn_norm: optional_norm(w, &n("post_attention_norm.weight"), eps)?,
        ffn_norm: norm(w, &n("ffn_norm.weight"), eps)?,
        gate_up,
        down: Linear::new(w.get(&n("ffn_down.weight"))?, None)?,
        post_ffn_norm: optional_norm(w, &n("post_ffw_norm.weight"), eps)?,
        rope,
        scoring: cfg.scoring(i),
    })
}

mod attend;
mod team;

impl CausalLm for Decoder {
    fn forward(&self, batch: &mut [SeqStep<'_>]) -> Result<Tensor, ModelError> {
        check_context(batch, self.cfg.context)?;
        let spans = row_spans(batch);
        if let Some(logits) = team::forward(self, batch, &spans)? {
            return Ok(logits);
        }
        let ids: Vec<u32> = batch
            .iter()
            .flat_map(|s| s.tokens.iter().copied())
            .collect();
        let (nkv, hd) = (self.cfg.n_kv_heads, self.cfg.head_dim);
        let logits = match &self.gpu {
            Some(k) => {
                let replayed = k.replay(
                    batch,
                    &spans,
                    nkv,
                    hd,
                    &[&ids],
                    &mut |batch, inputs, step| {
                        let xs = self.embed(&inputs[0])?;
                        self.layers(xs, batch, &spans, Some(step))
                    },
                )?;
                match replayed {
                    Some(logits) => logits,
                    None => {
                        let step = k.begin(batch, &spans, nkv, hd)?;
                        let xs = self.embed(&Tensor::new(ids.as_slice(), &self.device)?)?;
                        self.layers(xs, batch, &spans, step.as_ref())?
                    }
                }
            }
            None => {
                let xs = self.embed(&Tensor::new(ids.as_slice(), &self.device)?)?;
                self.layers(xs, batch, &spans, None)?
            }
        };
        for (seq, &(_, len)) in batch.iter_mut().zip(&spans) {
            seq.cache.advance(len);
        }
        Ok(logits)
    }

    fn new_cache(&self) -> SeqCache {
        SeqCache::new(self.cfg.n_layers)
    }

    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn device(&self) -> Device {
        self.device.clone()
    }

    fn warm_up(&self, kv_dtype: DType) -> Result<(), ModelError> {
        super::warm_up_by_forward(self, kv_dtype)
    }
}
