//! GPT-2 from HuggingFace safetensors: learned positions, pre-LayerNorm blocks, Conv1D (`[in, out]`) weights and
//! an output head tied to the token embeddings. Reads both the Hub's original key names and the
//! `transformer.`-prefixed names that `save_pretrained` writes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::op::{GeluErf, UnaryOpT};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

use super::decoder::{refuse_implausible, MAX_CONTEXT, MAX_LAYERS};
use super::dense::Dense;
use super::gpu;
use super::linear::float_matmul;
use super::norm::LayerNorm;
use super::qlinear::with_f32_rows;
use super::{
    attention, check_context, dtype_label, output_rows, row_spans, CausalLm, KeepAs, ModelError,
    ModelInfo, SeqCache, SeqStep,
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

/// The widest embedding rill accepts from a GPT-2 config (GPT-2 XL has 1 600).
const MAX_EMBD: usize = 1 << 16;
/// The largest vocabulary rill accepts from a GPT-2 config.
const MAX_VOCAB: usize = 1 << 24;

impl Config {
    /// Refuses values no GPT-2 checkpoint has (a corrupt or hostile config) before anything is sized by them,
    /// naming each value out of bounds.
    fn checked(self) -> Result<Self, String> {
        let mut bad = Vec::new();
        let mut need = |ok: bool, what: String| {
            if !ok {
                bad.push(what)
            }
        };
        need(
            (1..=MAX_LAYERS).contains(&self.n_layer),
            format!("{} layers (1 to {MAX_LAYERS})", self.n_layer),
        );
        need(
            (1..=MAX_EMBD).contains(&self.n_embd)
                && self.n_head > 0
                && self.n_embd.is_multiple_of(self.n_head),
            format!("width {} over {} heads", self.n_embd, self.n_head),
        );
        need(
            (1..=MAX_CONTEXT).contains(&self.n_positions),
            format!("{} positions (1 to {MAX_CONTEXT})", self.n_positions),
        );
        need(
            (1..=MAX_VOCAB).contains(&self.vocab_size),
            format!("a vocabulary of {} (1 to {MAX_VOCAB})", self.vocab_size),
        );
        // Exact GELU, or its tanh form under any of its names; any other activation would be run as the tanh
        // form and answer wrongly.
        need(
            matches!(
                self.activation_function.as_str(),
                "gelu" | "gelu_new" | "gelu_fast" | "gelu_pytorch_tanh"
            ),
            format!(
                "activation `{}` (gelu, gelu_new, gelu_fast or gelu_pytorch_tanh)",
                self.activation_function
            ),
        );
        need(
            self.layer_norm_epsilon.is_finite() && self.layer_norm_epsilon >= 0.0,
            format!("layer norm epsilon {}", self.layer_norm_epsilon),
        );
        refuse_implausible(bad).map(|()| self)
    }
}

/// `x · W + b` with a Conv1D weight `[in, out]`: rill's f32 kernel on the CPU (the weight transposed once to
/// `[out, in]`), candle's matmul on a GPU or with `RILL_CANDLE_F32=1` (for comparisons).
enum Conv1D {
    Own(Dense),
    Candle { w: Tensor, b: Tensor },
}

impl Conv1D {
    /// The weight kept as `keep` says for its number of values.
    fn load(vb: VarBuilder, inp: usize, out: usize, keep: KeepAs) -> candle_core::Result<Self> {
        let w = vb.get((inp, out), "weight")?.to_dtype(keep(inp * out))?;
        let b = vb.get(out, "bias")?;
        Ok(if own_kernels(w.device()) {
            Self::Own(Dense::from_in_out(&w, Some(&b))?)
        } else {
            Self::Candle { w, b }
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Own(d) => d.forward(x),
            Self::Candle { w, b } => float_matmul(x, &w.t()?)?.broadcast_add(b),
        }
    }
}

/// Applies `f` to every element in place.
fn map(v: &mut [f32], f: fn(f32) -> f32) {
    v.iter_mut().for_each(|v| *v = f(*v));
}

/// GPT-2's `gelu_new`, `0.5·v·(1 + tanh(u))` with `u = √(2/π)·(v + 0.044715·v³)`, in place, computed as the
/// identical `v / (1 + e^(-2u))` with a polynomial `exp` (Cephes `expf`, within 2 ulp) that the compiler
/// vectorizes; libm's `tanhf`, one element at a time, cost more than a tenth of a batched decode step.
///
/// Plain multiplies and adds only (no fused multiply-add, nothing reassociated), so every element gets the
/// same bits whichever instruction set runs it and wherever it sits in the slice.
fn gelu_new(v: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") {
            // SAFETY: the CPU has the features.
            return unsafe { gelu_new_avx512(v) };
        }
        if has!("avx2") {
            // SAFETY: as above.
            return unsafe { gelu_new_avx2(v) };
        }
    }
    gelu_new_slice(v)
}

/// [`gelu_new_slice`] compiled for AVX-512F, so that the compiler vectorizes it sixteen lanes wide.
///
/// # Safety
/// The CPU must have AVX-512F; that is the whole contract.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gelu_new_avx512(v: &mut [f32]) {
    gelu_new_slice(v)
}

/// [`gelu_new_slice`] compiled for AVX2, so that the compiler vectorizes it eight lanes wide.
///
/// # Safety
/// The CPU must have AVX2; that is the whole contract.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn gelu_new_avx2(v: &mut [f32]) {
    gelu_new_slice(v)
}

#[inline(always)]
fn gelu_new_slice(v: &mut [f32]) {
    for x in v {
        *x = gelu_new_one(*x);
    }
}

#[inline(always)]
fn gelu_new_one(v: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    // Round-to-nearest by adding and removing 1.5·2²³.
    const ROUND: f32 = 12_582_912.0;
    let u = SQRT_2_OVER_PI * (v + 0.044715 * (v * v * v));
    // e^t for t = -2u, clamped so that 2^n stays a normal float (e^88 is still finite).
    let t = (-2.0 * u).clamp(-87.0, 88.0);
    let n = (t * std::f32::consts::LOG2_E + ROUND) - ROUND;
    // ln 2 in two parts (Cody-Waite): 0.693359375 (exact in f32) and -2.12194440e-4.
    let r = (t - n * 0.693_359_4) - n * -2.121_944_4e-4;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e = (p * (r * r) + r) + 1.0;
    let scale = f32::from_bits((((n as i32) + 127) as u32) << 23);
    v / (1.0 + e * scale)
}

/// Whether the linears on `device` use rill's own f32 kernel.
fn own_kernels(device: &Device) -> bool {
    matches!(device, Device::Cpu) && std::env::var_os("RILL_CANDLE_F32").is_none()
}

/// The output head `x · Wᵀ` for a `[vocab, d]` weight (usually the token embeddings themselves, shared).
enum Head {
    Own(Dense),
    Candle(Tensor),
}

impl Head {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Own(d) => d.forward(x),
            Self::Candle(w) => float_matmul(x, w),
        }
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
    /// Shared with team steps, which may outlive a call (a member that lost its CPU finishes its chunk).
    stack: Arc<Stack>,
    exact_gelu: bool,
    /// Batched attention kernels, on a CUDA device.
    gpu: Option<Arc<gpu::Kernels>>,
}

/// The weights after the embeddings.
struct Stack {
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    lm_head: Head,
}

fn layer_norm(vb: VarBuilder, d: usize, eps: f64) -> candle_core::Result<LayerNorm> {
    LayerNorm::new(vb.get(d, "weight")?, vb.get(d, "bias")?, eps)
}

impl Gpt2 {
    /// The model serving up to `ctx` positions per sequence (`None`: all `n_positions`, which it cannot
    /// exceed: its positions are learned).
    pub fn serving(mut self, ctx: Option<usize>) -> Result<Self, ModelError> {
        match ctx {
            Some(0) => Err(ModelError::Unsupported("a context of 0 positions".into())),
            Some(n) if n > self.cfg.n_positions => Err(ModelError::Unsupported(format!(
                "a context of {n} positions: GPT-2 has learned positions for {}",
                self.cfg.n_positions
            ))),
            Some(n) => {
                self.info.context_length = n;
                Ok(self)
            }
            None => Ok(self),
        }
    }

    /// Loads from a folder's `config.json` and safetensors files (one file or shards), keeping each matrix in
    /// the type `keep` gives for its number of values (norms, biases and positions stay f32).
    pub fn load(
        config: &Path,
        weights: &[PathBuf],
        name: &str,
        device: &Device,
        keep: KeepAs,
    ) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(config).map_err(|source| ModelError::Io {
            path: config.display().to_string(),
            source,
        })?;
        let cfg = serde_json::from_str::<Config>(&text)
            .map_err(|e| e.to_string())
            .and_then(Config::checked)
            .map_err(|reason| ModelError::Invalid {
                path: config.display().to_string(),
                reason,
            })?;
        // SAFETY: the files are mapped read-only and not modified while the model lives.
        let root = unsafe { VarBuilder::from_mmaped_safetensors(weights, DType::F32, device)? };
        let vb = if root.contains_tensor("transformer.wte.weight") {
            root.pp("transformer")
        } else {
            root.clone()
        };
        let d = cfg.n_embd;
        let head_dtype = keep(cfg.vocab_size * d);
        let wte = vb
            .get((cfg.vocab_size, d), "wte.weight")?
            .to_dtype(head_dtype)?;
        let wpe = vb.get((cfg.n_positions, d), "wpe.weight")?;
        let mut blocks = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let b = vb.pp(format!("h.{i}"));
            blocks.push(Block {
                ln_1: layer_norm(b.pp("ln_1"), d, cfg.layer_norm_epsilon)?,
                c_attn: Conv1D::load(b.pp("attn.c_attn"), d, 3 * d, keep)?,
                attn_proj: Conv1D::load(b.pp("attn.c_proj"), d, d, keep)?,
                ln_2: layer_norm(b.pp("ln_2"), d, cfg.layer_norm_epsilon)?,
                c_fc: Conv1D::load(b.pp("mlp.c_fc"), d, 4 * d, keep)?,
                mlp_proj: Conv1D::load(b.pp("mlp.c_proj"), 4 * d, d, keep)?,
            });
        }
        // A configuration with fewer layers than its weights would run part of the model and answer garbage.
        if vb.contains_tensor(&format!("h.{}.ln_1.weight", cfg.n_layer)) {
            return Err(ModelError::Invalid {
                path: config.display().to_string(),
                reason: format!(
                    "{} layers, but the weights hold more (layer {} is there)",
                    cfg.n_layer, cfg.n_layer
                ),
            });
        }
        let ln_f = layer_norm(vb.pp("ln_f"), d, cfg.layer_norm_epsilon)?;
        let lm_head = if root.contains_tensor("lm_head.weight") {
            root.get((cfg.vocab_size, d), "lm_head.weight")?
                .to_dtype(head_dtype)?
        } else {
            wte.clone()
        };
        let lm_head = if own_kernels(device) {
            Head::Own(Dense::new(lm_head, None)?)
        } else {
            Head::Candle(lm_head)
        };
        let info = ModelInfo {
            name: name.to_string(),
            arch: "gpt2".into(),
            quantization: dtype_label(keep(d * 4 * d)),
            vocab_size: cfg.vocab_size,
            context_length: cfg.n_positions,
            n_params: cfg.vocab_size * d + cfg.n_positions * d + cfg.n_layer * 12 * d * d,
            kv_bytes_per_token: 2 * cfg.n_layer * d * 4,
        };
        let exact_gelu = cfg.activation_function == "gelu";
        let gpu = gpu::Kernels::load(wte.device());
        Ok(Self {
            cfg,
            info,
            wte,
            wpe,
            stack: Arc::new(Stack {
                blocks,
                ln_f,
                lm_head,
            }),
            exact_gelu,
            gpu,
        })
    }

    fn embed(&self, batch: &[SeqStep<'_>]) -> candle_core::Result<Tensor> {
        let ids: Vec<u32> = batch
            .iter()
            .flat_map(|s| s.tokens.iter().copied())
            .collect();
        let pos = Self::positions(batch);
        let dev = self.wte.device();
        self.embed_tensors(
            &Tensor::new(ids.as_slice(), dev)?,
            &Tensor::new(pos.as_slice(), dev)?,
        )
    }

    /// Token plus position embeddings of `ids` at `pos` (u32 tensors on the model's device).
    fn embed_tensors(&self, ids: &Tensor, pos: &Tensor) -> candle_core::Result<Tensor> {
        self.wte.index_select(ids, 0)?.to_dtype(DType::F32)? + self.wpe.index_select(pos, 0)?
    }

    /// The positions of every new token, in batch order.
    fn positions(batch: &[SeqStep<'_>]) -> Vec<u32> {
        batch
            .iter()
            .flat_map(|s| (s.cache.len()..s.cache.len() + s.tokens.len()).map(|p| p as u32))
            .collect()
    }

    fn attention(
        &self,
        i: usize,
        xs: &Tensor,
        batch: &mut [SeqStep<'_>],
        spans: &[(usize, usize)],
        gpu: Option<&gpu::Step>,
    ) -> candle_core::Result<Tensor> {
        let (d, nh) = (self.cfg.n_embd, self.cfg.n_head);
        let hd = d / nh;
        let qkv = self.stack.blocks[i].c_attn.forward(xs)?;
        if let Some(step) = gpu {
            let part = |j: usize| qkv.narrow(1, j * d, d);
            let y = step.attend(
                i,
                (&part(0)?, &part(1)?, &part(2)?),
                None,
                &attention::Scoring::plain(hd),
            )?;
            return self.stack.blocks[i].attn_proj.forward(&y);
        }
        let mut outs = Vec::with_capacity(batch.len());
        let mut kvs = Vec::with_capacity(batch.len());
        for (seq, &(start, len)) in batch.iter_mut().zip(spans) {
            let part = |j: usize| -> candle_core::Result<Tensor> {
                qkv.narrow(0, start, len)?
                    .narrow(1, j * d, d)?
                    .reshape((len, nh, hd))?
                    .transpose(0, 1)?
                    .contiguous()
            };
            let (k, v) = seq.cache.append(i, &part(1)?, &part(2)?)?;
            if !xs.device().is_cpu() {
                outs.push(attention::causal_attention(
                    &part(0)?,
                    &k,
                    &v,
                    &attention::Scoring::plain(hd),
                )?);
            }
            kvs.push((k, v));
        }
        let y = if xs.device().is_cpu() {
            // Every row, prompt or decode, along the one arithmetic path of `attend_rows`.
            let mut queries = Vec::with_capacity(spans.len());
            with_f32_rows(&qkv, |all| {
                for &(start, len) in spans {
                    let rows = (start..start + len).flat_map(|r| &all[r * 3 * d..r * 3 * d + d]);
                    queries.push(rows.copied().collect::<Vec<f32>>());
                }
            })?;
            attention::attend_rows_tensor(&queries, &kvs, nh, &attention::Scoring::plain(hd))?
        } else {
            Tensor::cat(&outs, 0)?
        };
        self.stack.blocks[i].attn_proj.forward(&y)
    }

    /// The logits after the embeddings `xs` of every new token: every block, the final norm and the head, over
    /// the rows that want logits.
    fn layers(
        &self,
        mut xs: Tensor,
        batch: &mut [SeqStep<'_>],
        spans: &[(usize, usize)],
        gpu: Option<&gpu::Step>,
    ) -> candle_core::Result<Tensor> {
        for i in 0..self.stack.blocks.len() {
            let h = self.stack.blocks[i].ln_1.forward(&xs)?;
            xs = (&xs + self.attention(i, &h, batch, spans, gpu)?)?;
            let h = self.stack.blocks[i].ln_2.forward(&xs)?;
            xs = (&xs + self.mlp(i, &h)?)?;
        }
        let last = self.stack.ln_f.forward(&output_rows(&xs, batch, spans)?)?;
        self.stack.lm_head.forward(&last)
    }

    fn mlp(&self, i: usize, xs: &Tensor) -> candle_core::Result<Tensor> {
        let h = match &self.stack.blocks[i].c_fc {
            // The activation is applied by the kernel's workers as each tile finishes.
            Conv1D::Own(fc) if self.exact_gelu => {
                fc.forward_with(xs, Some(&|v: &mut [f32]| map(v, GeluErf::f32)))?
            }
            Conv1D::Own(fc) => fc.forward_with(xs, Some(&gelu_new))?,
            fc if self.exact_gelu => fc.forward(xs)?.gelu_erf()?,
            fc => fc.forward(xs)?.gelu()?,
        };
        self.stack.blocks[i].mlp_proj.forward(&h)
    }
}

mod team;

impl CausalLm for Gpt2 {
    fn forward(&self, batch: &mut [SeqStep<'_>]) -> Result<Tensor, ModelError> {
        check_context(batch, self.cfg.n_positions)?;
        let spans = row_spans(batch);
        if let Some(logits) = team::forward(self, batch, &spans)? {
            return Ok(logits);
        }
        let (d, nh) = (self.cfg.n_embd, self.cfg.n_head);
        let logits = match &self.gpu {
            Some(k) => {
                let ids: Vec<u32> = batch
                    .iter()
                    .flat_map(|s| s.tokens.iter().copied())
                    .collect();
                let pos = Self::positions(batch);
                let replayed = k.replay(
                    batch,
                    &spans,
                    nh,
                    d / nh,
                    &[&ids, &pos],
                    &mut |batch, inputs, step| {
                        let xs = self.embed_tensors(&inputs[0], &inputs[1])?;
                        self.layers(xs, batch, &spans, Some(step))
                    },
                )?;
                match replayed {
                    Some(logits) => logits,
                    None => {
                        let step = k.begin(batch, &spans, nh, d / nh)?;
                        let xs = self.embed(batch)?;
                        self.layers(xs, batch, &spans, step.as_ref())?
                    }
                }
            }
            None => {
                let xs = self.embed(batch)?;
                self.layers(xs, batch, &spans, None)?
            }
        };
        for (seq, &(_, len)) in batch.iter_mut().zip(&spans) {
            seq.cache.advance(len);
        }
        Ok(logits)
    }

    fn new_cache(&self) -> SeqCache {
        SeqCache::new(self.cfg.n_layer)
    }

    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn device(&self) -> Device {
        self.wte.device().clone()
    }

    fn warm_up(&self, kv_dtype: DType) -> Result<(), ModelError> {
        super::warm_up_by_forward(self, kv_dtype)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectorized `gelu_new` against an f64 reference, and bit-identical to the one-element code at every
    /// offset of a slice.
    #[test]
    fn gelu_new_is_accurate_and_position_independent() {
        let xs: Vec<f32> = (-4000..4000).map(|i| i as f32 * 0.005 + 0.0013).collect();
        let mut got = xs.clone();
        gelu_new(&mut got);
        for (&x, &g) in xs.iter().zip(&got) {
            let x64 = x as f64;
            let u = (2.0 / std::f64::consts::PI).sqrt() * (x64 + 0.044715 * x64.powi(3));
            let want = 0.5 * x64 * (1.0 + u.tanh());
            assert!(
                (g as f64 - want).abs() <= 1e-6 * want.abs().max(1e-3),
                "gelu_new({x}) = {g}, want {want}"
            );
            assert_eq!(g.to_bits(), gelu_new_one(x).to_bits(), "{x}");
        }
        for off in 1..20 {
            let mut part = xs[off..off + 37].to_vec();
            gelu_new(&mut part);
            assert_eq!(part, got[off..off + 37]);
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            let mut avx2 = xs.clone();
            // SAFETY: checked just above.
            unsafe { gelu_new_avx2(&mut avx2) };
            assert_eq!(avx2, got, "AVX2 and the fastest path agree bit for bit");
        }
        let mut extremes = [-1e4f32, -100.0, -12.0, 12.0, 100.0, 1e4, 0.0, -0.0];
        gelu_new(&mut extremes);
        assert_eq!(
            extremes.map(|v| v.abs() < 1e-30),
            [true, true, true, false, false, false, true, true]
        );
        assert_eq!(&extremes[3..6], &[12.0, 100.0, 1e4]);
    }
}
