//! The JSON body extractor: enforces the body limit and parses, failing in the caller's dialect.
//!
//! `Body<T, E>` reads the body (413 over the limit), parses it as `T` (400 with serde's message naming the
//! field otherwise) and rejects with `E`, the dialect's error type, so even a malformed request gets the error
//! shape its client understands. Content-Type is not checked: curl and Ollama clients often omit it.

use std::marker::PhantomData;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::state::AppState;

/// A request body parsed as `T`, rejected with dialect error `E`.
pub struct Body<T, E>(pub T, pub PhantomData<E>);

impl<T, E> FromRequest<AppState> for Body<T, E>
where
    T: DeserializeOwned,
    E: From<ApiError> + IntoResponse,
{
    type Rejection = E;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, E> {
        // A declared length over the limit is refused at once, not after waiting for a body never read.
        let limit = state.config().body_limit;
        let declared = req
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(E::from(ApiError::TooLarge { limit }));
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|r| E::from(body_error(r, state)))?;
        parse(&bytes).map(|v| Body(v, PhantomData)).map_err(E::from)
    }
}

/// Parses a body; an empty body is treated as `{}` so that optional-only requests work without one.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    serde_json::from_slice(bytes).map_err(|e| ApiError::BadJson(e.to_string()))
}

fn body_error(r: BytesRejection, state: &AppState) -> ApiError {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::TooLarge {
            limit: state.config().body_limit,
        }
    } else if timed_out(&r) {
        ApiError::BodyTimeout {
            secs: state.config().request_timeout.as_secs_f64(),
        }
    } else {
        ApiError::BadRequest(r.body_text())
    }
}

/// Whether reading the body failed because the body timeout ran out.
fn timed_out(r: &BytesRejection) -> bool {
    let mut e: Option<&(dyn std::error::Error + 'static)> = Some(r);
    while let Some(err) = e {
        if err.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        e = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    struct Req {
        #[allow(dead_code)]
        model: String,
    }

    #[test]
    fn parse_errors_name_the_field() {
        let e = parse::<Req>(b"{}").unwrap_err();
        assert!(
            matches!(&e, ApiError::BadJson(m) if m.contains("model")),
            "{e}"
        );
        assert!(matches!(
            parse::<Req>(b"{not json"),
            Err(ApiError::BadJson(_))
        ));
        assert!(parse::<Req>(br#"{"model":"m","extra":1}"#).is_ok());
    }
}
