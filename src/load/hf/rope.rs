//! Rotary settings of a `config.json`: the base, gemma3's local base, linear scaling, Llama 3.1's
//! per-frequency factors and Phi-3's LongRoPE, as transformers reads them.

use serde_json::Value;

use super::{invalid, Json};
use crate::model::decoder::LongRope;
use crate::model::ModelError;

/// A checkpoint's rotary settings.
pub(super) struct RopeSettings {
    pub(super) base: f32,
    /// Sliding layers' base, where it differs (gemma3).
    pub(super) local_base: Option<f32>,
    /// Linear position scaling.
    pub(super) linear: f32,
    /// Per-frequency divisors (Llama 3.1).
    pub(super) freqs: Option<Vec<f32>>,
    pub(super) long: Option<LongRope>,
}

/// Rotary settings from `rope_theta` / `rope_scaling` or transformers 5's `rope_parameters` (per layer type
/// for gemma3); `context` is `max_position_embeddings`.
pub(super) fn rope(
    c: &Json<'_>,
    head_dim: usize,
    gemma: bool,
    context: usize,
) -> Result<RopeSettings, ModelError> {
    let params = c.sub("rope_parameters");
    let full = params
        .as_ref()
        .and_then(|p| p.sub("full_attention"))
        .or_else(|| c.sub("rope_parameters"));
    let local = params.as_ref().and_then(|p| p.sub("sliding_attention"));
    let base = match full
        .as_ref()
        .map(|f| f.opt_f32("rope_theta"))
        .transpose()?
        .flatten()
    {
        Some(b) => b,
        None => c.opt_f32("rope_theta")?.unwrap_or(10_000.0),
    };
    let local_base = match local
        .as_ref()
        .map(|l| l.opt_f32("rope_theta"))
        .transpose()?
        .flatten()
    {
        Some(b) => Some(b),
        None => c.opt_f32("rope_local_base_freq")?,
    };
    // The scaling: `rope_scaling`, else the full-attention `rope_parameters`.
    let scaling = c.sub("rope_scaling").or(full);
    let (mut linear, mut freqs, mut long) = (1.0, None, None);
    if let Some(s) = scaling {
        let kind = s
            .opt_str("rope_type")
            .or(s.opt_str("type"))
            .unwrap_or("default");
        match kind {
            "default" => {}
            "linear" => linear = s.opt_f32("factor")?.unwrap_or(1.0),
            "llama3" => freqs = Some(llama3_factors(&s, base, head_dim)?),
            "longrope" | "su" => long = Some(long_rope(c, &s, context)?),
            other => {
                return Err(ModelError::Unsupported(format!(
                    "{}: rope scaling `{other}`",
                    c.path.display()
                )))
            }
        }
    }
    Ok(RopeSettings {
        base,
        local_base: local_base.filter(|_| gemma),
        linear,
        freqs,
        long,
    })
}

/// Phi-3's LongRoPE from its scaling block: `short_factor`, `long_factor`, the pretrained context
/// (`original_max_position_embeddings`, in the block or beside it; the whole context without one) and
/// `attention_factor` when given, else the one transformers derives from `factor`, or from
/// `context / original` without one.
fn long_rope(c: &Json<'_>, s: &Json<'_>, context: usize) -> Result<LongRope, ModelError> {
    let factors = |k: &str| -> Result<Vec<f32>, ModelError> {
        s.get(k)
            .and_then(Value::as_array)
            .and_then(|a| a.iter().map(|v| v.as_f64().map(|x| x as f32)).collect())
            .ok_or_else(|| {
                invalid(
                    s.path,
                    format!("LongRoPE scaling without a numeric `{k}` list"),
                )
            })
    };
    // As transformers reads it: in the block, else beside it, else the model's whole context (then the
    // short factors always apply).
    let key = "original_max_position_embeddings";
    let original = match s.opt_usize(key)? {
        Some(o) => o,
        None => c.opt_usize(key)?.unwrap_or(context),
    };
    Ok(LongRope {
        short: factors("short_factor")?,
        long: factors("long_factor")?,
        original,
        attn_factor: match s.opt_f32("attention_factor")? {
            Some(f) => f,
            None => LongRope::default_attn_factor(
                match s.opt_f32("factor")? {
                    Some(f) => f as f64,
                    None => context as f64 / original.max(1) as f64,
                },
                original,
            ),
        },
    })
}

/// Llama 3.1's rope scaling as per-frequency divisors: long wavelengths slowed by `factor`, short ones kept,
/// the band between blended.
fn llama3_factors(s: &Json<'_>, base: f32, head_dim: usize) -> Result<Vec<f32>, ModelError> {
    let field = |k: &str| {
        s.opt_f32(k)?
            .ok_or_else(|| invalid(s.path, format!("llama3 rope scaling without `{k}`")))
    };
    let factor = field("factor")?;
    let low = field("low_freq_factor")?;
    let high = field("high_freq_factor")?;
    let old = field("original_max_position_embeddings")?;
    let (low_wavelen, high_wavelen) = (old / low, old / high);
    Ok((0..head_dim / 2)
        .map(|i| {
            let freq = 1.0 / base.powf((2 * i) as f32 / head_dim as f32);
            let wavelen = 2.0 * std::f32::consts::PI / freq;
            if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth = (old / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            }
        })
        .collect())
}
