//! Resumable streams for browsers: `POST /v1/streams` submits a chat request (OpenAI's body) and answers with a
//! stream id and a short-lived token; `GET /v1/streams/{id}/events?token=…` is an `EventSource` feed of that
//! generation (`delta`, then `done`, `cancelled` or `error`, each with an `id:`); `DELETE /v1/streams/{id}?token=…`
//! stops it.
//!
//! The generation does not belong to a connection. A pump task drains the engine's events into the stream's
//! [`registry::Entry`]; readers replay what they missed after their `Last-Event-ID` and then follow the live tail.
//! A dropped connection therefore loses nothing: the browser reconnects by itself, and the generation goes on for
//! `--resume-window-secs` without a reader before it is cancelled and freed. The token is what lets an
//! `EventSource` (which cannot send headers) read a stream on a server with an API key, without the key in a URL.

pub mod registry;
pub mod wire;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body as HttpBody, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use self::registry::{Entry, Read, ReaderGuard, Registry};
use super::error::ApiError;
use super::extract::Body;
use super::log::RequestLog;
use super::openai::error::OpenAiError;
use super::openai::request::ChatRequest;
use super::state::AppState;
use crate::engine::{Event, EventStream};

/// The route prefix; `/v1/streams/{id}/events` is reachable without an API key (the stream token guards it).
pub const PATH: &str = "/v1/streams";

/// How long a browser waits before it reconnects a dropped stream.
const RETRY_MS: u64 = 1000;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(PATH, post(create))
        .route("/v1/streams/{id}/events", get(events))
        .route("/v1/streams/{id}", axum::routing::delete(cancel))
}

/// Whether `path` is a stream's event feed, which the stream token guards instead of the API key.
pub fn is_event_feed(path: &str) -> bool {
    path.strip_prefix("/v1/streams/")
        .and_then(|rest| rest.strip_suffix("/events"))
        .is_some_and(|id| !id.is_empty() && !id.contains('/'))
}

async fn create(
    State(state): State<AppState>,
    Body(req, _): Body<ChatRequest, OpenAiError>,
) -> Result<Response, OpenAiError> {
    state.check_model(req.common.model.as_deref())?;
    let p = req.prepare(state.engine()?.shared())?;
    if p.logprobs {
        return Err(ApiError::bad_request("logprobs are not sent on /v1/streams").into());
    }
    if p.tools.is_some() {
        return Err(ApiError::bad_request(
            "tool calls are not sent on /v1/streams; use /v1/chat/completions",
        )
        .into());
    }
    let streams = state.streams();
    let entry = streams.create().ok_or(ApiError::TooManyStreams)?;
    let mut log = RequestLog::new(PATH, state.model_name(), p.gen.prompt.len(), true);
    let events = match state.submit(p.gen) {
        Ok(events) => events,
        Err(e) => {
            log.refused(&e);
            streams.remove(&entry.id);
            return Err(e.into());
        }
    };
    tokio::spawn(pump(streams.clone(), entry.clone(), events, log));
    let (id, token) = (&entry.id, entry.token());
    let body = json!({
        "id": id,
        "token": token,
        "events_url": format!("{PATH}/{id}/events?token={token}"),
        "cancel_url": format!("{PATH}/{id}?token={token}"),
        "model": state.model_name(),
        "resume_window_secs": streams.window().as_secs_f64(),
    });
    let location = HeaderValue::from_str(&format!("{PATH}/{id}")).expect("ASCII id");
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(body),
    )
        .into_response())
}

/// Drains one generation into its entry, cancels it when asked to or when nobody read it for the window, then
/// keeps the entry for late readers until the window has passed.
async fn pump(streams: Registry, entry: Arc<Entry>, mut events: EventStream, mut log: RequestLog) {
    let window = streams.window();
    let mut tick = tokio::time::interval(
        (window / 4).clamp(Duration::from_millis(20), Duration::from_secs(1)),
    );
    let mut enc = wire::Encoder::default();
    loop {
        tokio::select! {
            ev = events.next() => {
                let m = match ev {
                    Some(Event::Delta { text, tokens }) => enc.delta(&text, &tokens),
                    Some(Event::Prompt(_)) => None,
                    Some(Event::Done(c)) => {
                        log.finished(&c);
                        Some(enc.done(&c))
                    }
                    Some(Event::Error(e)) => {
                        log.failed(&e);
                        Some(enc.error(&e))
                    }
                    None => Some(enc.error(&crate::engine::EngineError::Stopped)),
                };
                if let Some(m) = m {
                    entry.push(&m);
                }
                if entry.ended() {
                    break;
                }
            }
            _ = entry.stopped() => {
                entry.push(&wire::cancelled("stopped by the client"));
                break;
            }
            _ = tick.tick() => {
                if entry.expired(window, Instant::now()) {
                    tracing::info!(stream = %entry.id, "no reader came back within the resume window: cancelling");
                    entry.push(&wire::cancelled("no reader within the resume window"));
                    break;
                }
            }
        }
    }
    // Dropping the event stream cancels a generation still running (the log records it as cancelled).
    drop(events);
    drop(log);
    while !entry.expired(window, Instant::now()) {
        tick.tick().await;
    }
    streams.remove(&entry.id);
}

async fn events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, OpenAiError> {
    let query = query.unwrap_or_default();
    let entry = find(&state, &id, &query)?;
    let last = last_event_id(&headers, &query)?;
    if last > entry.last_id() {
        return Err(ApiError::bad_request(format!(
            "Last-Event-ID {last} is past this stream's last event ({})",
            entry.last_id()
        ))
        .into());
    }
    if entry.ended() && last == entry.last_id() {
        // Everything was delivered: 204 tells an EventSource not to reconnect again.
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    if let Read::Gap { first_kept } = entry.read_after(last) {
        // A status other than 200 ends an EventSource for good, instead of a reconnect that meets the gap again.
        let e = ApiError::StreamGone(format!(
            "cannot resume after event {last}: events before {first_kept} were dropped to bound memory"
        ));
        return Err(e.into());
    }
    let reader = Reader {
        version: entry.subscribe(),
        _guard: entry.attach(),
        entry,
        cursor: last,
        ping: state.config().ping_interval,
        opened: false,
        closed: false,
    };
    let body = futures_util::stream::unfold(reader, |mut r| async move {
        let chunk = r.next_chunk().await?;
        Some((Ok::<_, Infallible>(chunk), r))
    });
    Ok(super::stream::streaming(
        HttpBody::from_stream(body),
        "text/event-stream",
    ))
}

/// One connected `EventSource`: replays from its cursor, then follows new events, with keep-alives in silence.
struct Reader {
    entry: Arc<Entry>,
    version: tokio::sync::watch::Receiver<u64>,
    _guard: ReaderGuard,
    cursor: u64,
    ping: Duration,
    opened: bool,
    closed: bool,
}

impl Reader {
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if !self.opened {
            self.opened = true;
            return Some(Bytes::from(wire::retry(RETRY_MS)));
        }
        while !self.closed {
            self.version.borrow_and_update();
            match self.entry.read_after(self.cursor) {
                Read::Frames(bytes, last) => {
                    self.cursor = last;
                    return Some(Bytes::from(bytes));
                }
                Read::End => return None,
                Read::Gap { first_kept } => {
                    self.closed = true;
                    let m = wire::gap(self.cursor, first_kept);
                    return Some(Bytes::from(wire::unnumbered(&m)));
                }
                Read::Wait => {
                    if tokio::time::timeout(self.ping, self.version.changed())
                        .await
                        .is_err()
                    {
                        return Some(Bytes::from_static(wire::KEEPALIVE));
                    }
                }
            }
        }
        None
    }
}

async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, OpenAiError> {
    let entry = find(&state, &id, &query.unwrap_or_default())?;
    let cancelled = entry.request_stop();
    Ok(Json(json!({ "id": entry.id, "cancelled": cancelled })).into_response())
}

/// The stream `id` if the query's `token` opens it; an unknown id and a wrong token look alike (404).
fn find(state: &AppState, id: &str, query: &str) -> Result<Arc<Entry>, ApiError> {
    let token = query_param(query, "token").unwrap_or_default();
    state
        .streams()
        .get(id, token)
        .ok_or_else(|| ApiError::StreamNotFound(id.to_string()))
}

/// The last event the client saw: the `Last-Event-ID` header an `EventSource` sends when it reconnects, or a
/// `last_event_id` query parameter for clients that cannot set headers; 0 when neither is present.
fn last_event_id(headers: &HeaderMap, query: &str) -> Result<u64, ApiError> {
    let raw = match headers.get("last-event-id") {
        Some(v) => v.to_str().ok(),
        None => query_param(query, "last_event_id"),
    };
    match raw.map(str::trim) {
        None | Some("") => Ok(0),
        Some(v) => v.parse().map_err(|_| {
            ApiError::bad_request(format!("Last-Event-ID must be an event id, not `{v}`"))
        }),
    }
}

/// A query parameter's raw value (ids, tokens and numbers need no percent-decoding).
fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_feeds_are_recognised_exactly() {
        assert!(is_event_feed("/v1/streams/strm_abc/events"));
        assert!(!is_event_feed("/v1/streams//events"));
        assert!(!is_event_feed("/v1/streams/a/b/events"));
        assert!(!is_event_feed("/v1/streams/strm_abc"));
        assert!(!is_event_feed("/v1/streams"));
    }

    #[test]
    fn last_event_id_from_header_or_query() {
        let mut h = HeaderMap::new();
        assert_eq!(last_event_id(&h, "token=x").unwrap(), 0);
        assert_eq!(last_event_id(&h, "token=x&last_event_id=7").unwrap(), 7);
        h.insert("last-event-id", HeaderValue::from_static("12"));
        assert_eq!(last_event_id(&h, "last_event_id=7").unwrap(), 12);
        h.insert("last-event-id", HeaderValue::from_static("-1"));
        assert!(last_event_id(&h, "").is_err());
    }
}
