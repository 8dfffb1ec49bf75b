//! The HTTP layer: the three dialects people's clients speak (OpenAI, Ollama, Anthropic) over one engine, plus
//! health and tokenizer routes. [`app`] builds the router once; `rill serve` and the tests use it.
//!
//! Request path: a dialect's handler parses and validates its body ([`extract`], `*/request.rs`), submits an
//! engine request (refusals come back before the first byte, with a real status), then either collects the
//! answer or streams it through [`stream`], where a pure per-dialect encoder (`*/wire.rs`) turns engine events
//! into messages and [`frame`] turns messages into SSE or NDJSON bytes.

pub mod anthropic;
pub mod error;
pub mod extract;
pub mod frame;
pub mod health;
pub mod log;
pub mod logprobs;
pub mod metrics;
pub mod middleware;
pub mod ollama;
pub mod openai;
pub mod params;
pub mod state;
pub mod stream;
pub mod util;

use std::future::Future;

use axum::extract::DefaultBodyLimit;
use axum::serve::ListenerExt;
use axum::Router;

pub use error::ApiError;
pub use state::{ApiConfig, AppState};

/// The router with every route, over one served model.
pub fn app(state: AppState) -> Router {
    let config = state.config().clone();
    let router = Router::new()
        .merge(health::routes())
        .merge(metrics::routes())
        .merge(openai::routes())
        .merge(ollama::routes())
        .merge(anthropic::routes())
        .fallback(middleware::not_found)
        .method_not_allowed_fallback(middleware::method_not_allowed)
        .layer(DefaultBodyLimit::max(config.body_limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::auth,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::model_header,
        ))
        .with_state(state);
    match middleware::cors(&config.cors_origins) {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

/// Serves [`app`] on `listener` until `shutdown` completes. Every connection gets `TCP_NODELAY`, so a streamed
/// token leaves at once instead of waiting for the previous small write to be acknowledged (Nagle's algorithm
/// against delayed ACKs costs 40 ms per stream start otherwise).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await
}
