//! One error type for the whole HTTP layer. Each dialect turns it into its own body and status in exactly one
//! place (`openai::error`, `ollama::error`, `anthropic::error`), using the [`ErrorKind`] decided here.

use crate::engine::EngineError;

/// Everything a request can fail with before or while it is served.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// A field is missing, malformed or out of range.
    #[error("{0}")]
    BadRequest(String),
    /// The body is not JSON of the expected shape.
    #[error("invalid JSON body: {0}")]
    BadJson(String),
    /// The body is larger than the configured limit.
    #[error("the request body is larger than the limit of {limit} bytes")]
    TooLarge { limit: usize },
    /// The body did not arrive in time (a client trickling it).
    #[error("the request body did not arrive within {secs} seconds")]
    BodyTimeout { secs: f64 },
    /// No API key, or the wrong one.
    #[error("missing or invalid API key: send it as `Authorization: Bearer <key>` or `x-api-key: <key>`")]
    Unauthorized,
    /// A model other than the one served was asked for.
    #[error("model `{requested}` not found; this server serves `{served}`")]
    ModelNotFound { requested: String, served: String },
    /// No route matches.
    #[error("no route for {method} {path}")]
    RouteNotFound { method: String, path: String },
    /// The route exists, but not for this method.
    #[error("{path} does not accept {method}")]
    MethodNotAllowed { method: String, path: String },
    /// No resumable stream with this id and token (never made, expired, or the token is wrong).
    #[error("no stream `{0}`: it expired, or the token is wrong")]
    StreamNotFound(String),
    /// The stream exists, but what the client asked to resume from is gone (410).
    #[error("{0}")]
    StreamGone(String),
    /// As many resumable streams are held as the server keeps.
    #[error("too many streams are open; retry when one has finished")]
    TooManyStreams,
    /// The model has not finished loading.
    #[error("the model is still loading; retry when GET /health answers 200")]
    Loading,
    /// The model failed to load; nothing can be served.
    #[error("the model failed to load: {0}")]
    LoadFailed(String),
    /// The engine refused or failed the request.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// Anything else that is the server's fault.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The class of an error, which each dialect maps to a status and a type name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidRequest,
    Authentication,
    NotFound,
    MethodNotAllowed,
    TooLarge,
    /// The request did not arrive in time.
    Timeout,
    /// Too many requests are waiting; retry later.
    Overloaded,
    /// Not ready (loading) or stopped.
    Unavailable,
    /// Existed once, and no longer does.
    Gone,
    Internal,
}

/// Seconds a client is told to wait (`Retry-After`) when the queue is full or the model is loading.
pub const RETRY_AFTER_SECS: u64 = 1;

impl ApiError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::BadRequest(_) | Self::BadJson(_) => ErrorKind::InvalidRequest,
            Self::TooLarge { .. } => ErrorKind::TooLarge,
            Self::BodyTimeout { .. } => ErrorKind::Timeout,
            Self::Unauthorized => ErrorKind::Authentication,
            Self::ModelNotFound { .. } | Self::RouteNotFound { .. } | Self::StreamNotFound(_) => {
                ErrorKind::NotFound
            }
            Self::TooManyStreams => ErrorKind::Overloaded,
            Self::StreamGone(_) => ErrorKind::Gone,
            Self::MethodNotAllowed { .. } => ErrorKind::MethodNotAllowed,
            Self::Loading | Self::LoadFailed(_) => ErrorKind::Unavailable,
            Self::Internal(_) => ErrorKind::Internal,
            Self::Engine(e) => match e {
                EngineError::EmptyPrompt
                | EngineError::Sampling(_)
                | EngineError::NoTokens
                | EngineError::PromptTooLong { .. }
                | EngineError::ExceedsKvBudget { .. } => ErrorKind::InvalidRequest,
                EngineError::QueueFull(_) => ErrorKind::Overloaded,
                EngineError::Stopped => ErrorKind::Unavailable,
                EngineError::Model(_) | EngineError::Tokenizer(_) | EngineError::Grammar(_) => {
                    ErrorKind::Internal
                }
            },
        }
    }

    /// Whether the client should be told to come back (`Retry-After`).
    pub fn retry_after(&self) -> Option<u64> {
        matches!(
            self,
            Self::Loading | Self::TooManyStreams | Self::Engine(EngineError::QueueFull(_))
        )
        .then_some(RETRY_AFTER_SECS)
    }

    pub fn bad_request(msg: impl Into<String>) -> Self {
        Self::BadRequest(msg.into())
    }
}

impl From<crate::tokenizer::TokenizerError> for ApiError {
    fn from(e: crate::tokenizer::TokenizerError) -> Self {
        match e {
            // A template that raises (e.g. "roles must alternate") is the caller's input at fault.
            crate::tokenizer::TokenizerError::Template(m) => {
                Self::BadRequest(format!("chat template: {m}"))
            }
            e @ (crate::tokenizer::TokenizerError::TooLong { .. }
            | crate::tokenizer::TokenizerError::OutsideModel { .. }) => {
                Self::BadRequest(e.to_string())
            }
            other => Self::Internal(other.to_string()),
        }
    }
}

/// Declares a dialect's error type: a wrapper around [`ApiError`] that renders with `$render`
/// (`fn(&ApiError) -> Response`), so `?` works on engine, tokenizer and API errors alike.
macro_rules! dialect_error {
    ($(#[$doc:meta])* $name:ident, $render:path) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name(pub $crate::api::error::ApiError);

        impl<T: Into<$crate::api::error::ApiError>> From<T> for $name {
            fn from(e: T) -> Self {
                Self(e.into())
            }
        }

        impl axum::response::IntoResponse for $name {
            fn into_response(self) -> axum::response::Response {
                $render(&self.0)
            }
        }
    };
}
pub(crate) use dialect_error;

/// Adds `Retry-After` when the error asks for it.
pub fn with_retry_after(
    err: &ApiError,
    mut resp: axum::response::Response,
) -> axum::response::Response {
    if let Some(secs) = err.retry_after() {
        resp.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from(secs),
        );
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_follow_the_cause() {
        assert_eq!(
            ApiError::Engine(EngineError::PromptTooLong {
                prompt: 9,
                context: 8
            })
            .kind(),
            ErrorKind::InvalidRequest
        );
        assert_eq!(
            ApiError::Engine(EngineError::QueueFull(3)).kind(),
            ErrorKind::Overloaded
        );
        assert_eq!(
            ApiError::Engine(EngineError::QueueFull(3)).retry_after(),
            Some(RETRY_AFTER_SECS)
        );
        assert_eq!(ApiError::Unauthorized.retry_after(), None);
        assert_eq!(ApiError::TooLarge { limit: 1 }.kind(), ErrorKind::TooLarge);
    }

    #[test]
    fn prompt_too_long_names_both_lengths() {
        let m = ApiError::Engine(EngineError::PromptTooLong {
            prompt: 300,
            context: 256,
        })
        .to_string();
        assert!(m.contains("300") && m.contains("256"), "{m}");
    }
}
