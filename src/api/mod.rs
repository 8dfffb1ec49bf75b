//! The HTTP layer: routes built once by [`app`], used by `rill serve` and by tests.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::engine::EngineHandle;

/// The router with every route, over one engine.
pub fn app(engine: EngineHandle) -> Router {
    Router::new()
        .route("/health", get(health))
        .with_state(engine)
}

async fn health(State(engine): State<EngineHandle>) -> Json<serde_json::Value> {
    Json(json!({ "status": "ok", "model": engine.info().name }))
}
