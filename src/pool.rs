//! rill's CPU worker pool, for every parallel section of the hot path (matmuls, attention, SwiGLU).
//!
//! Built for a machine that is busy with other work. A section's items are claimed in small chunks from one
//! atomic counter, by the workers and by the calling thread alike, and the caller waits only for chunks that
//! were actually claimed: a worker the OS has descheduled, or that has not woken up yet, claims nothing and
//! delays nobody (its share is taken by whoever runs). A chunk already being computed by a thread that then
//! loses its CPU is the only thing the caller can wait for, and it yields its CPU while it waits so that
//! thread can finish. Idle workers spin for a short while (the gap between two sections of one forward pass)
//! and then park on a condition variable, so an idle server burns no CPU.
//!
//! On a machine shared with busy processes, helping can cost more than it gives: a worker may be descheduled
//! in the middle of its chunk for a whole time slice of another process (milliseconds, against microseconds of
//! work), and a worker that is runnable but rarely gets a CPU still takes CPU share from the caller while it
//! spins. So the caller keeps score over windows of sections: if any section waited long for a claimed chunk
//! (a stall), or the workers did much less than their share of the items, it runs the following sections alone
//! for a while (solo: no hand-off, no waiting; the workers park), doubling that while the contention lasts and
//! going back to the team after it (a window that went well halves the next solo period).
//!
//! Results never depend on which thread ran a chunk or on the thread count: a chunk is a range of items, and
//! callers make each output value the work of exactly one item.
//!
//! Those fork-join sections keep the calling thread on every section's critical path. A whole step written as a
//! [`team::Program`] runs instead with [`team()`](fn@team): every thread runs the step, and none waits for another that
//! lost its CPU (see [`team`](mod@team)). The workers serve both kinds of work.

use std::any::Any;
use std::cell::Cell;
use std::ops::Range;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub mod team;
use team::{Joinable, Program, Shape, Step, TeamJob};

/// How long an idle worker spins before it parks.
const SPIN: Duration = Duration::from_micros(200);
/// A wait for other threads' chunks longer than this is a stall (a descheduled worker).
const STALL: Duration = Duration::from_micros(500);
/// Sections per scoring window (a decode step of a small model has about 150).
const WINDOW: usize = 64;
/// The team is worth it while the workers do at least this fraction of their fair share of the items.
const MIN_HELP: f64 = 0.5;
/// First and longest solo period.
const SOLO_MIN: Duration = Duration::from_millis(10);
const SOLO_MAX: Duration = Duration::from_millis(640);
/// Chunks per thread a section is cut into: small enough that a late thread's share is soon taken over.
const CHUNKS_PER_THREAD: usize = 8;

static THREADS: OnceLock<usize> = OnceLock::new();
static POOL: OnceLock<Pool> = OnceLock::new();

thread_local! {
    /// Set on pool workers and on a thread inside [`run`]: nested sections run inline.
    static INSIDE: Cell<bool> = const { Cell::new(false) };
}

/// The most threads the pool runs: far above any core count rill runs on, far below what an operating system
/// refuses to start.
pub const MAX_THREADS: usize = 1024;

/// Sets the number of threads (the caller included) the pool will use, at most [`MAX_THREADS`]; takes effect
/// only before its first use. Default: every available core.
pub fn set_threads(n: usize) {
    let _ = THREADS.set(n.clamp(1, MAX_THREADS));
}

/// Threads (the caller included) that run a section.
pub fn threads() -> usize {
    *THREADS.get_or_init(|| {
        std::env::var("RILL_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .clamp(1, MAX_THREADS)
    })
}

/// Runs `f` over `0..n_items`, in ranges, on the calling thread and the pool's workers; returns when every
/// item is done. Each item is in exactly one range, and ranges are processed by one thread each. A panic in
/// `f` is re-raised here once every claimed range has finished.
pub fn run<F: Fn(Range<usize>) + Sync>(n_items: usize, f: F) {
    if n_items == 0 {
        return;
    }
    let pool = POOL.get_or_init(|| Pool::new(threads() - 1));
    if pool.workers == 0 || n_items == 1 || INSIDE.with(Cell::get) {
        return f(0..n_items);
    }
    // One section at a time; a second caller (tests run engines side by side) works alone rather than wait.
    let mut score = match pool.calling.try_lock() {
        Ok(g) => g,
        // A section that panicked poisoned nothing that matters: the score is plain numbers.
        Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => return f(0..n_items),
    };
    if score.solo(Instant::now()) {
        drop(score);
        return f(0..n_items);
    }
    let chunk = n_items
        .div_ceil((pool.workers + 1) * CHUNKS_PER_THREAD)
        .max(1);
    let f: &(dyn Fn(Range<usize>) + Sync) = &f;
    // SAFETY: the job outlives its use of `f`. Workers call `f` only for chunks they claimed, and this
    // function returns only when every claimed chunk is done (`wait_done`), after which no chunk can be
    // claimed any more (the counter is past the end).
    let f: &'static (dyn Fn(Range<usize>) + Sync) = unsafe { std::mem::transmute(f) };
    let job = Arc::new(Job {
        f,
        n_items,
        chunk,
        next: Padded(AtomicUsize::new(0)),
        done_by_workers: Padded(AtomicUsize::new(0)),
        panic: Mutex::new(None),
    });
    pool.publish(Work::Section(job.clone()));
    INSIDE.with(|c| c.set(true));
    let t0 = Instant::now();
    let mine = job.work(false);
    // A worker may have claimed its last chunk just before the caller ran out: waiting up to one chunk's
    // time (the caller's own average) is the work itself, not a stall.
    let one_chunk = t0.elapsed() / mine.div_ceil(chunk).max(1) as u32;
    INSIDE.with(|c| c.set(false));
    let waited = job.wait_for_workers(n_items - mine);
    pool.retire();
    score.observe(
        waited.saturating_sub(one_chunk),
        n_items - mine,
        n_items,
        pool.workers,
    );
    drop(score);
    let payload = job.panic.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(p) = payload {
        resume_unwind(p);
    }
}

/// Runs one step of `program` as a team (see [`team`](mod@team)): the calling thread and every worker that wakes in
/// time each run the whole program, sharing its sections' chunks. Returns the step, every section finished,
/// when the calling thread is through; a panic in the calling thread's run is re-raised here. Without
/// workers, or while another caller holds the pool, the calling thread runs it alone, with the same bits.
pub fn team<P: Program>(program: Arc<P>, shapes: &[Shape]) -> Arc<Step> {
    let step = Arc::new(Step::new(shapes));
    let pool = POOL.get_or_init(|| Pool::new(threads() - 1));
    let lock = match pool.calling.try_lock() {
        _ if pool.workers == 0 || INSIDE.with(Cell::get) => None,
        Ok(g) => Some(g),
        Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    };
    if lock.is_some() {
        pool.publish(Work::Team(Arc::new(TeamJob {
            program: program.clone(),
            step: step.clone(),
        })));
    }
    let was_inside = INSIDE.with(|c| c.replace(true));
    let result = team::lead(&*program, &step);
    INSIDE.with(|c| c.set(was_inside));
    if lock.is_some() {
        pool.retire();
    }
    drop(lock);
    if let Err(p) = result {
        resume_unwind(p);
    }
    step
}

/// What the workers are asked to help with.
#[derive(Clone)]
enum Work {
    /// One fork-join section.
    Section(Arc<Job>),
    /// A whole step, as members of a team.
    Team(Arc<dyn Joinable>),
}

/// An atomic on a cache line of its own, so that claiming and finishing do not contend.
#[repr(align(64))]
struct Padded(AtomicUsize);

/// One parallel section.
struct Job {
    f: &'static (dyn Fn(Range<usize>) + Sync),
    n_items: usize,
    chunk: usize,
    /// The first item not yet claimed.
    next: Padded,
    /// Items the workers finished (the caller counts its own).
    done_by_workers: Padded,
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

impl Job {
    /// Claims and runs chunks until none is left; returns how many items this thread ran. Workers report
    /// each finished chunk (`report`); the caller knows its own.
    fn work(&self, report: bool) -> usize {
        let mut ran = 0;
        loop {
            let start = self.next.0.fetch_add(self.chunk, Ordering::Relaxed);
            if start >= self.n_items {
                return ran;
            }
            let end = self.n_items.min(start + self.chunk);
            if let Err(p) = catch_unwind(AssertUnwindSafe(|| (self.f)(start..end))) {
                let mut slot = self.panic.lock().unwrap_or_else(|e| e.into_inner());
                slot.get_or_insert(p);
            }
            if report {
                self.done_by_workers
                    .0
                    .fetch_add(end - start, Ordering::Release);
            }
            ran += end - start;
        }
    }

    /// Waits until the workers have finished `items` (every item the caller did not run): spinning at
    /// first, then giving the CPU away so that a descheduled worker holding a chunk can run. Returns how long
    /// it waited.
    fn wait_for_workers(&self, items: usize) -> Duration {
        let t0 = Instant::now();
        let mut spins = 0u32;
        while self.done_by_workers.0.load(Ordering::Acquire) < items {
            spins += 1;
            if spins < 256 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        t0.elapsed()
    }
}

/// The caller's score of how well the team works (held under the pool's caller lock).
#[derive(Debug, Default)]
struct Score {
    /// Running alone until then.
    solo_until: Option<Instant>,
    /// The length of the next solo period.
    next_solo: Duration,
    /// This window: sections, items the workers ran, items they would run as equals, and any stall.
    sections: usize,
    helped: f64,
    fair: f64,
    stalled: bool,
}

impl Score {
    fn solo(&mut self, now: Instant) -> bool {
        match self.solo_until {
            Some(u) if now < u => true,
            Some(_) => {
                self.solo_until = None;
                false
            }
            None => false,
        }
    }

    /// Records one team section: how long the caller waited for others' chunks beyond the time one chunk
    /// takes, and how many of the `n` items the `workers` ran.
    fn observe(&mut self, waited: Duration, helped: usize, n: usize, workers: usize) {
        self.sections += 1;
        self.helped += helped as f64;
        self.fair += n as f64 * workers as f64 / (workers + 1) as f64;
        self.stalled |= waited > STALL;
        if !self.stalled && self.sections < WINDOW {
            return;
        }
        if self.stalled || self.helped < MIN_HELP * self.fair {
            self.next_solo = (self.next_solo * 2).clamp(SOLO_MIN, SOLO_MAX);
            self.solo_until = Some(Instant::now() + self.next_solo);
        } else {
            // A good window halves the next solo period rather than forgetting it: under lasting
            // contention windows go well now and then by luck, and each return to short solo periods
            // would mean more team sections, each one a chance to stall.
            self.next_solo /= 2;
        }
        *self = Self {
            solo_until: self.solo_until,
            next_solo: self.next_solo,
            ..Self::default()
        };
    }
}

struct Pool {
    workers: usize,
    shared: Arc<Shared>,
    /// Held by the thread running a section; keeps the team's score.
    calling: Mutex<Score>,
}

struct Shared {
    /// The section or team step being run, if any.
    job: Mutex<Option<Work>>,
    /// Bumped for every new section.
    epoch: AtomicU64,
    /// Workers parked (or about to park) on `wake`.
    sleepers: AtomicUsize,
    park: Mutex<()>,
    wake: Condvar,
    stop: AtomicBool,
}

impl Pool {
    fn new(workers: usize) -> Self {
        let shared = Arc::new(Shared {
            job: Mutex::new(None),
            epoch: AtomicU64::new(0),
            sleepers: AtomicUsize::new(0),
            park: Mutex::new(()),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        for i in 0..workers {
            let s = shared.clone();
            std::thread::Builder::new()
                .name(format!("rill-cpu-{i}"))
                .spawn(move || worker(&s))
                .expect("spawn a CPU worker thread");
        }
        Self {
            workers,
            shared,
            calling: Mutex::new(Score::default()),
        }
    }

    fn publish(&self, job: Work) {
        let s = &self.shared;
        *s.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(job);
        s.epoch.fetch_add(1, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _g = s.park.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
    }

    fn retire(&self) {
        *self.shared.job.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _g = self.shared.park.lock().unwrap_or_else(|e| e.into_inner());
        self.shared.wake.notify_all();
    }
}

/// A worker: waits for a new section (spinning briefly, then parked), helps with it, and waits again.
fn worker(s: &Shared) {
    INSIDE.with(|c| c.set(true));
    let mut seen = 0;
    loop {
        let t0 = Instant::now();
        let mut spins = 0u32;
        loop {
            if s.stop.load(Ordering::Relaxed) {
                return;
            }
            if s.epoch.load(Ordering::Acquire) != seen {
                break;
            }
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(64) || t0.elapsed() < SPIN {
                std::hint::spin_loop();
                continue;
            }
            s.sleepers.fetch_add(1, Ordering::SeqCst);
            let mut g = s.park.lock().unwrap_or_else(|e| e.into_inner());
            while s.epoch.load(Ordering::SeqCst) == seen && !s.stop.load(Ordering::SeqCst) {
                g = s.wake.wait(g).unwrap_or_else(|e| e.into_inner());
            }
            drop(g);
            s.sleepers.fetch_sub(1, Ordering::SeqCst);
        }
        seen = s.epoch.load(Ordering::Acquire);
        let job = s.job.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match job {
            Some(Work::Section(job)) => {
                job.work(true);
            }
            Some(Work::Team(step)) => step.join(),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_once_and_panics_propagate() {
        for n in [0, 1, 2, 7, 100, 10_000] {
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            run(n, |r| {
                for i in r {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                }
            });
            assert!(
                hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                "n = {n}"
            );
        }
        let caught = catch_unwind(|| {
            run(64, |r| {
                if r.contains(&40) {
                    panic!("item 40");
                }
            })
        });
        assert!(caught.is_err());
        // The pool still works after a panic, as a team: the caller's lock is not left poisoned.
        assert!(!POOL.get().unwrap().calling.is_poisoned());
        let sum = AtomicUsize::new(0);
        run(1000, |r| {
            sum.fetch_add(r.sum::<usize>(), Ordering::Relaxed);
        });
        assert_eq!(sum.into_inner(), 999 * 1000 / 2);
    }

    #[test]
    fn stalls_and_idle_workers_start_solo_periods_that_grow_and_shrink_after_good_windows() {
        let mut s = Score::default();
        let now = Instant::now();
        // Equal shares: the team stays.
        for _ in 0..WINDOW {
            s.observe(Duration::from_micros(5), 50, 100, 1);
        }
        assert!(!s.solo(now));
        // One stall: solo at once, for the shortest period.
        s.observe(STALL * 2, 50, 100, 1);
        assert!(s.solo(Instant::now()));
        assert_eq!(s.next_solo, SOLO_MIN);
        // Workers that do a fifth of their share for a window: solo again, twice as long.
        s.solo_until = None;
        for _ in 0..WINDOW {
            s.observe(Duration::ZERO, 10, 100, 1);
        }
        assert_eq!(s.next_solo, SOLO_MIN * 2);
        assert!(s.solo(Instant::now()));
        for _ in 0..20 {
            s.observe(STALL * 2, 0, 100, 1);
        }
        assert_eq!(s.next_solo, SOLO_MAX);
        // A good window goes back to the team and halves the next solo period; a stall then doubles it
        // back, so lasting contention keeps long solo periods.
        s.solo_until = None;
        for _ in 0..WINDOW {
            s.observe(Duration::ZERO, 40, 100, 1);
        }
        assert!(!s.solo(Instant::now()));
        assert_eq!(s.next_solo, SOLO_MAX / 2);
        s.observe(STALL * 2, 50, 100, 1);
        assert_eq!(s.next_solo, SOLO_MAX);
        // Good windows in a row wear it down to nothing.
        for _ in 0..12 * WINDOW {
            s.solo_until = None;
            s.observe(Duration::ZERO, 40, 100, 1);
        }
        assert_eq!(s.next_solo, SOLO_MAX / 4096);
        assert!(s.next_solo < SOLO_MIN / 8);
    }

    #[test]
    fn nested_and_concurrent_sections_complete() {
        let total = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..200 {
                        run(50, |r| {
                            run(3, |inner| {
                                total.fetch_add(r.len() * inner.len(), Ordering::Relaxed);
                            });
                        });
                    }
                });
            }
        });
        assert_eq!(total.into_inner(), 4 * 200 * 50 * 3);
    }

    /// A second caller does not wait for a section that is stuck: it runs its own section alone.
    #[test]
    fn a_stuck_section_delays_no_other_caller() {
        // Occupy every worker with a long chunk of one section on another thread...
        let release = AtomicBool::new(false);
        let started = AtomicUsize::new(0);
        std::thread::scope(|s| {
            s.spawn(|| {
                run(threads() * 64, |_| {
                    started.fetch_add(1, Ordering::SeqCst);
                    while !release.load(Ordering::SeqCst) {
                        std::thread::yield_now();
                    }
                });
            });
            while started.load(Ordering::SeqCst) == 0 {
                std::thread::yield_now();
            }
            // ...then a second section on this thread completes on its own, inline.
            let sum = AtomicUsize::new(0);
            run(100, |r| {
                sum.fetch_add(r.len(), Ordering::Relaxed);
            });
            assert_eq!(sum.into_inner(), 100);
            release.store(true, Ordering::SeqCst);
        });
    }
}
