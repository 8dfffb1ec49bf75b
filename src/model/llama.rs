//! Llama-family decoder (Llama, SmolLM, Mistral-style GGUF files): RMSNorm, rotary positions, grouped-query
//! attention and a SwiGLU MLP, batched over sequences that each bring their own KV cache.

use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Tensor};

use super::gguf::GgufFile;
use super::norm::RmsNorm;
use super::qlinear::{with_f32_rows, QLinear};
use super::{
    attention, check_context, output_rows, row_spans, CausalLm, ModelError, ModelInfo, SeqCache,
    SeqStep,
};

/// Hyper-parameters read from GGUF metadata.
#[derive(Debug, Clone)]
struct Config {
    n_layers: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    rms_eps: f64,
    rope_base: f32,
    context: usize,
    /// GPT-NeoX rotary layout (pairs `i, i + d/2`) instead of interleaved pairs.
    rope_neox: bool,
}

impl Config {
    fn read(g: &GgufFile) -> Result<Self, ModelError> {
        let arch = g
            .meta_str("general.architecture")
            .unwrap_or("llama")
            .to_string();
        let key = |k: &str| format!("{arch}.{k}");
        let n_heads = g.meta_u32(&key("attention.head_count"))? as usize;
        let dim = g.meta_u32(&key("embedding_length"))? as usize;
        Self {
            n_layers: g.meta_u32(&key("block_count"))? as usize,
            n_heads,
            n_kv_heads: g
                .meta_u32(&key("attention.head_count_kv"))
                .unwrap_or(n_heads as u32) as usize,
            head_dim: g
                .meta_u32(&key("rope.dimension_count"))
                .map(|d| d as usize)
                .unwrap_or(dim / n_heads),
            rms_eps: g
                .meta_f32(&key("attention.layer_norm_rms_epsilon"))
                .unwrap_or(1e-5) as f64,
            rope_base: g.meta_f32(&key("rope.freq_base")).unwrap_or(10_000.0),
            context: g.meta_u32(&key("context_length")).unwrap_or(4096) as usize,
            rope_neox: matches!(arch.as_str(), "qwen2" | "qwen3" | "phi3" | "stablelm"),
        }
        .checked()
        .map_err(|reason| super::gguf::invalid(&g.path, reason))
    }

    /// Refuses hyper-parameters no real model has (a corrupt or hostile file) before anything is sized by
    /// them: zero or inconsistent head counts, odd head sizes, and absurd depths or contexts.
    fn checked(self) -> Result<Self, String> {
        let ok = self.n_heads > 0
            && self.n_kv_heads > 0
            && self.n_heads.is_multiple_of(self.n_kv_heads)
            && self.head_dim > 0
            && self.head_dim.is_multiple_of(2)
            && self.head_dim <= 1024
            && (1..=1024).contains(&self.n_layers)
            && (1..=MAX_CONTEXT).contains(&self.context)
            && self.rms_eps.is_finite()
            && self.rope_base.is_finite()
            && self.rope_base > 0.0;
        if ok {
            Ok(self)
        } else {
            Err(format!("implausible hyper-parameters: {self:?}"))
        }
    }
}

/// The longest context rill accepts from a model file (its rotary tables are sized by it).
const MAX_CONTEXT: usize = 1 << 20;

struct Layer {
    attn_norm: RmsNorm,
    /// Q, K and V stacked: one matmul per layer.
    wqkv: QLinear,
    wo: QLinear,
    ffn_norm: RmsNorm,
    /// Gate and up stacked, applied as SwiGLU.
    gate_up: QLinear,
    down: QLinear,
}

/// A loaded llama-family model.
pub struct Llama {
    cfg: Config,
    info: ModelInfo,
    embed: Arc<QTensor>,
    layers: Vec<Layer>,
    norm: RmsNorm,
    output: QLinear,
    cos: Tensor,
    sin: Tensor,
    /// The same tables on the host (`[positions, head_dim / 2]`, row-major), for decode rows on the CPU.
    cos_host: Vec<f32>,
    sin_host: Vec<f32>,
}

/// Architectures this file implements.
pub const ARCHITECTURES: &[&str] = &["llama", "mistral", "smollm"];

impl Llama {
    pub fn load(mut g: GgufFile, name: &str, device: &Device) -> Result<Self, ModelError> {
        let cfg = Config::read(&g)?;
        let eps = cfg.rms_eps as f32;
        let norm = |g: &mut GgufFile, n: &str| -> Result<RmsNorm, ModelError> {
            Ok(RmsNorm::new(g.tensor(n, device)?.dequantize(device)?, eps)?)
        };
        let embed = g.tensor("token_embd.weight", device)?;
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let mut w = |n: &str| g.tensor(&format!("blk.{i}.{n}.weight"), device);
            let (q, k, v) = (w("attn_q")?, w("attn_k")?, w("attn_v")?);
            let (wo, gate, up, down) = (
                w("attn_output")?,
                w("ffn_gate")?,
                w("ffn_up")?,
                w("ffn_down")?,
            );
            layers.push(Layer {
                wqkv: QLinear::fused(vec![q, k, v])?,
                wo: QLinear::new(wo)?,
                gate_up: QLinear::fused(vec![gate, up])?,
                down: QLinear::new(down)?,
                attn_norm: norm(&mut g, &format!("blk.{i}.attn_norm.weight"))?,
                ffn_norm: norm(&mut g, &format!("blk.{i}.ffn_norm.weight"))?,
            });
        }
        let norm = norm(&mut g, "output_norm.weight")?;
        // Tied embeddings: the output projection reuses the quantized embedding table as it is.
        let output_w = if g.has_tensor("output.weight") {
            g.tensor("output.weight", device)?
        } else {
            embed.clone()
        };
        let output = QLinear::new(output_w)?;
        g.finish();
        let (cos, sin) = rope_tables(cfg.head_dim, cfg.rope_base, cfg.context, device)?;
        let (cos_host, sin_host) = (cos.flatten_all()?.to_vec1()?, sin.flatten_all()?.to_vec1()?);
        let (vocab, _) = embed.shape().dims2()?;
        let info = ModelInfo {
            name: name.to_string(),
            arch: g
                .meta_str("general.architecture")
                .unwrap_or("llama")
                .to_string(),
            quantization: quant_name(&g),
            vocab_size: vocab,
            context_length: cfg.context,
            n_params: count_params(&g),
            kv_bytes_per_token: 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * 4,
        };
        Ok(Self {
            cfg,
            info,
            embed,
            layers,
            norm,
            output,
            cos,
            sin,
            cos_host,
            sin_host,
        })
    }

    /// Attention of one layer for every sequence; `xs` holds all new tokens stacked, normalized.
    fn attention(
        &self,
        layer: usize,
        xs: &Tensor,
        batch: &mut [SeqStep<'_>],
        spans: &[(usize, usize)],
    ) -> candle_core::Result<Tensor> {
        let l = &self.layers[layer];
        let qkv = l.wqkv.forward(xs)?;
        let y = if self.cos.device().is_cpu() {
            self.attention_host(layer, &qkv, batch, spans)?
        } else {
            self.attention_tensors(layer, &qkv, batch, spans)?
        };
        l.wo.forward(&y)
    }

    /// On the CPU: every row, prompt or decode, is rotated on the host at its position and attends through
    /// [`attention::attend_rows`], so each position is computed the same way whatever the batch (see there).
    fn attention_host(
        &self,
        layer: usize,
        qkv: &Tensor,
        batch: &mut [SeqStep<'_>],
        spans: &[(usize, usize)],
    ) -> candle_core::Result<Tensor> {
        let (hd, nh, nkv) = (self.cfg.head_dim, self.cfg.n_heads, self.cfg.n_kv_heads);
        let width = (nh + 2 * nkv) * hd;
        let mut rows = Vec::new();
        with_f32_rows(qkv, |all| rows = all.to_vec())?;
        let mut queries = Vec::with_capacity(spans.len());
        let mut kvs = Vec::with_capacity(spans.len());
        for (seq, &(start, len)) in batch.iter_mut().zip(spans) {
            let pos = seq.cache.len();
            let mut q = Vec::with_capacity(len * nh * hd);
            let (mut k, mut v) = (vec![0f32; len * nkv * hd], vec![0f32; len * nkv * hd]);
            for r in 0..len {
                let row = &mut rows[(start + r) * width..(start + r + 1) * width];
                let (qr, rest) = row.split_at_mut(nh * hd);
                let (kr, vr) = rest.split_at_mut(nkv * hd);
                self.rope_row(qr, pos + r);
                self.rope_row(kr, pos + r);
                q.extend_from_slice(qr);
                // The cache is `[kv_heads, positions, head_dim]`: scatter this row's heads.
                for h in 0..nkv {
                    let at = (h * len + r) * hd;
                    k[at..at + hd].copy_from_slice(&kr[h * hd..(h + 1) * hd]);
                    v[at..at + hd].copy_from_slice(&vr[h * hd..(h + 1) * hd]);
                }
            }
            let k = Tensor::from_vec(k, (nkv, len, hd), qkv.device())?;
            let v = Tensor::from_vec(v, (nkv, len, hd), qkv.device())?;
            kvs.push(seq.cache.append(layer, &k, &v)?);
            queries.push(q);
        }
        attention::attend_rows_tensor(&queries, &kvs, nh)
    }

    /// On other devices: candle's tensor ops, one sequence at a time.
    fn attention_tensors(
        &self,
        layer: usize,
        qkv: &Tensor,
        batch: &mut [SeqStep<'_>],
        spans: &[(usize, usize)],
    ) -> candle_core::Result<Tensor> {
        let (hd, nh, nkv) = (self.cfg.head_dim, self.cfg.n_heads, self.cfg.n_kv_heads);
        let (q, k, v) = (
            qkv.narrow(1, 0, nh * hd)?,
            qkv.narrow(1, nh * hd, nkv * hd)?,
            qkv.narrow(1, (nh + nkv) * hd, nkv * hd)?,
        );
        let mut parts = Vec::with_capacity(spans.len());
        for (seq, &(start, len)) in batch.iter_mut().zip(spans) {
            let pos = seq.cache.len();
            let heads = |t: &Tensor, n: usize| {
                t.narrow(0, start, len)?
                    .reshape((len, n, hd))?
                    .transpose(0, 1)
            };
            let q = self.rope(&heads(&q, nh)?, pos)?;
            let k = self.rope(&heads(&k, nkv)?, pos)?;
            let v = heads(&v, nkv)?.contiguous()?;
            let (k, v) = seq.cache.append(layer, &k, &v)?;
            parts.push(attention::causal_attention(&q, &k, &v)?);
        }
        Tensor::cat(&parts, 0)
    }

    /// Rotary position embedding, on the host, of one token's heads (`n * head_dim` values) at `pos`.
    fn rope_row(&self, x: &mut [f32], pos: usize) {
        let half = self.cfg.head_dim / 2;
        let (cos, sin) = (
            &self.cos_host[pos * half..(pos + 1) * half],
            &self.sin_host[pos * half..(pos + 1) * half],
        );
        rope_host(x, cos, sin, self.cfg.rope_neox);
    }

    /// Rotary position embedding of `x` (`[heads, len, head_dim]`) starting at absolute position `pos`.
    fn rope(&self, x: &Tensor, pos: usize) -> candle_core::Result<Tensor> {
        let len = x.dim(1)?;
        let (cos, sin) = (self.cos.narrow(0, pos, len)?, self.sin.narrow(0, pos, len)?);
        let x = x.unsqueeze(0)?.contiguous()?;
        let y = if self.cfg.rope_neox {
            candle_nn::rotary_emb::rope(&x, &cos, &sin)?
        } else {
            candle_nn::rotary_emb::rope_i(&x, &cos, &sin)?
        };
        y.squeeze(0)
    }

    fn mlp(&self, layer: usize, xs: &Tensor) -> candle_core::Result<Tensor> {
        let l = &self.layers[layer];
        l.down.forward(&l.gate_up.forward_swiglu(xs)?)
    }
}

impl CausalLm for Llama {
    fn forward(&self, batch: &mut [SeqStep<'_>]) -> Result<Tensor, ModelError> {
        check_context(batch, self.cfg.context)?;
        let spans = row_spans(batch);
        let ids: Vec<u32> = batch
            .iter()
            .flat_map(|s| s.tokens.iter().copied())
            .collect();
        let ids = Tensor::new(ids.as_slice(), self.cos.device())?;
        let mut xs = self.embed.embedding(&ids)?;
        for i in 0..self.layers.len() {
            let h = self.layers[i].attn_norm.forward(&xs)?;
            xs = (xs + self.attention(i, &h, batch, &spans)?)?;
            let h = self.layers[i].ffn_norm.forward(&xs)?;
            xs = (&xs + self.mlp(i, &h)?)?;
        }
        for (seq, &(_, len)) in batch.iter_mut().zip(&spans) {
            seq.cache.advance(len);
        }
        let last = self.norm.forward(&output_rows(&xs, batch, &spans)?)?;
        Ok(self.output.forward(&last)?.to_dtype(DType::F32)?)
    }

    fn new_cache(&self) -> SeqCache {
        SeqCache::new(self.cfg.n_layers)
    }

    fn info(&self) -> &ModelInfo {
        &self.info
    }
}

/// Rotates each head of `x` (heads of `2 * cos.len()` values) by one position's `cos`/`sin` row: pairs
/// `(2i, 2i + 1)`, or `(i, i + d/2)` in the GPT-NeoX layout; the same arithmetic as candle's `rope_i` / `rope`.
fn rope_host(x: &mut [f32], cos: &[f32], sin: &[f32], neox: bool) {
    let half = cos.len();
    for head in x.chunks_exact_mut(2 * half) {
        for i in 0..half {
            let (a, b) = if neox {
                (i, i + half)
            } else {
                (2 * i, 2 * i + 1)
            };
            let (x0, x1) = (head[a], head[b]);
            head[a] = x0 * cos[i] - x1 * sin[i];
            head[b] = x0 * sin[i] + x1 * cos[i];
        }
    }
}

/// cos/sin tables `[positions, head_dim / 2]` for rotary embeddings.
fn rope_tables(
    head_dim: usize,
    base: f32,
    positions: usize,
    dev: &Device,
) -> candle_core::Result<(Tensor, Tensor)> {
    let inv: Vec<f32> = (0..head_dim)
        .step_by(2)
        .map(|i| 1.0 / base.powf(i as f32 / head_dim as f32))
        .collect();
    let inv = Tensor::from_vec(inv, (1, head_dim / 2), dev)?;
    let t = Tensor::arange(0u32, positions as u32, dev)?
        .to_dtype(DType::F32)?
        .reshape((positions, 1))?;
    let freqs = t.matmul(&inv)?;
    Ok((freqs.cos()?, freqs.sin()?))
}

/// The most common weight type among the 2-D tensors, e.g. `Q4_1`.
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The host rotation gives candle's kernels' bits, in both pair layouts.
    #[test]
    fn host_rope_matches_candle() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let (heads, hd, pos) = (3, 8, 5);
        let (cos, sin) = rope_tables(hd, 10_000.0, 16, &dev)?;
        let x = Tensor::randn(0f32, 1.0, (1, heads, 1, hd), &dev)?;
        let (c, s) = (cos.narrow(0, pos, 1)?, sin.narrow(0, pos, 1)?);
        for neox in [false, true] {
            let want = if neox {
                candle_nn::rotary_emb::rope(&x, &c, &s)?
            } else {
                candle_nn::rotary_emb::rope_i(&x, &c, &s)?
            };
            let mut got = x.flatten_all()?.to_vec1::<f32>()?;
            let (c, s) = (
                c.flatten_all()?.to_vec1::<f32>()?,
                s.flatten_all()?.to_vec1::<f32>()?,
            );
            rope_host(&mut got, &c, &s, neox);
            assert_eq!(got, want.flatten_all()?.to_vec1::<f32>()?, "neox: {neox}");
        }
        Ok(())
    }
}
