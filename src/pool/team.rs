//! The team: every pool thread runs the same step program, and no thread is the others' driver.
//!
//! A fork-join section needs its calling thread twice: to hand the section out and to go on after it. On a
//! machine shared with busy processes that thread is often off its CPU, and then the others wait for it, or
//! for a chunk it holds, a time slice at a time. A team step removes that dependency:
//!
//! - Every member (the caller and each worker that wakes in time) runs the whole [`Program`]: the cheap serial
//!   work between sections (norms, residual adds, rotations) on its own private copies, and every section
//!   together with the others. Private values are computed by the same code from the same inputs, so every
//!   member holds the same bits.
//! - A section's chunks are claimed from one counter. A chunk is computed into the member's own scratch and
//!   committed into the step's shared output by whoever gets there first (compare-and-swap), so a chunk
//!   claimed by a member that lost its CPU is simply computed again by one that waited long enough for it
//!   (twice its own chunk time). Nobody ever waits on a thread that is not running, except for a commit in
//!   progress (a copy of a few values, or one cache write of a sequence's rows). A commit that panics hands its
//!   chunk back.
//! - Whoever finishes a section goes on to the next: a member that fell behind catches up through finished
//!   sections (reading their outputs, redoing only its private serial work) or is dropped when the caller
//!   ends the step.
//!
//! Memory: each section has its own output in one step buffer, written once and never reused within the step,
//! and the step (buffer, counters, the program and everything it holds) lives as long as any member holds it.
//! So a member that wakes up late only ever reads memory that is alive and no longer written, and its late
//! commits fail. The buffer goes back to a small spare list when the step is dropped. The last section's
//! output (a model's logits) has an allocation of its own, which [`Step::into_last`] hands to the caller
//! without a copy once no member holds the step.

use std::any::Any;
use std::mem::{ManuallyDrop, MaybeUninit};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The least a member waits for a claimed chunk before computing it itself.
const PATIENCE_MIN: Duration = Duration::from_micros(20);
/// How long a member spins for commits in progress before it yields its CPU to let their writer run.
const YIELD_AFTER: Duration = Duration::from_micros(200);
/// How long [`Step::into_last`] waits for members still leaving the step (a running one leaves within a
/// microsecond or two) before it copies the output instead (~100 µs for eight rows of 49k logits).
const LEAVE_WAIT: Duration = Duration::from_micros(20);
/// Step buffers kept for reuse.
const SPARE_BUFFERS: usize = 2;

/// Chunk states.
const OPEN: u8 = 0;
const WRITING: u8 = 1;
const DONE: u8 = 2;

/// One section of a step: `out` floats of shared output, made by `chunks` pieces of work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub out: usize,
    pub chunks: usize,
}

static ENABLED: std::sync::OnceLock<AtomicBool> = std::sync::OnceLock::new();

fn enabled_flag() -> &'static AtomicBool {
    ENABLED.get_or_init(|| AtomicBool::new(std::env::var_os("RILL_TEAM").is_none_or(|v| v != "0")))
}

/// Whether models run their steps as team steps where they can (default on; `RILL_TEAM=0` turns it off).
/// Either way gives the same bits.
pub fn enabled() -> bool {
    enabled_flag().load(Ordering::Relaxed)
}

static STEPS: AtomicUsize = AtomicUsize::new(0);

/// Team steps run so far in this process.
pub fn steps_run() -> usize {
    STEPS.load(Ordering::Relaxed)
}

/// Turns team steps on or off (comparisons and tests).
pub fn set_enabled(on: bool) {
    enabled_flag().store(on, Ordering::Relaxed)
}

/// A step as every member runs it.
pub trait Program: Send + Sync + 'static {
    /// Runs the step as member `m`: [`Member::section`] once for each of the step's shapes, in order, and the
    /// serial work between them. Returns `Err` only when `m` gave up (the step ended without it).
    fn run(&self, m: &mut Member<'_>) -> Result<(), Abandoned>;
}

/// A member left a step that ended without it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Abandoned;

struct Section {
    shape: Shape,
    /// Its output: in the step buffer, or the last section's own allocation.
    out: *mut f32,
    /// The next chunk to claim.
    next: AtomicUsize,
    /// Chunks committed.
    done: AtomicUsize,
    state: Box<[AtomicU8]>,
}

/// The shared part of one step: every section's counters and output.
pub struct Step {
    sections: Vec<Section>,
    /// The outputs of all sections but the last, one after the other; written only by commits, through the
    /// sections' `out`.
    buffer: Vec<f32>,
    /// The last section's output, uninitialised until its commits write it (they write every value).
    last: Vec<MaybeUninit<f32>>,
    /// Set when the caller has finished: members still in the step leave it.
    over: AtomicBool,
}

// SAFETY: each section's `out` points into `buffer` or `last`, which live and stay put as long as the step.
// Each output value is written by exactly one commit (the compare-and-swap of its chunk) and read only after
// that chunk is seen done with acquire ordering.
unsafe impl Send for Step {}
unsafe impl Sync for Step {}

static SPARE: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());

impl Step {
    /// A step of sections of `shapes`.
    pub fn new(shapes: &[Shape]) -> Self {
        STEPS.fetch_add(1, Ordering::Relaxed);
        let (body, tail) = shapes.split_at(shapes.len().saturating_sub(1));
        let mut buffer = SPARE
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_default();
        let size: usize = body.iter().map(|s| s.out).sum();
        if buffer.len() < size {
            buffer.resize(size, 0.0);
        }
        let mut last: Vec<MaybeUninit<f32>> = Vec::with_capacity(tail.first().map_or(0, |s| s.out));
        // SAFETY: `MaybeUninit` values need no initialisation.
        unsafe { last.set_len(last.capacity()) };
        let mut offset = 0;
        let mut sections: Vec<Section> = body
            .iter()
            .map(|&shape| {
                // SAFETY: the offsets of `body` stay within `size`, which `buffer` holds.
                let out = unsafe { buffer.as_mut_ptr().add(offset) };
                offset += shape.out;
                Section::new(shape, out)
            })
            .collect();
        sections.extend(
            tail.iter()
                .map(|&t| Section::new(t, last.as_mut_ptr().cast())),
        );
        Self {
            sections,
            buffer,
            last,
            over: AtomicBool::new(false),
        }
    }

    /// The output of section `i`, once the step is over (every section done by the member that finished it).
    pub fn output(&self, i: usize) -> &[f32] {
        let s = &self.sections[i];
        assert_eq!(
            s.done.load(Ordering::Acquire),
            s.shape.chunks,
            "section {i} is not finished"
        );
        // SAFETY: every chunk of the section is committed (acquire above), so every value is written and
        // nothing writes them any more.
        unsafe { std::slice::from_raw_parts(s.out, s.shape.out) }
    }

    /// The last section's output, once the step is over: moved out of the step when no member holds it any
    /// more (the usual case, after waiting up to 20 µs for members on their way out), else copied.
    pub fn into_last(step: Arc<Step>) -> Vec<f32> {
        let i = step
            .sections
            .len()
            .checked_sub(1)
            .expect("a step has sections");
        let t0 = Instant::now();
        while Arc::strong_count(&step) > 1 && t0.elapsed() < LEAVE_WAIT {
            std::hint::spin_loop();
        }
        match Arc::try_unwrap(step) {
            Ok(mut step) => {
                step.output(i);
                let last = ManuallyDrop::new(std::mem::take(&mut step.last));
                let (ptr, len, cap) = (last.as_ptr(), last.len(), last.capacity());
                // SAFETY: `output` checked that every chunk of the last section is committed, and commits
                // write every value of their section; `MaybeUninit<f32>` has `f32`'s layout, and the
                // allocation is `last`'s own, no longer referenced by anything (the step is unique).
                unsafe { Vec::from_raw_parts(ptr as *mut f32, len, cap) }
            }
            Err(step) => step.output(i).to_vec(),
        }
    }
}

impl Drop for Step {
    fn drop(&mut self) {
        let mut spare = SPARE.lock().unwrap_or_else(|e| e.into_inner());
        if spare.len() < SPARE_BUFFERS {
            spare.push(std::mem::take(&mut self.buffer));
        }
    }
}

impl Section {
    fn new(shape: Shape, out: *mut f32) -> Self {
        Self {
            shape,
            out,
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            state: (0..shape.chunks).map(|_| AtomicU8::new(OPEN)).collect(),
        }
    }
}

/// The output of one section, for a commit to write its chunk's values into.
pub struct Out {
    ptr: *mut f32,
    len: usize,
}

impl Out {
    /// Writes `values` into the section's output from index `at` on. The output may be uninitialised before
    /// its commits: they must write every value of it.
    ///
    /// # Safety
    /// Only the commit of the chunk that owns `at..at + values.len()` may call this (each output value belongs
    /// to exactly one chunk of its section), and the range must lie inside the section's output.
    pub unsafe fn write(&self, at: usize, values: &[f32]) {
        debug_assert!(at + values.len() <= self.len);
        std::ptr::copy_nonoverlapping(values.as_ptr(), self.ptr.add(at), values.len());
    }

    /// Length of the section's output.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// One thread's part in a step: where it is, and its scratch for chunks.
pub struct Member<'a> {
    step: &'a Step,
    /// A worker leaves a step that is over; the caller finishes it.
    worker: bool,
    next: usize,
    scratch: Vec<f32>,
    /// Chunks this member computed, and of those the ones someone else committed first (for tests).
    pub computed: usize,
    pub lost: usize,
}

impl<'a> Member<'a> {
    pub fn new(step: &'a Step, worker: bool) -> Self {
        Self {
            step,
            worker,
            next: 0,
            scratch: Vec::new(),
            computed: 0,
            lost: 0,
        }
    }

    /// Runs the next section: chunks claimed in turn, each computed by `work(chunk, scratch)` into this
    /// member's scratch and, if no one committed that chunk first, handed to `commit(chunk, scratch, out)`,
    /// which must write exactly that chunk's values of the section's output (and may write elsewhere what
    /// belongs to the chunk alone, once). Returns the section's output once every chunk is committed.
    pub fn section(
        &mut self,
        work: impl Fn(usize, &mut Vec<f32>),
        commit: impl Fn(usize, &[f32], &Out),
    ) -> Result<&'a [f32], Abandoned> {
        let step = self.step;
        let s = step
            .sections
            .get(self.next)
            .expect("more sections than the step's shapes");
        self.next += 1;
        if self.worker && step.over.load(Ordering::Relaxed) {
            return Err(Abandoned);
        }
        let n = s.shape.chunks;
        let out = Out {
            ptr: s.out,
            len: s.shape.out,
        };
        if s.done.load(Ordering::Acquire) < n {
            let (mut ran, t0) = (0u32, Instant::now());
            loop {
                let c = s.next.fetch_add(1, Ordering::Relaxed);
                if c >= n {
                    break;
                }
                if s.state[c].load(Ordering::Relaxed) == OPEN {
                    self.chunk(s, c, &work, &commit, &out);
                    ran += 1;
                }
            }
            // Wait for the chunks others claimed, and compute any still open after twice this member's own
            // chunk time: its owner is late (off its CPU, or gone).
            let patience = match ran {
                0 => PATIENCE_MIN,
                _ => (t0.elapsed() / ran * 2).max(PATIENCE_MIN),
            };
            let wait = Instant::now();
            while s.done.load(Ordering::Acquire) < n {
                if self.worker && step.over.load(Ordering::Relaxed) {
                    return Err(Abandoned);
                }
                if wait.elapsed() >= patience {
                    for c in 0..n {
                        if s.state[c].load(Ordering::Relaxed) == OPEN {
                            self.chunk(s, c, &work, &commit, &out);
                        }
                    }
                }
                if wait.elapsed() < patience.max(YIELD_AFTER) {
                    std::hint::spin_loop();
                } else {
                    // Only commits in progress are left, and their writer is not running: let it run.
                    // Yielding sooner would hand the CPU to another process for a whole time slice while
                    // the other member is about to finish its chunk.
                    std::thread::yield_now();
                }
            }
        }
        // SAFETY: every chunk is committed (acquire above): these values are final.
        Ok(unsafe { std::slice::from_raw_parts(out.ptr, out.len) })
    }

    /// Computes chunk `c` and commits it unless someone else did first.
    fn chunk(
        &mut self,
        s: &Section,
        c: usize,
        work: &impl Fn(usize, &mut Vec<f32>),
        commit: &impl Fn(usize, &[f32], &Out),
        out: &Out,
    ) {
        self.scratch.clear();
        work(c, &mut self.scratch);
        self.computed += 1;
        if s.state[c]
            .compare_exchange(OPEN, WRITING, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            // A commit that panics (a worker's panic is caught in `join`) hands its chunk back, so the others
            // compute it again rather than wait for it for ever; a caller's panic is re-raised by `team()`.
            let reopen = Reopen(&s.state[c]);
            commit(c, &self.scratch, out);
            std::mem::forget(reopen);
            s.state[c].store(DONE, Ordering::Release);
            s.done.fetch_add(1, Ordering::Release);
        } else {
            self.lost += 1;
        }
    }

    /// Whether the next section is already finished (a member catching up can skip preparing its input).
    pub fn next_is_done(&self) -> bool {
        self.step
            .sections
            .get(self.next)
            .is_some_and(|s| s.done.load(Ordering::Acquire) == s.shape.chunks)
    }
}

/// Puts a chunk being committed back to open if its commit unwinds.
struct Reopen<'a>(&'a AtomicU8);

impl Drop for Reopen<'_> {
    fn drop(&mut self) {
        self.0.store(OPEN, Ordering::Release);
    }
}

/// A step published to the workers.
pub(super) trait Joinable: Send + Sync {
    /// Runs the step as a worker, until it ends or the step is over; a panic only ends this worker's part.
    fn join(&self);
}

pub(super) struct TeamJob<P: Program> {
    pub program: Arc<P>,
    pub step: Arc<Step>,
}

impl<P: Program> Joinable for TeamJob<P> {
    fn join(&self) {
        let mut m = Member::new(&self.step, true);
        // A worker's panic leaves its chunks open: the caller computes them (and meets the panic itself if
        // it is not a fluke of this thread).
        let _ = catch_unwind(AssertUnwindSafe(|| self.program.run(&mut m)));
    }
}

/// Marks the step over when the caller leaves it, by return or by panic.
pub(super) struct OverOnDrop<'a>(pub &'a Step);

impl Drop for OverOnDrop<'_> {
    fn drop(&mut self) {
        self.0.over.store(true, Ordering::Release);
    }
}

/// The caller's run of `program` over `step`.
pub(super) fn lead<P: Program>(program: &P, step: &Step) -> Result<(), Box<dyn Any + Send>> {
    let _over = OverOnDrop(step);
    let mut m = Member::new(step, false);
    catch_unwind(AssertUnwindSafe(|| {
        program
            .run(&mut m)
            .expect("the calling member never abandons its step")
    }))
}

#[cfg(test)]
mod tests;
