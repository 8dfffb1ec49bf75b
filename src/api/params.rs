//! Request fields the dialects share: stop strings given as a string or a list, seeds of any integer width, and
//! sampling parameters checked against their ranges before anything is queued.

use serde::Deserialize;

use super::error::ApiError;
use crate::engine::SamplingParams;

/// `"stop": "x"` or `"stop": ["x", "y"]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    /// The non-empty strings (an empty stop string would end every answer at once).
    pub fn into_vec(self) -> Vec<String> {
        let v = match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        };
        v.into_iter().filter(|s| !s.is_empty()).collect()
    }
}

pub fn stops(s: Option<OneOrMany>) -> Vec<String> {
    s.map(OneOrMany::into_vec).unwrap_or_default()
}

/// Sampling fields as the dialects send them, all optional; `None` takes the dialect's default.
#[derive(Debug, Clone, Default)]
pub struct SamplingFields {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// Negative means off (vLLM's -1).
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub repeat_last_n: Option<i64>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub seed: Option<u64>,
}

/// What differs between the dialects' sampling fields: the largest temperature each allows, and the name its
/// clients give the repetition penalty (named as the client sent it in errors).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_temperature: f32,
    pub repetition_penalty: &'static str,
}

impl SamplingFields {
    /// Checks every field against its range and fills the rest from `defaults`.
    pub fn build(
        &self,
        defaults: SamplingParams,
        limits: Limits,
    ) -> Result<SamplingParams, ApiError> {
        let mut p = defaults;
        if let Some(t) = self.temperature {
            p.temperature = in_range("temperature", t, 0.0, limits.max_temperature)?;
        }
        if let Some(v) = self.top_p {
            p.top_p = in_range("top_p", v, 0.0, 1.0)?;
        }
        if let Some(k) = self.top_k {
            p.top_k = usize::try_from(k).unwrap_or(0);
        }
        if let Some(v) = self.min_p {
            p.min_p = in_range("min_p", v, 0.0, 1.0)?;
        }
        if let Some(v) = self.repetition_penalty {
            let name = limits.repetition_penalty;
            if !(v > 0.0 && v <= 100.0) {
                return Err(ApiError::BadRequest(format!(
                    "`{name}` must be above 0 and at most 100, got {v}"
                )));
            }
            p.repetition_penalty = v;
        }
        if let Some(n) = self.repeat_last_n {
            p.repeat_last_n = usize::try_from(n).unwrap_or(p.repeat_last_n);
        }
        if let Some(v) = self.presence_penalty {
            p.presence_penalty = in_range("presence_penalty", v, -2.0, 2.0)?;
        }
        if let Some(v) = self.frequency_penalty {
            p.frequency_penalty = in_range("frequency_penalty", v, -2.0, 2.0)?;
        }
        if self.seed.is_some() {
            p.seed = self.seed;
        }
        Ok(p)
    }
}

fn in_range(name: &str, v: f32, lo: f32, hi: f32) -> Result<f32, ApiError> {
    if v.is_finite() && (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(ApiError::BadRequest(format!(
            "`{name}` must be between {lo} and {hi}, got {v}"
        )))
    }
}

/// A seed: any JSON integer; negative ones wrap into 64 bits (`-1` → `u64::MAX`).
pub fn seed(v: Option<&serde_json::Number>) -> Result<Option<u64>, ApiError> {
    let Some(n) = v else { return Ok(None) };
    n.as_u64()
        .or_else(|| n.as_i64().map(|i| i as u64))
        .map(Some)
        .ok_or_else(|| ApiError::BadRequest(format!("`seed` must be an integer, got {n}")))
}

/// A token limit that must be at least 1 when given.
pub fn positive(name: &str, v: Option<i64>) -> Result<Option<usize>, ApiError> {
    match v {
        None => Ok(None),
        Some(n) if n >= 1 => Ok(Some(n as usize)),
        Some(n) => Err(ApiError::BadRequest(format!(
            "`{name}` must be at least 1, got {n}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPENAI: Limits = Limits {
        max_temperature: 2.0,
        repetition_penalty: "repetition_penalty",
    };

    #[test]
    fn stop_forms() {
        let one: OneOrMany = serde_json::from_str(r#""\n""#).unwrap();
        let many: OneOrMany = serde_json::from_str(r#"["a", "", "b"]"#).unwrap();
        assert_eq!(one.into_vec(), vec!["\n"]);
        assert_eq!(many.into_vec(), vec!["a", "b"]);
    }

    #[test]
    fn ranges_are_enforced_with_the_field_name() {
        let f = SamplingFields {
            temperature: Some(2.5),
            ..Default::default()
        };
        let e = f.build(SamplingParams::default(), OPENAI).unwrap_err();
        assert!(e.to_string().contains("temperature"), "{e}");
        let f = SamplingFields {
            top_p: Some(f32::NAN),
            ..Default::default()
        };
        assert!(f.build(SamplingParams::default(), OPENAI).is_err());
    }

    /// A repetition penalty of 0 or less is refused under the name the dialect's clients use, with its range
    /// in plain numbers.
    #[test]
    fn the_repetition_penalty_is_named_as_the_dialect_names_it() {
        let ollama = Limits {
            max_temperature: 100.0,
            repetition_penalty: "repeat_penalty",
        };
        for v in [0.0, -1.0, 101.0, f32::NAN] {
            let f = SamplingFields {
                repetition_penalty: Some(v),
                ..Default::default()
            };
            let e = f.build(SamplingParams::default(), ollama).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("`repeat_penalty` must be above 0 and at most 100, got {v}")
            );
        }
    }

    #[test]
    fn fields_override_defaults() {
        let seed = seed(Some(&serde_json::Number::from(-1))).unwrap();
        let f = SamplingFields {
            temperature: Some(0.0),
            top_k: Some(-1),
            seed,
            ..Default::default()
        };
        let p = f
            .build(
                SamplingParams {
                    top_k: 40,
                    ..SamplingParams::default()
                },
                OPENAI,
            )
            .unwrap();
        assert_eq!((p.temperature, p.top_k, p.seed), (0.0, 0, Some(u64::MAX)));
    }

    #[test]
    fn seeds() {
        assert_eq!(
            seed(Some(&serde_json::Number::from(u64::MAX))).unwrap(),
            Some(u64::MAX)
        );
        assert!(seed(serde_json::Number::from_f64(1.5).as_ref()).is_err());
    }

    #[test]
    fn positive_limits() {
        assert_eq!(positive("max_tokens", Some(3)).unwrap(), Some(3));
        assert!(positive("max_tokens", Some(0)).is_err());
    }
}
