//! GPT-2 from HuggingFace safetensors: learned positions, pre-LayerNorm blocks, Conv1D (`[in, out]`) weights and
//! an output head tied to the token embeddings. Reads both the Hub's original key names and the
//! `transformer.`-prefixed names that `save_pretrained` writes.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{LayerNorm, VarBuilder};
use serde::Deserialize;

use super::{
    attention, check_context, last_rows, row_spans, CausalLm, ModelError, ModelInfo, SeqCache,
    SeqStep,
};

/// The fields of a GPT-2 `config.json` that the forward pass needs.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    /// Learned positions; older configs also carry the same value as `n_ctx`.
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "default_act")]
    pub activation_function: String,
}

fn default_eps() -> f64 {
    1e-5
}

fn default_act() -> String {
    "gelu_new".into()
}

/// `x · W + b` with a Conv1D weight `[in, out]`.
struct Conv1D {
    w: Tensor,
    b: Tensor,
}

impl Conv1D {
    fn load(vb: VarBuilder, inp: usize, out: usize) -> candle_core::Result<Self> {
        Ok(Self {
            w: vb.get((inp, out), "weight")?,
            b: vb.get(out, "bias")?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.matmul(&self.w)?.broadcast_add(&self.b)
    }
}

struct Block {
    ln_1: LayerNorm,
    c_attn: Conv1D,
    attn_proj: Conv1D,
    ln_2: LayerNorm,
    c_fc: Conv1D,
    mlp_proj: Conv1D,
}

/// A loaded GPT-2 model.
pub struct Gpt2 {
    cfg: Config,
    info: ModelInfo,
    wte: Tensor,
    wpe: Tensor,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    lm_head: Tensor,
    exact_gelu: bool,
}

fn layer_norm(vb: VarBuilder, d: usize, eps: f64) -> candle_core::Result<LayerNorm> {
    Ok(LayerNorm::new(
        vb.get(d, "weight")?,
        vb.get(d, "bias")?,
        eps,
    ))
}

impl Gpt2 {
    /// Loads from a folder's `config.json` and safetensors files (one file or shards).
    pub fn load(
        config: &Path,
        weights: &[PathBuf],
        name: &str,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(config).map_err(|source| ModelError::Io {
            path: config.display().to_string(),
            source,
        })?;
        let cfg: Config =
            serde_json::from_str(&text).map_err(|e| super::gguf::invalid(config, e))?;
        let progress = super::loader::progress_bar(cfg.n_layer as u64 + 2, "loading layers");
        // SAFETY: the files are mapped read-only and not modified while the model lives.
        let root = unsafe { VarBuilder::from_mmaped_safetensors(weights, DType::F32, device)? };
        let vb = if root.contains_tensor("transformer.wte.weight") {
            root.pp("transformer")
        } else {
            root.clone()
        };
        let d = cfg.n_embd;
        let wte = vb.get((cfg.vocab_size, d), "wte.weight")?;
        let wpe = vb.get((cfg.n_positions, d), "wpe.weight")?;
        progress.inc(1);
        let mut blocks = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let b = vb.pp(format!("h.{i}"));
            blocks.push(Block {
                ln_1: layer_norm(b.pp("ln_1"), d, cfg.layer_norm_epsilon)?,
                c_attn: Conv1D::load(b.pp("attn.c_attn"), d, 3 * d)?,
                attn_proj: Conv1D::load(b.pp("attn.c_proj"), d, d)?,
                ln_2: layer_norm(b.pp("ln_2"), d, cfg.layer_norm_epsilon)?,
                c_fc: Conv1D::load(b.pp("mlp.c_fc"), d, 4 * d)?,
                mlp_proj: Conv1D::load(b.pp("mlp.c_proj"), 4 * d, d)?,
            });
            progress.inc(1);
        }
        let ln_f = layer_norm(vb.pp("ln_f"), d, cfg.layer_norm_epsilon)?;
        let lm_head = if root.contains_tensor("lm_head.weight") {
            root.get((cfg.vocab_size, d), "lm_head.weight")?
        } else {
            wte.clone()
        };
        progress.finish_and_clear();
        let info = ModelInfo {
            name: name.to_string(),
            arch: "gpt2".into(),
            quantization: "F32".into(),
            vocab_size: cfg.vocab_size,
            context_length: cfg.n_positions,
            n_params: cfg.vocab_size * d + cfg.n_positions * d + cfg.n_layer * 12 * d * d,
            kv_bytes_per_token: 2 * cfg.n_layer * d * 4,
        };
        let exact_gelu = cfg.activation_function == "gelu";
        Ok(Self {
            cfg,
            info,
            wte,
            wpe,
            blocks,
            ln_f,
            lm_head,
            exact_gelu,
        })
    }

    fn embed(&self, batch: &[SeqStep<'_>]) -> candle_core::Result<Tensor> {
        let ids: Vec<u32> = batch
            .iter()
            .flat_map(|s| s.tokens.iter().copied())
            .collect();
        let pos: Vec<u32> = batch
            .iter()
            .flat_map(|s| (s.cache.len()..s.cache.len() + s.tokens.len()).map(|p| p as u32))
            .collect();
        let dev = self.wte.device();
        let tok = self
            .wte
            .index_select(&Tensor::new(ids.as_slice(), dev)?, 0)?;
        let pos = self
            .wpe
            .index_select(&Tensor::new(pos.as_slice(), dev)?, 0)?;
        tok + pos
    }

    fn attention(
        &self,
        i: usize,
        xs: &Tensor,
        batch: &mut [SeqStep<'_>],
        spans: &[(usize, usize)],
    ) -> candle_core::Result<Tensor> {
        let (d, nh) = (self.cfg.n_embd, self.cfg.n_head);
        let hd = d / nh;
        let qkv = self.blocks[i].c_attn.forward(xs)?;
        let mut outs = Vec::with_capacity(batch.len());
        for (seq, &(start, len)) in batch.iter_mut().zip(spans) {
            let part = |j: usize| -> candle_core::Result<Tensor> {
                qkv.narrow(0, start, len)?
                    .narrow(1, j * d, d)?
                    .reshape((len, nh, hd))?
                    .transpose(0, 1)?
                    .contiguous()
            };
            let (k, v) = seq.cache.append(i, &part(1)?, &part(2)?)?;
            outs.push(attention::causal_attention(&part(0)?, &k, &v)?);
        }
        self.blocks[i].attn_proj.forward(&Tensor::cat(&outs, 0)?)
    }

    fn mlp(&self, i: usize, xs: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.blocks[i].c_fc.forward(xs)?;
        let h = if self.exact_gelu {
            h.gelu_erf()?
        } else {
            h.gelu()?
        };
        self.blocks[i].mlp_proj.forward(&h)
    }
}

impl CausalLm for Gpt2 {
    fn forward(&self, batch: &mut [SeqStep<'_>]) -> Result<Tensor, ModelError> {
        check_context(batch, self.cfg.n_positions)?;
        let spans = row_spans(batch);
        let mut xs = self.embed(batch)?;
        for i in 0..self.blocks.len() {
            let h = self.blocks[i].ln_1.forward(&xs)?;
            xs = (&xs + self.attention(i, &h, batch, &spans)?)?;
            let h = self.blocks[i].ln_2.forward(&xs)?;
            xs = (&xs + self.mlp(i, &h)?)?;
        }
        for (seq, &(_, len)) in batch.iter_mut().zip(&spans) {
            seq.cache.advance(len);
        }
        let last = self.ln_f.forward(&last_rows(&xs, &spans)?)?;
        Ok(last.matmul(&self.lm_head.t()?)?)
    }

    fn new_cache(&self) -> SeqCache {
        SeqCache::new(self.cfg.n_layer)
    }

    fn info(&self) -> &ModelInfo {
        &self.info
    }
}
