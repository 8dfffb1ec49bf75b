//! The chat page at `/ui`: three hand-written files (HTML, CSS, JS) built into the binary, served under a strict
//! Content-Security-Policy that allows no inline code and no request to anywhere but this server. The page talks
//! to rill through `/health` and the resumable streams of [`super::streams`].

use axum::http::{header, HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

use super::state::AppState;

/// Where the page lives.
pub const PATH: &str = "/ui";

const INDEX_HTML: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const APP_CSS: &str = include_str!("app.css");

/// Scripts and styles only from the page's own files, requests only to this server, no framing, no forms posted
/// anywhere: model output that slipped past the page's renderer still could not run or phone home.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            PATH,
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route("/ui/", get(|| async { Redirect::permanent(PATH) }))
        .route(
            "/ui/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/ui/app.css",
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        )
}

/// Whether `path` is part of the page (served without an API key: the page asks for one when the API needs it).
pub fn is_page(path: &str) -> bool {
    path == PATH || path.starts_with("/ui/")
}

/// Whether a request to `/` comes from a browser's address bar (it accepts HTML); API clients such as Ollama's,
/// which probe `/` for its liveness text, never ask for HTML.
pub fn wants_page(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        // Revalidated on every load, so a new build's page is never mixed with an old script.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            HeaderValue::from_static("same-origin"),
        ),
    ];
    (headers, body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_paths() {
        assert!(is_page("/ui") && is_page("/ui/app.js"));
        assert!(!is_page("/uix") && !is_page("/v1/ui"));
    }

    #[test]
    fn the_page_loads_only_its_own_files() {
        for needle in ["/ui/app.js", "/ui/app.css"] {
            assert!(INDEX_HTML.contains(needle), "index.html must load {needle}");
        }
        assert!(!INDEX_HTML.contains("://"), "no URL outside this server");
        assert!(!APP_CSS.contains("url(http"), "no URL outside this server");
        assert!(
            !INDEX_HTML.contains("<script>"),
            "inline scripts are refused by the CSP"
        );
        assert!(
            !APP_JS.contains(".innerHTML"),
            "model output must never become HTML"
        );
    }

    #[test]
    fn browsers_get_the_page_at_the_root_and_clients_do_not() {
        let mut h = HeaderMap::new();
        assert!(!wants_page(&h));
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        assert!(!wants_page(&h));
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/html,application/xhtml+xml,*/*;q=0.8"),
        );
        assert!(wants_page(&h));
    }
}
