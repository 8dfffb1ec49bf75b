//! What every handler shares: the served model's name, the engine once it has loaded, and the API settings.
//!
//! `rill serve` binds its port before the model loads, so the state starts "loading" (`/health` answers 503 and
//! model routes refuse with 503) and flips to ready when the generation thread reports the model loaded.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::error::ApiError;
use super::streams::registry::Registry;
use crate::engine::{EngineHandle, EventStream, GenRequest};

/// Settings of the HTTP layer (from `rill serve`'s flags, or set directly by tests).
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// When set, every model route requires this key (`Authorization: Bearer` or `x-api-key`).
    pub api_key: Option<String>,
    /// Origins allowed by CORS; empty turns CORS off, `*` allows any.
    pub cors_origins: Vec<String>,
    /// Largest request body accepted, in bytes.
    pub body_limit: usize,
    /// OpenAI and Anthropic requests may name any model and get the served one (Ollama's must always match).
    pub any_model: bool,
    /// How long a stream may stay silent before an SSE keep-alive is sent.
    pub ping_interval: Duration,
    /// How long a client may take to send a request's headers, and then its body; slower ones are cut off
    /// (a client that trickles bytes to hold a connection open).
    pub request_timeout: Duration,
    /// How long a browser stream (`/v1/streams`) keeps generating without a reader, and keeps its events after
    /// the last one, so a dropped connection can resume.
    pub resume_window: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            api_key: None,
            cors_origins: Vec::new(),
            body_limit: 4 * 1024 * 1024,
            any_model: false,
            ping_interval: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            resume_window: Duration::from_secs(30),
        }
    }
}

/// The cheap, cloneable state behind every route.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    config: ApiConfig,
    engine: OnceLock<EngineHandle>,
    load_error: OnceLock<String>,
    /// Bytes of the model's weight files, when known (shown by Ollama's `/api/tags`).
    model_size: OnceLock<u64>,
    streams: Registry,
}

impl AppState {
    /// State for a model named `name` that is still loading.
    pub fn loading(name: impl Into<String>, config: ApiConfig) -> Self {
        let inner = Inner {
            streams: Registry::new(config.resume_window),
            name: name.into(),
            config,
            engine: OnceLock::new(),
            load_error: OnceLock::new(),
            model_size: OnceLock::new(),
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// State over an engine that is already running.
    pub fn ready(engine: EngineHandle, config: ApiConfig) -> Self {
        let state = Self::loading(engine.info().name.clone(), config);
        state.set_ready(engine);
        state
    }

    /// Marks the model loaded: model routes start serving.
    pub fn set_ready(&self, engine: EngineHandle) {
        let _ = self.inner.engine.set(engine);
    }

    /// Marks the load failed: model routes and `/health` report it.
    pub fn set_failed(&self, reason: impl Into<String>) {
        let _ = self.inner.load_error.set(reason.into());
    }

    pub fn set_model_size(&self, bytes: u64) {
        let _ = self.inner.model_size.set(bytes);
    }

    pub fn model_size(&self) -> Option<u64> {
        self.inner.model_size.get().copied()
    }

    /// The name the model is served under.
    pub fn model_name(&self) -> &str {
        &self.inner.name
    }

    /// The resumable browser streams.
    pub fn streams(&self) -> &Registry {
        &self.inner.streams
    }

    pub fn config(&self) -> &ApiConfig {
        &self.inner.config
    }

    /// The engine, or why there is none yet.
    pub fn engine(&self) -> Result<&EngineHandle, ApiError> {
        if let Some(e) = self.inner.engine.get() {
            return Ok(e);
        }
        match self.inner.load_error.get() {
            Some(reason) => Err(ApiError::LoadFailed(reason.clone())),
            None => Err(ApiError::Loading),
        }
    }

    /// Queues a generation request; refusals (prompt too long, queue full) come back before any byte is sent.
    pub fn submit(&self, req: GenRequest) -> Result<EventStream, ApiError> {
        Ok(self.engine()?.submit(req)?)
    }

    /// Checks a model name from an OpenAI or Anthropic request: absent or empty means the served model; any
    /// other name must match unless `any_model` is set.
    pub fn check_model(&self, requested: Option<&str>) -> Result<(), ApiError> {
        match requested {
            None | Some("") => Ok(()),
            Some(_) if self.inner.config.any_model => Ok(()),
            Some(m) => self.check_model_strict(m),
        }
    }

    /// Checks an Ollama model name: it must name the served model, with or without the `:latest` tag.
    pub fn check_model_strict(&self, requested: &str) -> Result<(), ApiError> {
        let name = self.model_name();
        if requested == name || requested.strip_suffix(":latest") == Some(name) {
            Ok(())
        } else {
            Err(ApiError::ModelNotFound {
                requested: requested.to_string(),
                served: name.to_string(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loading_state_refuses_until_ready() {
        let s = AppState::loading("m", ApiConfig::default());
        assert_eq!(s.engine().err(), Some(ApiError::Loading));
        s.set_failed("boom");
        assert_eq!(s.engine().err(), Some(ApiError::LoadFailed("boom".into())));
    }

    #[test]
    fn model_names() {
        let s = AppState::loading("smollm2", ApiConfig::default());
        assert!(s.check_model(None).is_ok());
        assert!(s.check_model(Some("smollm2")).is_ok());
        assert!(s.check_model_strict("smollm2:latest").is_ok());
        assert!(matches!(
            s.check_model(Some("gpt-4o")),
            Err(ApiError::ModelNotFound { .. })
        ));
        assert!(s.check_model_strict("smollm2:7b").is_err());
        let any = AppState::loading(
            "smollm2",
            ApiConfig {
                any_model: true,
                ..ApiConfig::default()
            },
        );
        assert!(any.check_model(Some("gpt-4o")).is_ok());
        assert!(any.check_model_strict("gpt-4o").is_err());
    }
}
