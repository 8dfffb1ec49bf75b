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
pub mod streams;
pub mod structured;
pub mod tools;
pub mod ui;
pub mod util;

use std::future::Future;

use axum::extract::DefaultBodyLimit;
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
        .merge(streams::routes())
        .merge(ui::routes())
        .fallback(middleware::not_found)
        .method_not_allowed_fallback(middleware::method_not_allowed)
        .layer(DefaultBodyLimit::max(config.body_limit))
        .layer(tower_http::timeout::RequestBodyDeadlineLayer::new(
            config.request_timeout,
        ))
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

/// Serves [`app`] on `listener` until `shutdown` completes, then waits for the connections in flight (the
/// caller bounds that wait). Every connection gets `TCP_NODELAY`, so a streamed token leaves at once instead of
/// waiting for the previous small write to be acknowledged (Nagle's algorithm against delayed ACKs costs 40 ms
/// per stream start otherwise), and must send its headers within the configured request timeout (a slowloris
/// client that trickles them is disconnected; the body has its own timeout in [`app`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let timeout = state.config().request_timeout;
    let service = hyper_util::service::TowerToHyperService::new(app(state));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "cannot set TCP_NODELAY");
        }
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(timeout)
            .serve_connection(hyper_util::rt::TokioIo::new(tcp), service.clone());
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
