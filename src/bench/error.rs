//! Errors of `rill bench`: [`BenchError`] stops the whole run (bad settings, an unreachable server, an output
//! file that cannot be written); [`RequestError`] is one measured request's failure, recorded and counted
//! without stopping the run.

use std::path::PathBuf;

use super::sse::BadFrame;

/// A failure that ends the benchmark.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("invalid setting: {0}")]
    Invalid(String),
    #[error("building the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("GET {url}: {source}")]
    Fetch {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("GET {url}: HTTP {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("GET {url} lists no models; name one with --model")]
    NoModels { url: String },
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{failed} of {total} measured requests failed (see the `error` of each request)")]
    RequestsFailed { failed: usize, total: usize },
}

/// Why one request failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RequestError {
    /// A non-success status before the stream started, with the start of the body.
    #[error("HTTP {status}: {body}")]
    Status { status: u16, body: String },
    /// An `{"error": ...}` frame after the stream started.
    #[error("in-band error: {0}")]
    InBand(String),
    /// Connecting, sending or reading failed.
    #[error("transport: {0}")]
    Transport(String),
    /// The request took longer than `--timeout-secs`.
    #[error("timed out after {0} s")]
    Timeout(f64),
    #[error(transparent)]
    BadFrame(#[from] BadFrame),
    /// The body ended without `data: [DONE]`.
    #[error("the stream ended before `data: [DONE]`")]
    Truncated,
}

impl From<reqwest::Error> for RequestError {
    fn from(e: reqwest::Error) -> Self {
        // reqwest's Display stops at the outermost layer; the cause says what actually went wrong.
        let mut msg = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            source = s.source();
        }
        RequestError::Transport(msg)
    }
}
