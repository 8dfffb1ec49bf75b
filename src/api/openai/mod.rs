//! The OpenAI dialect: `POST /v1/chat/completions`, `POST /v1/completions`, `GET /v1/models[/{id}]`
//! (also without the `/v1` prefix, for clients configured with a bare base URL).

pub mod error;
pub mod request;
pub mod wire;

use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use self::error::OpenAiError;
use self::request::{ChatRequest, CompletionRequest, Prepared};
use self::wire::{Kind, Meta, OpenAiStream};
use super::extract::Body;
use super::frame::Framing;
use super::log::RequestLog;
use super::state::AppState;
use super::{stream, util};

type OaBody<T> = Body<T, OpenAiError>;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route("/chat/completions", post(chat))
        .route("/completions", post(completions))
        .route("/models", get(models))
}

async fn chat(
    State(state): State<AppState>,
    Body(req, _): OaBody<ChatRequest>,
) -> Result<Response, OpenAiError> {
    state.check_model(req.common.model.as_deref())?;
    let prepared = req.prepare(state.engine()?.shared())?;
    generate(&state, prepared, Kind::Chat, "/v1/chat/completions").await
}

async fn completions(
    State(state): State<AppState>,
    Body(req, _): OaBody<CompletionRequest>,
) -> Result<Response, OpenAiError> {
    state.check_model(req.common.model.as_deref())?;
    let prepared = req.prepare(state.engine()?.shared())?;
    generate(&state, prepared, Kind::Text, "/v1/completions").await
}

async fn generate(
    state: &AppState,
    p: Prepared,
    kind: Kind,
    route: &'static str,
) -> Result<Response, OpenAiError> {
    let prefix = if kind == Kind::Chat {
        "chatcmpl-"
    } else {
        "cmpl-"
    };
    let meta = Meta::new(prefix, state.model_name());
    let mut log = RequestLog::new(route, state.model_name(), p.gen.prompt.len(), p.stream);
    let events = state.submit(p.gen).inspect_err(|e| log.refused(e))?;
    if p.stream {
        let enc = OpenAiStream::new(meta, kind, p.include_usage)
            .with(p.logprobs, p.echo, p.token_ids)
            .with_tools(p.tools);
        return Ok(stream::response(
            events,
            enc,
            Framing::Sse,
            state.config().ping_interval,
            log,
        ));
    }
    let done = stream::collect(events, &mut log).await?;
    let body = match kind {
        Kind::Chat => wire::chat_completion(&meta, &done, p.logprobs, p.tools),
        Kind::Text => {
            wire::text_completion(&meta, &done, p.echo.as_deref(), p.logprobs, p.token_ids)
        }
    };
    Ok(stream::json_with_timings(body, &done.completion))
}

fn created(state: &AppState) -> Result<u64, OpenAiError> {
    Ok(util::unix_secs(state.engine()?.shared().loaded_at))
}

async fn models(State(state): State<AppState>) -> Result<Json<Value>, OpenAiError> {
    let created = created(&state)?;
    Ok(Json(
        json!({ "object": "list", "data": [wire::model_object(state.model_name(), created)] }),
    ))
}

async fn model(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, OpenAiError> {
    let created = created(&state)?;
    state.check_model_strict(&id)?;
    Ok(Json(wire::model_object(state.model_name(), created)))
}
