//! `cargo bench --bench section_scheduling`: how three ways of running a decode-shaped chain of parallel
//! sections fare on a busy machine, to choose the worker pool's next design (issue 9). No model: each "token" is
//! 150 sections of 16 chunks, each section reading the one before (about 6 ms of one thread's work, like
//! SmolLM2's decode step), run quiet and beside 1 and 2 busy-looping processes (started by this bench, bounded
//! by `timeout`, killed by PID).
//!
//! - `one thread`: every chunk on the calling thread (what the pool's solo mode does).
//! - `fork-join`: a driver thread publishes each section, claims chunks beside one worker, and waits for the
//!   chunks the worker claimed (the shape of `src/pool.rs`, without its solo fallback). A worker descheduled in
//!   the middle of a chunk stalls the driver; a descheduled driver idles the worker.
//! - `symmetric`: two equal threads and no driver. A section is data in shared memory; each thread claims a
//!   chunk by compare-and-swap, computes it into its own scratch and commits it with a second compare-and-swap;
//!   a claim older than 20 µs may be taken over by the other thread (the first committer wins, the loser's work
//!   is dropped), and whoever commits a section's last chunk opens the next one. No thread ever waits for
//!   another one that has lost its CPU.
//!
//! Every design computes the same bits (checked). Knobs: `RILL_SCHED_SECS` (seconds per run, default 3),
//! `RILL_SCHED_ROUNDS` (default 3, medians printed).

use std::cell::UnsafeCell;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

const K: usize = 512;
const CHUNKS: usize = 16;
const PER_CHUNK: usize = 64;
const WIDTH: usize = CHUNKS * PER_CHUNK;
const SECTIONS: usize = 150;
/// A claim older than this may be taken over (a few chunks' time: its holder has most likely lost its CPU).
const TAKEOVER: Duration = Duration::from_micros(20);

/// 256 weight rows of `K`, shared by every section (the point is scheduling, not memory traffic).
struct Weights(Vec<f32>);

/// One chunk: `PER_CHUNK` dot products of weight rows with the section's input.
#[inline(never)]
fn chunk(w: &Weights, input: &[f32], c: usize, out: &mut [f32]) {
    for (j, o) in out.iter_mut().enumerate() {
        let row = &w.0[((c * PER_CHUNK + j) % 256) * K..][..K];
        let mut acc = [0f32; 8];
        for (a, b) in row.chunks_exact(8).zip(input[..K].chunks_exact(8)) {
            for l in 0..8 {
                acc[l] += a[l] * b[l];
            }
        }
        *o = acc.iter().sum::<f32>() * 0.001 + 0.5;
    }
}

fn one_thread(w: &Weights, sections: usize) -> f32 {
    let (mut a, mut b) = (vec![0.5f32; WIDTH], vec![0f32; WIDTH]);
    for _ in 0..sections {
        for (c, out) in b.chunks_exact_mut(PER_CHUNK).enumerate() {
            chunk(w, &a, c, out);
        }
        std::mem::swap(&mut a, &mut b);
    }
    a[0]
}

/// The fork-join section board: the driver publishes buffers and a sequence number.
struct Board {
    seq: AtomicU64,
    next: AtomicUsize,
    done: AtomicUsize,
    input: AtomicUsize,
    output: AtomicUsize,
    stop: AtomicBool,
}

fn fork_join(w: Arc<Weights>, sections: usize) -> f32 {
    let board = Arc::new(Board {
        seq: AtomicU64::new(0),
        next: AtomicUsize::new(CHUNKS),
        done: AtomicUsize::new(0),
        input: AtomicUsize::new(0),
        output: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
    });
    let worker = {
        let (board, w) = (board.clone(), w.clone());
        std::thread::spawn(move || {
            let mut seen = 0;
            loop {
                let t0 = Instant::now();
                loop {
                    let s = board.seq.load(Acquire);
                    if s != seen {
                        seen = s;
                        break;
                    }
                    if board.stop.load(Relaxed) {
                        return;
                    }
                    if t0.elapsed() > Duration::from_micros(200) {
                        std::thread::yield_now();
                    } else {
                        std::hint::spin_loop();
                    }
                }
                let (inp, out) = (board.input.load(Acquire), board.output.load(Acquire));
                loop {
                    let c = board.next.fetch_add(1, AcqRel);
                    if c >= CHUNKS {
                        break;
                    }
                    // SAFETY: the driver keeps both buffers alive and untouched until `done` counts this chunk;
                    // chunk `c` is this thread's alone.
                    let (input, o) = unsafe {
                        (
                            std::slice::from_raw_parts(inp as *const f32, WIDTH),
                            std::slice::from_raw_parts_mut(
                                (out as *mut f32).add(c * PER_CHUNK),
                                PER_CHUNK,
                            ),
                        )
                    };
                    chunk(&w, input, c, o);
                    board.done.fetch_add(1, Release);
                }
            }
        })
    };
    let (mut a, mut b) = (vec![0.5f32; WIDTH], vec![0f32; WIDTH]);
    for _ in 0..sections {
        board.input.store(a.as_ptr() as usize, Release);
        board.output.store(b.as_mut_ptr() as usize, Release);
        board.done.store(0, Release);
        board.next.store(0, Release);
        board.seq.fetch_add(1, Release);
        let mut mine = 0;
        loop {
            let c = board.next.fetch_add(1, AcqRel);
            if c >= CHUNKS {
                break;
            }
            // SAFETY: chunk `c` is this thread's alone.
            let o = unsafe {
                std::slice::from_raw_parts_mut(b.as_mut_ptr().add(c * PER_CHUNK), PER_CHUNK)
            };
            chunk(&w, &a, c, o);
            mine += 1;
        }
        let mut spins = 0;
        while board.done.load(Acquire) + mine < CHUNKS {
            spins += 1;
            if spins < 256 {
                std::hint::spin_loop()
            } else {
                std::thread::yield_now()
            }
        }
        std::mem::swap(&mut a, &mut b);
    }
    board.stop.store(true, Relaxed);
    worker.join().unwrap();
    a[0]
}

/// Sections live in a ring of slots; a chunk's state word is `section << 8 | status << 4 | owner`, so a thread
/// that fell behind can never act on a slot reused for a later section.
const RING: usize = 4;
const FREE: u64 = 0;
const CLAIMED: u64 = 1;
const COMMITTING: u64 = 2;
const DONE: u64 = 3;

fn word(section: u64, status: u64, owner: u64) -> u64 {
    (section << 8) | (status << 4) | owner
}

/// An atomic on a cache line of its own.
#[repr(align(64))]
struct Padded(AtomicU64);

struct Slot {
    state: Vec<Padded>,
    next: AtomicUsize,
    claimed_at: Vec<AtomicU64>,
    done: AtomicUsize,
    out: Vec<UnsafeCell<f32>>,
}

// SAFETY: `out` is written only by the thread that won a chunk's commit, for that chunk's range, and read only
// after the section's last commit (or by a thread whose stale result is then dropped).
unsafe impl Sync for Slot {}

struct Ring {
    slots: Vec<Slot>,
    current: AtomicU64,
    end: u64,
    t0: Instant,
}

impl Ring {
    fn nanos(&self) -> u64 {
        self.t0.elapsed().as_nanos() as u64
    }

    fn open(&self, s: u64) {
        let slot = &self.slots[s as usize % RING];
        for st in &slot.state {
            st.0.store(word(s, FREE, 0), Relaxed);
        }
        slot.done.store(0, Relaxed);
        slot.next.store(0, Release);
    }

    /// A free chunk of section `s`, or one whose claim is older than [`TAKEOVER`], now claimed by `me`.
    fn claim(&self, slot: &Slot, s: u64, me: u64) -> Option<usize> {
        // Fast path: the next index from the slot's counter (a thread still on an older section may waste one;
        // the scan below finds it free).
        let c = slot.next.fetch_add(1, AcqRel);
        if c < CHUNKS
            && slot.state[c]
                .0
                .compare_exchange(word(s, FREE, 0), word(s, CLAIMED, me), AcqRel, Relaxed)
                .is_ok()
        {
            slot.claimed_at[c].store(self.nanos(), Relaxed);
            return Some(c);
        }
        for (c, st) in slot.state.iter().map(|p| &p.0).enumerate() {
            if st
                .compare_exchange(word(s, FREE, 0), word(s, CLAIMED, me), AcqRel, Relaxed)
                .is_ok()
            {
                slot.claimed_at[c].store(self.nanos(), Relaxed);
                return Some(c);
            }
        }
        let now = self.nanos();
        for (c, st) in slot.state.iter().map(|p| &p.0).enumerate() {
            let w = st.load(Acquire);
            let stale =
                now.saturating_sub(slot.claimed_at[c].load(Relaxed)) > TAKEOVER.as_nanos() as u64;
            if w >> 8 == s
                && (w >> 4) & 0xF == CLAIMED
                && w & 0xF != me
                && stale
                && st
                    .compare_exchange(w, word(s, CLAIMED, me), AcqRel, Relaxed)
                    .is_ok()
            {
                slot.claimed_at[c].store(now, Relaxed);
                return Some(c);
            }
        }
        None
    }

    fn run(&self, w: &Weights, me: u64) {
        let mut scratch = vec![0f32; PER_CHUNK];
        loop {
            let s = self.current.load(Acquire);
            if s >= self.end {
                return;
            }
            let slot = &self.slots[s as usize % RING];
            let prev = &self.slots[(s as usize + RING - 1) % RING];
            // SAFETY: the previous section is complete. (A bench's shortcut: a thread that lost its CPU for more
            // than RING - 2 sections may read a slot being rewritten; its commit then fails and the values are
            // dropped. The pool itself must keep a section's inputs until every thread has left it.)
            let input =
                unsafe { std::slice::from_raw_parts(prev.out[0].get() as *const f32, WIDTH) };
            let Some(c) = self.claim(slot, s, me) else {
                std::hint::spin_loop();
                continue;
            };
            chunk(w, input, c, &mut scratch);
            let won = slot.state[c]
                .0
                .compare_exchange(
                    word(s, CLAIMED, me),
                    word(s, COMMITTING, me),
                    AcqRel,
                    Relaxed,
                )
                .is_ok();
            if won {
                for (j, v) in scratch.iter().enumerate() {
                    // SAFETY: this thread won chunk `c`'s commit.
                    unsafe { *slot.out[c * PER_CHUNK + j].get() = *v };
                }
                slot.state[c].0.store(word(s, DONE, me), Release);
                if slot.done.fetch_add(1, AcqRel) + 1 == CHUNKS {
                    self.open(s + 1);
                    self.current.store(s + 1, Release);
                }
            }
        }
    }
}

fn symmetric(w: Arc<Weights>, sections: usize) -> f32 {
    let slot = || Slot {
        state: (0..CHUNKS).map(|_| Padded(AtomicU64::new(0))).collect(),
        next: AtomicUsize::new(0),
        claimed_at: (0..CHUNKS).map(|_| AtomicU64::new(0)).collect(),
        done: AtomicUsize::new(0),
        out: (0..WIDTH).map(|_| UnsafeCell::new(0.5)).collect(),
    };
    let ring = Arc::new(Ring {
        slots: (0..RING).map(|_| slot()).collect(),
        current: AtomicU64::new(1),
        end: sections as u64 + 1,
        t0: Instant::now(),
    });
    ring.open(1);
    let other = {
        let (ring, w) = (ring.clone(), w.clone());
        std::thread::spawn(move || ring.run(&w, 2))
    };
    ring.run(&w, 1);
    other.join().unwrap();
    // SAFETY: both threads have finished.
    unsafe { *ring.slots[sections % RING].out[0].get() }
}

/// Busy-looping processes, each bounded by `timeout`, ended (by PID) when dropped: SIGTERM to `timeout`, which
/// passes it on to its loop.
struct Hogs(Vec<Child>);

impl Hogs {
    fn start(n: usize) -> Self {
        Self(
            (0..n)
                .map(|_| {
                    Command::new("timeout")
                        .args(["300", "sh", "-c", "while :; do :; done"])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .expect("timeout and sh are needed")
                })
                .collect(),
        )
    }
}

impl Drop for Hogs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
    }
}

fn main() {
    let secs = common::env_usize("RILL_SCHED_SECS", 3) as f64;
    let rounds = common::env_usize("RILL_SCHED_ROUNDS", 3).max(1);
    let w = Arc::new(Weights(
        (0..256 * K)
            .map(|i| ((i * 7919) % 1000) as f32 * 0.001)
            .collect(),
    ));
    let t0 = Instant::now();
    one_thread(&w, 20 * SECTIONS);
    let per_token = t0.elapsed().as_secs_f64() / 20.0;
    let tokens = ((secs / per_token) as usize).max(10);
    let sections = tokens * SECTIONS;
    let want = one_thread(&w, sections).to_bits();
    println!(
        "one token: {SECTIONS} sections, {:.2} ms on one quiet thread; {tokens} tokens per run",
        per_token * 1e3
    );
    type Design = fn(&Arc<Weights>, usize) -> f32;
    let designs: [(&str, Design); 3] = [
        ("one thread", |w, s| one_thread(w, s)),
        ("fork-join", |w, s| fork_join(w.clone(), s)),
        ("symmetric", |w, s| symmetric(w.clone(), s)),
    ];
    let mut table = vec![vec![Vec::new(); designs.len()]; 3];
    for (hogs, row) in table.iter_mut().enumerate() {
        let _hogs = Hogs::start(hogs);
        std::thread::sleep(Duration::from_millis(300));
        for _ in 0..rounds {
            for (d, (name, run)) in designs.iter().enumerate() {
                let t = Instant::now();
                let got = run(&w, sections);
                row[d].push(tokens as f64 / t.elapsed().as_secs_f64());
                assert_eq!(got.to_bits(), want, "{name} computed other bits");
            }
        }
    }
    let quiet = common::median(table[0][1].clone());
    println!(
        "\n{:<12} {:>22} {:>22} {:>22}",
        "tokens/s", "quiet", "beside 1 busy process", "beside 2"
    );
    for (d, (name, _)) in designs.iter().enumerate() {
        let cells: Vec<String> = (0..3)
            .map(|h| {
                let m = common::median(table[h][d].clone());
                format!("{m:.1} ({:.0}%)", 100.0 * m / quiet)
            })
            .collect();
        println!(
            "{name:<12} {:>22} {:>22} {:>22}",
            cells[0], cells[1], cells[2]
        );
    }
    println!("(% of quiet fork-join; medians of {rounds} rounds, 2 threads but `one thread`)");
}
