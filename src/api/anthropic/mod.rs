//! The Anthropic dialect: `POST /v1/messages` (events or one message) and `POST /v1/messages/count_tokens`.
//! `x-api-key` and `anthropic-version` are accepted; the version is not checked.

pub mod error;
pub mod request;
pub mod wire;

use axum::extract::State;
use axum::response::Response;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

use self::error::AnthropicError;
use self::request::MessagesRequest;
use self::wire::AnthropicStream;
use super::extract::Body;
use super::frame::Framing;
use super::log::RequestLog;
use super::state::AppState;
use super::{stream, util};

type AnBody<T> = Body<T, AnthropicError>;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/messages", post(messages))
        .route("/v1/messages/count_tokens", post(count_tokens))
}

async fn messages(
    State(state): State<AppState>,
    Body(req, _): AnBody<MessagesRequest>,
) -> Result<Response, AnthropicError> {
    state.check_model(req.model.as_deref())?;
    let p = req.prepare(state.engine()?.shared())?;
    let (id, model) = (util::new_id("msg_"), state.model_name().to_string());
    let prompt_tokens = p.gen.prompt.len();
    let mut log = RequestLog::new("/v1/messages", &model, prompt_tokens, p.stream);
    let events = state.submit(p.gen).inspect_err(|e| log.refused(e))?;
    if p.stream {
        let enc = AnthropicStream::new(id, model, prompt_tokens).with_tools(p.tools);
        return Ok(stream::response(
            events,
            enc,
            Framing::Sse,
            state.config().ping_interval,
            log,
        ));
    }
    let done = stream::collect(events, &mut log).await?;
    Ok(stream::json_with_timings(
        wire::message(&id, &model, &done, p.tools),
        &done.completion,
    ))
}

async fn count_tokens(
    State(state): State<AppState>,
    Body(req, _): AnBody<MessagesRequest>,
) -> Result<Json<Value>, AnthropicError> {
    state.check_model(req.model.as_deref())?;
    let ids = req.prompt(state.engine()?.shared())?;
    Ok(Json(json!({ "input_tokens": ids.len() })))
}
