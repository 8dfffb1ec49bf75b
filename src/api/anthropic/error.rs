//! Anthropic's error shape, `{"type":"error","error":{"type","message"}}`, and its statuses; the only place an
//! [`ApiError`] becomes an Anthropic response.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::api::error::{dialect_error, with_retry_after, ApiError, ErrorKind};

dialect_error!(
    /// An error answered in Anthropic's shape.
    AnthropicError,
    render
);

pub fn classify(e: &ApiError) -> (StatusCode, &'static str) {
    match e.kind() {
        ErrorKind::InvalidRequest => (StatusCode::BAD_REQUEST, "invalid_request_error"),
        ErrorKind::Authentication => (StatusCode::UNAUTHORIZED, "authentication_error"),
        ErrorKind::NotFound => (StatusCode::NOT_FOUND, "not_found_error"),
        ErrorKind::Gone => (StatusCode::GONE, "not_found_error"),
        ErrorKind::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "invalid_request_error"),
        ErrorKind::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "request_too_large"),
        ErrorKind::Timeout => (StatusCode::REQUEST_TIMEOUT, "invalid_request_error"),
        ErrorKind::Overloaded => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error"),
        ErrorKind::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "overloaded_error"),
        ErrorKind::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "api_error"),
    }
}

/// The JSON body of an error, also the `event: error` payload after a stream has started.
pub fn body(e: &ApiError) -> Value {
    json!({ "type": "error", "error": { "type": classify(e).1, "message": e.to_string() } })
}

pub fn render(e: &ApiError) -> Response {
    with_retry_after(e, (classify(e).0, axum::Json(body(e))).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineError;

    #[test]
    fn shapes_and_statuses() {
        let v = body(&ApiError::Unauthorized);
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "authentication_error");
        let r = render(&ApiError::Engine(EngineError::QueueFull(1)));
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()["retry-after"], "1");
        assert_eq!(
            classify(&ApiError::Loading),
            (StatusCode::SERVICE_UNAVAILABLE, "overloaded_error")
        );
    }
}
