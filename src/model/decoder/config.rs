//! A decoder's hyper-parameters ([`DecoderConfig`]) as the loading layer reads them, and the checks that refuse
//! values no real model has before anything is sized by them.

use crate::model::attention::Scoring;
use crate::model::linear::Activation;

/// The hyper-parameters and switches of one model, read by the loading layer from GGUF metadata or a
/// HuggingFace `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderConfig {
    /// Family label for logs and `/api/show` (`llama`, `qwen2`, `gemma3`, ...).
    pub arch: String,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub context: usize,
    pub rms_eps: f32,
    /// Rotary base of full-attention layers.
    pub rope_base: f32,
    /// Rotary base of sliding-window layers, where it differs (gemma3: 10 000).
    pub rope_base_local: Option<f32>,
    /// Linear position scaling of full-attention layers (positions divided by it), 1 for none.
    pub rope_linear: f32,
    /// GPT-NeoX rotary layout (pairs `i, i + d/2`) rather than interleaved pairs. HuggingFace checkpoints are
    /// all NeoX; llama.cpp's converter permutes llama's Q and K to the interleaved layout.
    pub rope_neox: bool,
    /// Window of sliding-window layers.
    pub sliding_window: Option<usize>,
    /// Which layers use the window (and the local rotary base).
    pub sliding: Vec<bool>,
    /// Scale of `q·k` (`1/√head_dim` unless the family says otherwise).
    pub attn_scale: f32,
    /// `c·tanh(s/c)` on attention scores (gemma2).
    pub attn_softcap: Option<f32>,
    /// `c·tanh(l/c)` on the output logits (gemma2).
    pub final_softcap: Option<f32>,
    /// Embeddings are multiplied by this (gemma: `√hidden`).
    pub embed_scale: Option<f32>,
    pub act: Activation,
    /// Per-frequency divisors of full-attention layers' rotary frequencies (Llama 3.1 rope scaling); a GGUF
    /// file's `rope_freqs.weight` tensor takes their place.
    pub rope_freqs: Option<Vec<f32>>,
    /// Phi-3's LongRoPE, resolved by [`Self::serving`] into `rope_freqs` and `rope_attn_factor`.
    pub long_rope: Option<LongRope>,
    /// Factor on the rotary cos and sin (LongRoPE's attention factor), 1 for none.
    pub rope_attn_factor: f32,
}

/// LongRoPE (Phi-3 / 3.5 long-context checkpoints): per-frequency divisors for contexts up to the pretrained
/// `original` positions (`short`) and for longer ones (`long`), and a factor on cos and sin.
#[derive(Debug, Clone, PartialEq)]
pub struct LongRope {
    pub short: Vec<f32>,
    pub long: Vec<f32>,
    pub original: usize,
    pub attn_factor: f32,
}

impl LongRope {
    /// The factor on cos and sin a checkpoint implies when it does not state one:
    /// `√(1 + ln(scale) / ln(original))`, 1 without extension; `scale` is the extension, by default the
    /// model's context over `original`.
    pub fn default_attn_factor(scale: f64, original: usize) -> f32 {
        if scale <= 1.0 || original < 2 {
            1.0
        } else {
            (1.0 + scale.ln() / (original as f64).ln()).sqrt() as f32
        }
    }
}

/// The longest context rill accepts from a model file (its rotary tables are sized by it).
pub const MAX_CONTEXT: usize = 1 << 20;
/// The most layers rill accepts from a model file (per-layer settings are sized by it).
pub const MAX_LAYERS: usize = 1024;
/// The widest attention head rill accepts from a model file (rotary tables are sized by it).
pub const MAX_HEAD_DIM: usize = 1024;

/// Refuses a model shape no real model has: a depth outside `1..=MAX_LAYERS`, no heads, query heads that kv
/// heads do not divide, a head size that is zero, odd or over [`MAX_HEAD_DIM`]. The loaders call it before
/// they size anything by these numbers (a hostile file's layer count would otherwise size per-layer settings
/// first), and [`DecoderConfig::checked`] checks them again.
pub fn check_shape(
    n_layers: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
) -> Result<(), String> {
    refuse_implausible(shape_problems(n_layers, n_heads, n_kv_heads, head_dim))
}

/// The error for the problems a model file's hyper-parameters have, each naming a value out of bounds; `Ok`
/// when there are none.
pub(crate) fn refuse_implausible(bad: Vec<String>) -> Result<(), String> {
    match bad.is_empty() {
        true => Ok(()),
        false => Err(format!("implausible hyper-parameters: {}", bad.join("; "))),
    }
}

/// What [`check_shape`] refuses, one entry per value out of bounds.
fn shape_problems(
    n_layers: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
) -> Vec<String> {
    let mut bad = Vec::new();
    if !(1..=MAX_LAYERS).contains(&n_layers) {
        bad.push(format!("{n_layers} layers (1 to {MAX_LAYERS})"));
    }
    if n_heads == 0 || n_kv_heads == 0 || !n_heads.is_multiple_of(n_kv_heads) {
        bad.push(format!(
            "{n_heads} attention heads over {n_kv_heads} kv heads"
        ));
    }
    if head_dim == 0 || !head_dim.is_multiple_of(2) || head_dim > MAX_HEAD_DIM {
        bad.push(format!("head size {head_dim} (even, 2 to {MAX_HEAD_DIM})"));
    }
    bad
}

impl DecoderConfig {
    /// The configuration for serving up to `ctx` positions per sequence (`None`: the model's own context, or
    /// for a LongRoPE model its pretrained `original` one, as llama.cpp's and Ollama's default contexts give).
    /// A LongRoPE model then takes its short factors when the context fits in `original` positions and its
    /// long ones beyond, one set for every position, as llama.cpp picks them by its context size.
    /// A context beyond the model's own is served, with a warning: past its trained positions answers may degrade.
    pub fn serving(mut self, ctx: Option<usize>) -> Self {
        let default = match &self.long_rope {
            Some(l) => l.original.min(self.context),
            None => self.context,
        };
        if let Some(n) = ctx.filter(|&n| n > self.context) {
            tracing::warn!(
                "a context of {n} positions is beyond the {} this model was trained for: answers that reach past \
                 them may degrade",
                self.context
            );
        }
        self.context = ctx.unwrap_or(default);
        if let Some(l) = self.long_rope.take() {
            self.rope_freqs = Some(if self.context > l.original {
                l.long
            } else {
                l.short
            });
            self.rope_attn_factor = l.attn_factor;
        }
        self
    }

    /// Refuses hyper-parameters no real model has (a corrupt or hostile file) before anything is sized by
    /// them: zero or inconsistent head counts, odd head sizes, absurd depths or contexts, rotary settings that
    /// are not finite and positive. The error names each value out of bounds, never the whole configuration
    /// (a hostile file's lists can be huge).
    pub fn checked(self) -> Result<Self, String> {
        let mut bad = shape_problems(self.n_layers, self.n_heads, self.n_kv_heads, self.head_dim);
        if !(1..=MAX_CONTEXT).contains(&self.context) {
            bad.push(format!(
                "context length {} (1 to {MAX_CONTEXT})",
                self.context
            ));
        }
        if self.sliding.len() != self.n_layers {
            bad.push(format!(
                "{} sliding-window flags for {} layers",
                self.sliding.len(),
                self.n_layers
            ));
        }
        if self.sliding_window == Some(0) {
            bad.push("a sliding window of 0 positions".into());
        }
        let rotary = [
            ("rotary base", self.rope_base),
            ("local rotary base", self.rope_base_local.unwrap_or(1.0)),
            ("linear rotary scaling", self.rope_linear),
        ];
        for (name, v) in rotary {
            if !(v.is_finite() && v > 0.0) {
                bad.push(format!("{name} {v}"));
            }
        }
        // A negative epsilon takes the root of a negative mean for small activations: NaN logits.
        if !(self.rms_eps.is_finite() && self.rms_eps >= 0.0) {
            bad.push(format!("RMS norm epsilon {} (0 or more)", self.rms_eps));
        }
        for (name, v) in [
            ("attention scale", self.attn_scale),
            ("rotary attention factor", self.rope_attn_factor),
        ] {
            if !v.is_finite() {
                bad.push(format!("{name} {v}"));
            }
        }
        if let Some(l) = &self.long_rope {
            if l.original == 0 {
                bad.push("LongRoPE's original context 0".into());
            }
            if !l.attn_factor.is_finite() {
                bad.push(format!("LongRoPE attention factor {}", l.attn_factor));
            }
            for (name, f) in [("short", &l.short), ("long", &l.long)] {
                if f.len() != self.head_dim / 2 {
                    bad.push(format!(
                        "{} {name} LongRoPE factors for {} frequencies",
                        f.len(),
                        self.head_dim / 2
                    ));
                } else if !f.iter().all(|x| x.is_finite() && *x > 0.0) {
                    bad.push(format!(
                        "a {name} LongRoPE factor that is not finite and positive"
                    ));
                }
            }
        }
        refuse_implausible(bad).map(|()| self)
    }

    /// How layer `i` scores keys.
    pub(super) fn scoring(&self, i: usize) -> Scoring {
        Scoring {
            scale: self.attn_scale,
            softcap: self.attn_softcap,
            window: self.sliding_window.filter(|_| self.sliding[i]),
        }
    }
}
