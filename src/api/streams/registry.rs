//! The streams a browser can resume: each generation's numbered events, kept in memory (bounded) while a reader
//! may still come back, and the clock that cancels a generation nobody reconnected to.
//!
//! Lifetime of an entry: created by `POST /v1/streams`; readers attach and detach as connections come and go;
//! with no reader attached for the resume window, a running generation is cancelled and the entry removed; a
//! finished one is removed a window after its last event or its last reader, whichever is later.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use super::wire::{self, Message};
use crate::api::util;

/// Most streams held at once; past it the oldest finished, unread stream is dropped, or a new one is refused.
pub const MAX_STREAMS: usize = 256;
/// Most event bytes one stream keeps; past it the oldest events are dropped (a reader behind them gets an error).
pub const MAX_BYTES_PER_STREAM: usize = 2 * 1024 * 1024;

/// All resumable streams of one server. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    entries: Arc<Mutex<HashMap<String, Arc<Entry>>>>,
    window: Duration,
    capacity: usize,
    max_bytes: usize,
}

/// One generation's events and readers.
pub struct Entry {
    pub id: String,
    token: String,
    max_bytes: usize,
    log: Mutex<Log>,
    /// Bumped on every new event, so readers wake.
    version: watch::Sender<u64>,
    stop: Notify,
    stop_requested: AtomicBool,
}

struct Log {
    /// Numbered SSE frames, oldest first; ids start at 1 and have no gaps.
    frames: VecDeque<(u64, Vec<u8>)>,
    next_id: u64,
    bytes: usize,
    ended_at: Option<Instant>,
    readers: usize,
    /// When the last reader left (or the entry was made); `None` while a reader is attached.
    unread_since: Option<Instant>,
}

/// What a reader gets after the last event it saw.
#[derive(Debug, PartialEq)]
pub enum Read {
    /// Frames to send, and the id of the last of them.
    Frames(Vec<u8>, u64),
    /// Nothing new yet.
    Wait,
    /// Every event was sent and the stream has ended.
    End,
    /// The events right after `last` were dropped to bound memory; the oldest kept one is `first_kept`.
    Gap { first_kept: u64 },
}

impl Registry {
    pub fn new(window: Duration) -> Self {
        Self {
            entries: Arc::default(),
            window,
            capacity: MAX_STREAMS,
            max_bytes: MAX_BYTES_PER_STREAM,
        }
    }

    /// The same registry with other bounds (tests).
    pub fn with_bounds(mut self, capacity: usize, max_bytes: usize) -> Self {
        self.capacity = capacity.max(1);
        self.max_bytes = max_bytes.max(1);
        self
    }

    /// How long a stream waits for a reader before it is cancelled or forgotten.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Streams held now.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A new entry with a fresh id and token, or `None` when the registry is full of streams still in use.
    pub fn create(&self) -> Option<Arc<Entry>> {
        let mut map = self.map();
        if map.len() >= self.capacity && !evict_one(&mut map) {
            return None;
        }
        let entry = Arc::new(Entry::new(
            util::new_id("strm_"),
            util::new_id(""),
            self.max_bytes,
        ));
        map.insert(entry.id.clone(), entry.clone());
        Some(entry)
    }

    /// The entry `id`, if `token` is its token (compared in constant time).
    pub fn get(&self, id: &str, token: &str) -> Option<Arc<Entry>> {
        let entry = self.map().get(id).cloned()?;
        util::same_secret(token, &entry.token).then_some(entry)
    }

    pub fn remove(&self, id: &str) {
        self.map().remove(id);
    }

    fn map(&self) -> MutexGuard<'_, HashMap<String, Arc<Entry>>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Drops the finished, unread entry that ended first; false when every entry is still running or read.
fn evict_one(map: &mut HashMap<String, Arc<Entry>>) -> bool {
    let oldest = map
        .values()
        .filter_map(|e| {
            let log = e.log();
            (log.readers == 0)
                .then_some(log.ended_at?)
                .map(|t| (t, e.id.clone()))
        })
        .min();
    match oldest {
        Some((_, id)) => map.remove(&id).is_some(),
        None => false,
    }
}

impl Entry {
    fn new(id: String, token: String, max_bytes: usize) -> Self {
        let log = Log {
            frames: VecDeque::new(),
            next_id: 1,
            bytes: 0,
            ended_at: None,
            readers: 0,
            unread_since: Some(Instant::now()),
        };
        Self {
            id,
            token,
            max_bytes,
            log: Mutex::new(log),
            version: watch::channel(0).0,
            stop: Notify::new(),
            stop_requested: AtomicBool::new(false),
        }
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// Appends a message as the next numbered event and wakes the readers; returns its id. Past the byte bound
    /// the oldest events are dropped. A final message marks the stream ended; nothing is appended after it.
    pub fn push(&self, m: &Message) -> Option<u64> {
        let mut log = self.log();
        if log.ended_at.is_some() {
            return None;
        }
        let id = log.next_id;
        log.next_id += 1;
        let bytes = wire::frame(id, m);
        log.bytes += bytes.len();
        log.frames.push_back((id, bytes));
        while log.bytes > self.max_bytes && log.frames.len() > 1 {
            let (_, old) = log.frames.pop_front().expect("more than one frame");
            log.bytes -= old.len();
        }
        if wire::is_final(m.event) {
            log.ended_at = Some(Instant::now());
        }
        drop(log);
        self.version.send_replace(id);
        Some(id)
    }

    /// Everything after event `last` that is stored now.
    pub fn read_after(&self, last: u64) -> Read {
        let log = self.log();
        let first_kept = log.frames.front().map_or(log.next_id, |(id, _)| *id);
        if last.saturating_add(1) < first_kept {
            return Read::Gap { first_kept };
        }
        let mut out = Vec::new();
        let mut upto = last;
        for (id, bytes) in log.frames.iter().filter(|(id, _)| *id > last) {
            out.extend_from_slice(bytes);
            upto = *id;
        }
        match (upto > last, log.ended_at.is_some()) {
            (true, _) => Read::Frames(out, upto),
            (false, true) => Read::End,
            (false, false) => Read::Wait,
        }
    }

    /// The id of the newest event (0 before the first).
    pub fn last_id(&self) -> u64 {
        self.log().next_id - 1
    }

    pub fn ended(&self) -> bool {
        self.log().ended_at.is_some()
    }

    /// A receiver that changes whenever an event is appended.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Counts a connected reader until the guard is dropped; the resume clock stops meanwhile.
    pub fn attach(self: &Arc<Self>) -> ReaderGuard {
        let mut log = self.log();
        log.readers += 1;
        log.unread_since = None;
        ReaderGuard(self.clone())
    }

    /// Whether nobody has read this stream for `window`: since the last reader left and, once it ended,
    /// since its last event.
    pub fn expired(&self, window: Duration, now: Instant) -> bool {
        let log = self.log();
        let Some(unread) = log.unread_since else {
            return false;
        };
        let since = log.ended_at.map_or(unread, |end| end.max(unread));
        now.saturating_duration_since(since) >= window
    }

    /// Asks the stream's pump to cancel the generation; false if it had already ended.
    pub fn request_stop(&self) -> bool {
        if self.ended() {
            return false;
        }
        self.stop_requested.store(true, Ordering::Relaxed);
        self.stop.notify_one();
        true
    }

    /// Resolves once [`Entry::request_stop`] was called (at once if it already was).
    pub async fn stopped(&self) {
        if !self.stop_requested.load(Ordering::Relaxed) {
            self.stop.notified().await;
        }
    }

    fn log(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A connected reader; dropping it (the connection closed) restarts the resume clock when it was the last.
pub struct ReaderGuard(Arc<Entry>);

impl Drop for ReaderGuard {
    fn drop(&mut self) {
        let mut log = self.0.log();
        log.readers -= 1;
        if log.readers == 0 {
            log.unread_since = Some(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn delta(t: &str) -> Message {
        Message {
            event: "delta",
            data: json!({ "text": t }),
        }
    }

    fn text(r: Read) -> (String, u64) {
        match r {
            Read::Frames(b, last) => (String::from_utf8(b).unwrap(), last),
            other => panic!("expected frames, got {other:?}"),
        }
    }

    #[test]
    fn readers_resume_after_any_event() {
        let reg = Registry::new(Duration::from_secs(5));
        let e = reg.create().unwrap();
        assert_eq!(e.read_after(0), Read::Wait);
        for t in ["a", "b", "c"] {
            e.push(&delta(t));
        }
        let (all, last) = text(e.read_after(0));
        assert_eq!(last, 3);
        assert!(
            all.starts_with(
                "id: 1
"
            ) && all.contains(
                "id: 3
"
            )
        );
        let (tail, _) = text(e.read_after(2));
        assert!(
            tail.starts_with(
                "id: 3
"
            ) && !tail.contains(
                "id: 2
"
            ),
            "{tail}"
        );
        assert_eq!(e.read_after(3), Read::Wait);
        e.push(&wire::cancelled("x"));
        assert_eq!(e.push(&delta("late")), None, "nothing after a final event");
        assert!(e.ended());
        assert_eq!(text(e.read_after(3)).1, 4);
        assert_eq!(e.read_after(4), Read::End);
    }

    #[test]
    fn tokens_are_checked() {
        let reg = Registry::new(Duration::from_secs(5));
        let e = reg.create().unwrap();
        assert!(reg.get(&e.id, e.token()).is_some());
        assert!(reg.get(&e.id, "nope").is_none());
        assert!(reg.get(&e.id, "").is_none());
        assert!(reg.get("strm_unknown", e.token()).is_none());
        assert_ne!(e.token(), reg.create().unwrap().token());
    }

    #[test]
    fn memory_is_bounded_and_a_reader_behind_it_learns_so() {
        let reg = Registry::new(Duration::from_secs(5)).with_bounds(4, 200);
        let e = reg.create().unwrap();
        for i in 0..50 {
            e.push(&delta(&format!("token {i}")));
        }
        assert_eq!(e.last_id(), 50);
        let Read::Gap { first_kept } = e.read_after(0) else {
            panic!("expected a gap");
        };
        assert!(first_kept > 40 && first_kept <= 50, "{first_kept}");
        assert_eq!(text(e.read_after(first_kept - 1)).1, 50);
    }

    #[test]
    fn the_clock_runs_only_without_readers() {
        let w = Duration::from_secs(10);
        let reg = Registry::new(w);
        let e = reg.create().unwrap();
        let now = Instant::now();
        assert!(!e.expired(w, now));
        assert!(e.expired(w, now + w + w));
        let guard = e.attach();
        assert!(!e.expired(w, now + w + w), "a reader is attached");
        drop(guard);
        assert!(!e.expired(w, Instant::now()));
        assert!(e.expired(w, Instant::now() + w));
    }

    #[test]
    fn full_registry_drops_finished_streams_first() {
        let reg = Registry::new(Duration::from_secs(5)).with_bounds(2, 1 << 20);
        let a = reg.create().unwrap();
        let b = reg.create().unwrap();
        assert!(reg.create().is_none(), "both still running");
        b.push(&wire::cancelled("done"));
        let _reader = a.attach();
        let c = reg.create().expect("the finished stream makes room");
        assert_eq!(reg.len(), 2);
        assert!(reg.get(&b.id, b.token()).is_none());
        assert!(reg.get(&c.id, c.token()).is_some());
    }

    #[test]
    fn stop_is_requested_once_and_only_while_running() {
        let reg = Registry::new(Duration::from_secs(5));
        let e = reg.create().unwrap();
        assert!(e.request_stop());
        futures_util::FutureExt::now_or_never(e.stopped()).expect("already requested");
        e.push(&wire::cancelled("stopped"));
        assert!(!e.request_stop());
    }
}
