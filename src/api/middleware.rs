//! Cross-cutting layers: the API key check, the `x-rill-model` header, CORS, and 404s and 405s, each answering in the
//! dialect the path belongs to (`/api/…` Ollama, `/v1/messages…` Anthropic, anything else OpenAI).

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;
use tower_http::cors::{AllowHeaders, AllowOrigin, Any, CorsLayer};

use super::error::ApiError;
use super::state::AppState;
use super::{anthropic, ollama, openai};

/// The dialect a path belongs to, for errors raised outside a handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    OpenAi,
    Ollama,
    Anthropic,
}

impl Dialect {
    pub fn of(path: &str) -> Self {
        if path.starts_with("/api/") {
            Self::Ollama
        } else if path.starts_with("/v1/messages") {
            Self::Anthropic
        } else {
            Self::OpenAi
        }
    }

    pub fn render(self, e: &ApiError) -> Response {
        match self {
            Self::OpenAi => openai::error::render(e),
            Self::Ollama => ollama::error::render(e),
            Self::Anthropic => anthropic::error::render(e),
        }
    }
}

/// Routes open without a key: health probes, Ollama's liveness text, the chat page (it asks for the key), and a
/// browser stream's event feed (guarded by the stream's own token, since an `EventSource` cannot send headers).
fn is_open(method: &Method, path: &str) -> bool {
    matches!(path, "/health" | "/")
        || super::ui::is_page(path)
        || (method == Method::GET && super::streams::is_event_feed(path))
}

/// The key a client presented: `Authorization: Bearer <key>` (the scheme's name in any case, as HTTP has it)
/// or `x-api-key: <key>`.
fn presented_key(h: &HeaderMap) -> Option<&str> {
    let bearer = h
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, key)| key);
    bearer
        .or_else(|| h.get("x-api-key").and_then(|v| v.to_str().ok()))
        .map(str::trim)
}

/// Refuses requests without the configured key (401 in the path's dialect).
pub async fn auth(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(key) = state.config().api_key.as_deref() else {
        return next.run(req).await;
    };
    let path = req.uri().path();
    if is_open(req.method(), path)
        || req.method() == Method::OPTIONS
        || presented_key(req.headers()).is_some_and(|k| super::util::same_secret(k, key))
    {
        return next.run(req).await;
    }
    Dialect::of(path).render(&ApiError::Unauthorized)
}

/// Names the served model on every response.
pub async fn model_header(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    if let Ok(v) = HeaderValue::from_str(state.model_name()) {
        resp.headers_mut()
            .insert(HeaderName::from_static("x-rill-model"), v);
    }
    resp
}

/// 404 for unknown routes, in the path's dialect.
pub async fn not_found(req: Request) -> Response {
    let path = req.uri().path().to_string();
    Dialect::of(&path).render(&ApiError::RouteNotFound {
        method: req.method().to_string(),
        path,
    })
}

/// 405 for a known route called with the wrong method, in the path's dialect.
pub async fn method_not_allowed(req: Request) -> Response {
    let path = req.uri().path().to_string();
    Dialect::of(&path).render(&ApiError::MethodNotAllowed {
        method: req.method().to_string(),
        path,
    })
}

/// CORS for the configured origins; `None` (no layer, no CORS headers) when none are configured.
pub fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::from(Any)
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    let layer = CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::GET, Method::POST, Method::DELETE, Method::OPTIONS])
        // The headers the preflight asks for, named: a `*` never covers `Authorization` (the Fetch standard),
        // which browser clients send their API key in.
        .allow_headers(AllowHeaders::mirror_request())
        .expose_headers([
            HeaderName::from_static("x-rill-model"),
            HeaderName::from_static("server-timing"),
            header::RETRY_AFTER,
            header::LOCATION,
        ]);
    Some(layer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialect_by_path() {
        assert_eq!(Dialect::of("/api/chat"), Dialect::Ollama);
        assert_eq!(Dialect::of("/v1/messages/count_tokens"), Dialect::Anthropic);
        assert_eq!(Dialect::of("/v1/chat/completions"), Dialect::OpenAi);
        assert_eq!(Dialect::of("/nope"), Dialect::OpenAi);
    }

    #[test]
    fn keys() {
        let mut h = HeaderMap::new();
        assert_eq!(presented_key(&h), None);
        h.insert("x-api-key", HeaderValue::from_static("k1"));
        assert_eq!(presented_key(&h), Some("k1"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer k2"));
        assert_eq!(presented_key(&h), Some("k2"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("bearer k3"));
        assert_eq!(presented_key(&h), Some("k3"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic k4"));
        assert_eq!(presented_key(&h), Some("k1"));
        use crate::api::util::same_secret;
        assert!(
            same_secret("abc", "abc") && !same_secret("abc", "abd") && !same_secret("abc", "ab")
        );
    }
}
