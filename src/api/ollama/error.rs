//! Ollama's error shape, `{"error":"…"}`, and its statuses (a full queue is 503, as Ollama answers); the only
//! place an [`ApiError`] becomes an Ollama response.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::api::error::{dialect_error, with_retry_after, ApiError, ErrorKind};

dialect_error!(
    /// An error answered in Ollama's shape.
    OllamaError,
    render
);

pub fn status(e: &ApiError) -> StatusCode {
    match e.kind() {
        ErrorKind::InvalidRequest => StatusCode::BAD_REQUEST,
        ErrorKind::Authentication => StatusCode::UNAUTHORIZED,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Gone => StatusCode::GONE,
        ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::Timeout => StatusCode::REQUEST_TIMEOUT,
        ErrorKind::Overloaded | ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The JSON body of an error, also the in-band line after a stream has started.
pub fn body(e: &ApiError) -> Value {
    json!({ "error": e.to_string() })
}

pub fn render(e: &ApiError) -> Response {
    with_retry_after(e, (status(e), axum::Json(body(e))).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineError;

    #[test]
    fn queue_full_is_503_with_retry_after() {
        let r = render(&ApiError::Engine(EngineError::QueueFull(2)));
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()["retry-after"], "1");
        assert_eq!(body(&ApiError::bad_request("x")), json!({"error": "x"}));
    }
}
