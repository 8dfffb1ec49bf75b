//! The Ollama dialect: `POST /api/generate`, `POST /api/chat` (NDJSON, streaming unless `"stream": false`),
//! `GET /api/tags`, `POST /api/show`, `GET /api/ps`, `GET /api/version`, and `GET /`, which clients probe.
//! The request's `model` must name the served model (with or without `:latest`), else 404. `/api/chat` takes
//! `tools` and answers calls in `message.tool_calls`, each streamed whole once complete.

pub mod error;
pub mod request;
pub mod wire;

use crate::api::tools::parse::Reading;
use std::time::SystemTime;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use self::error::OllamaError;
use self::request::{ChatRequest, GenerateRequest, Plan};
use self::wire::{Listing, Mode, OllamaStream};
use super::error::ApiError;
use super::extract::Body;
use super::frame::Framing;
use super::log::RequestLog;
use super::state::AppState;
use super::stream;

type OlBody<T> = Body<T, OllamaError>;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(root))
        .route("/api/generate", post(generate))
        .route("/api/chat", post(chat))
        .route("/api/tags", get(tags))
        .route("/api/show", post(show))
        .route("/api/ps", get(ps))
        .route("/api/version", get(version))
}

/// Ollama's liveness text for API clients; a browser opening the server's address is sent to the chat page.
async fn root(headers: axum::http::HeaderMap) -> Response {
    if super::ui::wants_page(&headers) {
        return axum::response::Redirect::to(super::ui::PATH).into_response();
    }
    "rill is running\n".into_response()
}

async fn generate(
    State(state): State<AppState>,
    Body(req, _): OlBody<GenerateRequest>,
) -> Result<Response, OllamaError> {
    let model = req.common.model()?.to_string();
    state.check_model_strict(&model)?;
    match req.plan(state.engine()?.shared())? {
        Plan::Load => {
            let load = wire::load_response(
                &model,
                &Mode::Generate { prompt: vec![] },
                SystemTime::now(),
            );
            Ok(Json(load).into_response())
        }
        Plan::Generate { gen, stream, .. } => {
            let mode = Mode::Generate {
                prompt: gen.prompt.clone(),
            };
            run(&state, model, mode, *gen, stream, None, "/api/generate").await
        }
    }
}

async fn chat(
    State(state): State<AppState>,
    Body(req, _): OlBody<ChatRequest>,
) -> Result<Response, OllamaError> {
    let model = req.common.model()?.to_string();
    state.check_model_strict(&model)?;
    match req.plan(state.engine()?.shared())? {
        Plan::Load => {
            Ok(Json(wire::load_response(&model, &Mode::Chat, SystemTime::now())).into_response())
        }
        Plan::Generate { gen, stream, tools } => {
            run(&state, model, Mode::Chat, *gen, stream, tools, "/api/chat").await
        }
    }
}

async fn run(
    state: &AppState,
    model: String,
    mode: Mode,
    gen: crate::engine::GenRequest,
    streaming: bool,
    tools: Option<Reading>,
    route: &'static str,
) -> Result<Response, OllamaError> {
    let mut log = RequestLog::new(route, state.model_name(), gen.prompt.len(), streaming);
    let logprobs = gen.logprobs.is_some();
    let events = state.submit(gen).inspect_err(|e| log.refused(e))?;
    let enc = OllamaStream::new(model, mode, SystemTime::now)
        .with_logprobs(logprobs)
        .with_tools(tools);
    if streaming {
        return Ok(stream::response(
            events,
            enc,
            Framing::Ndjson,
            state.config().ping_interval,
            log,
        ));
    }
    let done = stream::collect(events, &mut log).await?;
    Ok(stream::json_with_timings(
        enc.whole(&done),
        &done.completion,
    ))
}

fn listing(state: &AppState) -> Result<Listing<'_>, ApiError> {
    let engine = state.engine()?;
    let shared = engine.shared();
    Ok(Listing {
        name: state.model_name(),
        info: &shared.info,
        size: state.model_size().unwrap_or(0),
        modified: shared.loaded_at,
        template: shared.chat.source(),
    })
}

async fn tags(State(state): State<AppState>) -> Result<Json<Value>, OllamaError> {
    Ok(Json(json!({ "models": [listing(&state)?.tag()] })))
}

async fn ps(State(state): State<AppState>) -> Result<Json<Value>, OllamaError> {
    Ok(Json(json!({ "models": [listing(&state)?.running()] })))
}

#[derive(Deserialize)]
struct ShowRequest {
    model: Option<String>,
    /// The older name of `model`.
    name: Option<String>,
}

async fn show(
    State(state): State<AppState>,
    Body(req, _): OlBody<ShowRequest>,
) -> Result<Json<Value>, OllamaError> {
    let model = req
        .model
        .or(req.name)
        .ok_or_else(|| ApiError::bad_request("`model` is required"))?;
    state.check_model_strict(&model)?;
    Ok(Json(listing(&state)?.show()))
}

async fn version() -> Json<Value> {
    Json(json!({ "version": env!("CARGO_PKG_VERSION") }))
}
