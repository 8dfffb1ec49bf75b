//! OpenAI's error shape, `{"error":{"message","type","param","code"}}`, and its HTTP statuses; the only place
//! an [`ApiError`] becomes an OpenAI response.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::api::error::{dialect_error, with_retry_after, ApiError, ErrorKind};

dialect_error!(
    /// An error answered in OpenAI's shape.
    OpenAiError,
    render
);

/// Status, `type` and `code` for an error.
pub fn classify(e: &ApiError) -> (StatusCode, &'static str, Option<&'static str>) {
    match e.kind() {
        ErrorKind::InvalidRequest => (StatusCode::BAD_REQUEST, "invalid_request_error", None),
        ErrorKind::Authentication => (
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            Some("invalid_api_key"),
        ),
        // OpenAI's API types a missing model or route as an invalid request (it has no `not_found_error`).
        ErrorKind::NotFound => {
            let code = matches!(e, ApiError::ModelNotFound { .. }).then_some("model_not_found");
            (StatusCode::NOT_FOUND, "invalid_request_error", code)
        }
        ErrorKind::Gone => (
            StatusCode::GONE,
            "invalid_request_error",
            Some("stream_gone"),
        ),
        ErrorKind::MethodNotAllowed => (
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            None,
        ),
        ErrorKind::TooLarge => (
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            Some("request_too_large"),
        ),
        ErrorKind::Timeout => (
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            Some("request_timeout"),
        ),
        ErrorKind::Overloaded => (
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            Some("queue_full"),
        ),
        ErrorKind::Unavailable => (
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable_error",
            None,
        ),
        ErrorKind::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "server_error", None),
    }
}

/// The JSON body of an error, also used in-band after a stream has started.
pub fn body(e: &ApiError) -> Value {
    let (_, kind, code) = classify(e);
    json!({ "error": { "message": e.to_string(), "type": kind, "param": null, "code": code } })
}

pub fn render(e: &ApiError) -> Response {
    let (status, ..) = classify(e);
    with_retry_after(e, (status, axum::Json(body(e))).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineError;

    #[test]
    fn every_key_is_present() {
        let v = body(&ApiError::bad_request("bad"));
        let err = v["error"].as_object().unwrap();
        for k in ["message", "type", "param", "code"] {
            assert!(err.contains_key(k), "{k} missing in {v}");
        }
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }

    #[test]
    fn statuses() {
        let full = ApiError::Engine(EngineError::QueueFull(4));
        let resp = render(&full);
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()["retry-after"], "1");
        assert_eq!(
            classify(&ApiError::Unauthorized).0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            classify(&ApiError::TooLarge { limit: 1 }).0,
            StatusCode::PAYLOAD_TOO_LARGE
        );
        let nf = ApiError::ModelNotFound {
            requested: "x".into(),
            served: "y".into(),
        };
        assert_eq!(
            classify(&nf),
            (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                Some("model_not_found")
            )
        );
    }
}
