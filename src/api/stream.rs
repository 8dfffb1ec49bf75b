//! The one streaming path every dialect shares: engine events → a dialect's [`Encoder`] → framed bytes, with
//! keep-alives while the engine is silent, and the non-streaming counterpart [`collect`].
//!
//! The response body owns the [`EventStream`]: when the client disconnects, hyper drops the body, the stream is
//! dropped, and the generation thread frees the sequence before its next step.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

use super::frame::{Frame, Framing};
use super::log::RequestLog;
use crate::engine::{Completion, EngineError, Event, EventStream, PromptToken, TokenInfo};

/// Turns engine events into one dialect's messages. Implementations are pure: no I/O, no clocks they do not own.
pub trait Encoder: Send + 'static {
    /// Messages sent as soon as the request is accepted.
    fn start(&mut self) -> Vec<Frame>;
    /// Messages for the prompt's tokens and log probabilities, sent before any text when the request asked
    /// for them (OpenAI's `echo` with `logprobs`).
    fn prompt(&mut self, _tokens: &[PromptToken]) -> Vec<Frame> {
        Vec::new()
    }
    /// Messages for new text (`text` may be empty while the engine holds characters back).
    fn delta(&mut self, text: &str, tokens: &[TokenInfo]) -> Vec<Frame>;
    /// The closing messages.
    fn done(&mut self, c: &Completion) -> Vec<Frame>;
    /// The single in-band error message after which the stream ends.
    fn error(&mut self, e: &EngineError) -> Vec<Frame>;
    /// What to send when the stream has been silent for a while; `None` sends nothing.
    fn keepalive(&self) -> Option<Frame>;
}

struct Driver<E> {
    events: EventStream,
    encoder: E,
    framing: Framing,
    ping: Duration,
    log: RequestLog,
    started: bool,
    finished: bool,
}

impl<E: Encoder> Driver<E> {
    /// The next chunk of bytes, or `None` once the closing messages were sent.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if !self.started {
            self.started = true;
            let frames = self.encoder.start();
            if !frames.is_empty() {
                return Some(self.bytes(&frames));
            }
        }
        while !self.finished {
            let ev = match tokio::time::timeout(self.ping, self.events.next()).await {
                Ok(ev) => ev,
                Err(_) => match self.encoder.keepalive() {
                    Some(f) => return Some(self.bytes(&[f])),
                    None => continue,
                },
            };
            let frames = self.on_event(ev);
            if !frames.is_empty() {
                return Some(self.bytes(&frames));
            }
        }
        None
    }

    fn on_event(&mut self, ev: Option<Event>) -> Vec<Frame> {
        match ev {
            Some(Event::Prompt(tokens)) => self.encoder.prompt(&tokens),
            Some(Event::Delta { text, tokens }) => self.encoder.delta(&text, &tokens),
            Some(Event::Done(c)) => {
                self.finished = true;
                self.log.finished(&c);
                self.encoder.done(&c)
            }
            Some(Event::Error(e)) => self.fail(e),
            None => self.fail(EngineError::Stopped),
        }
    }

    fn fail(&mut self, e: EngineError) -> Vec<Frame> {
        self.finished = true;
        self.log.failed(&e);
        self.encoder.error(&e)
    }

    fn bytes(&self, frames: &[Frame]) -> Bytes {
        Bytes::from(self.framing.encode(frames))
    }
}

/// A streaming response: headers now, then the encoder's messages as the engine produces them.
pub fn response<E: Encoder>(
    events: EventStream,
    encoder: E,
    framing: Framing,
    ping: Duration,
    log: RequestLog,
) -> Response {
    let driver = Driver {
        events,
        encoder,
        framing,
        ping,
        log,
        started: false,
        finished: false,
    };
    let body = futures_util::stream::unfold(driver, |mut d| async move {
        let chunk = d.next_chunk().await?;
        Some((Ok::<_, Infallible>(chunk), d))
    });
    streaming(Body::from_stream(body), framing.content_type())
}

/// A response whose body is streamed, with the headers every stream carries: never cached, never buffered by
/// a proxy.
pub fn streaming(body: Body, content_type: &'static str) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

/// A whole answer, for non-streaming requests.
#[derive(Debug, Clone, PartialEq)]
pub struct Collected {
    /// The prompt's tokens with their log probabilities, when the request asked for them.
    pub prompt: Vec<PromptToken>,
    pub text: String,
    pub tokens: Vec<TokenInfo>,
    pub completion: Completion,
}

/// Waits for the whole answer. If the client goes away meanwhile, the handler's future (and with it the event
/// stream) is dropped, which cancels the request.
pub async fn collect(
    mut events: EventStream,
    log: &mut RequestLog,
) -> Result<Collected, EngineError> {
    let (mut text, mut tokens, mut prompt) = (String::new(), Vec::new(), Vec::new());
    loop {
        match events.next().await {
            Some(Event::Prompt(p)) => prompt = p,
            Some(Event::Delta { text: t, tokens: k }) => {
                text.push_str(&t);
                tokens.extend(k);
            }
            Some(Event::Done(completion)) => {
                log.finished(&completion);
                return Ok(Collected {
                    prompt,
                    text,
                    tokens,
                    completion,
                });
            }
            Some(Event::Error(e)) => {
                log.failed(&e);
                return Err(e);
            }
            None => {
                log.failed(&EngineError::Stopped);
                return Err(EngineError::Stopped);
            }
        }
    }
}

/// `Server-Timing` for a finished request: queue, prefill, TTFT, decode and total in milliseconds.
pub fn server_timing(c: &Completion) -> HeaderValue {
    let t = &c.timings;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let v = format!(
        "queue;dur={:.3}, prefill;dur={:.3}, ttft;dur={:.3}, decode;dur={:.3}, total;dur={:.3}",
        ms(t.queued),
        ms(t.prefill),
        ms(t.ttft),
        ms(t.decode),
        ms(t.total)
    );
    HeaderValue::from_str(&v).expect("ASCII header")
}

/// A JSON response for a finished non-streaming request, with its timings attached.
pub fn json_with_timings(body: serde_json::Value, c: &Completion) -> Response {
    let mut resp = axum::Json(body).into_response();
    resp.headers_mut().insert("server-timing", server_timing(c));
    resp
}
