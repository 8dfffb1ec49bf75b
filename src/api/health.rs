//! Operational routes: `GET /health` (200 once the model is loaded, 503 while loading or after a failed load),
//! `POST /tokenize` and `POST /detokenize` with the served model's tokenizer. Errors use OpenAI's shape.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::extract::Body;
use super::openai::error::OpenAiError;
use super::openai::request::{chat_prompt_text, tool_spec, Message};
use super::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
}

async fn health(State(state): State<AppState>) -> Response {
    let name = state.model_name();
    match state.engine() {
        Ok(engine) => {
            let shared = engine.shared();
            let stats = &shared.stats;
            let body = json!({
                "status": "ok", "model": name, "arch": shared.info.arch, "context_length": shared.info.context_length,
                "load_time_ms": shared.load_time.as_millis() as u64,
                "running": stats.running.load(std::sync::atomic::Ordering::Relaxed), "queued": engine.queued(),
            });
            Json(body).into_response()
        }
        Err(ApiError::Loading) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "loading", "model": name })),
        )
            .into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "error", "model": name, "error": e.to_string() })),
        )
            .into_response(),
    }
}

/// Text to tokenize: `content` (or `prompt`), or OpenAI chat `messages` (with `tools` and `tool_choice` when
/// given) rendered exactly as a chat completion renders them.
#[derive(Deserialize)]
struct TokenizeRequest {
    content: Option<String>,
    prompt: Option<String>,
    messages: Option<Vec<Message>>,
    tools: Option<Vec<Value>>,
    tool_choice: Option<Value>,
    parallel_tool_calls: Option<bool>,
    /// Keep the BOS token the model adds (default true).
    add_special: Option<bool>,
}

async fn tokenize(
    State(state): State<AppState>,
    Body(req, _): Body<TokenizeRequest, OpenAiError>,
) -> Result<Json<Value>, OpenAiError> {
    let engine = state.engine()?;
    let shared = engine.shared();
    let text = match (req.content.or(req.prompt), req.messages) {
        (Some(t), None) => t,
        (None, Some(msgs)) => {
            let tools = tool_spec(
                req.tools.unwrap_or_default(),
                req.tool_choice.as_ref(),
                req.parallel_tool_calls.unwrap_or(true),
            )?;
            chat_prompt_text(shared, msgs, &tools)?
        }
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of `content` (or `prompt`) and `messages`",
            )
            .into())
        }
    };
    let mut ids = shared.tokenizer.encode(&text)?;
    if req.add_special == Some(false)
        && shared.tokenizer.add_bos.is_some()
        && ids.first() == shared.tokenizer.add_bos.as_ref()
    {
        ids.remove(0);
    }
    Ok(Json(
        json!({ "tokens": ids, "count": ids.len(), "max_model_len": shared.info.context_length }),
    ))
}

#[derive(Deserialize)]
struct DetokenizeRequest {
    tokens: Vec<u32>,
}

async fn detokenize(
    State(state): State<AppState>,
    Body(req, _): Body<DetokenizeRequest, OpenAiError>,
) -> Result<Json<Value>, OpenAiError> {
    let shared = state.engine()?.shared().clone();
    if let Some(bad) = req
        .tokens
        .iter()
        .find(|&&id| id as usize >= shared.info.vocab_size)
    {
        return Err(ApiError::bad_request(format!(
            "token id {bad} is outside the vocabulary of {}",
            shared.info.vocab_size
        ))
        .into());
    }
    Ok(Json(
        json!({ "content": shared.tokenizer.decode(&req.tokens, false)? }),
    ))
}
