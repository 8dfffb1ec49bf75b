//! Team steps against a serial reference: bits, stalled and late members, panicking commits, the last output.

use super::*;

/// A chain of sections, each value a float sum over the whole previous output (so a wrong or missing
/// value anywhere spreads to everything after it). With `stall`, the caller stops inside every chunk it
/// computes until someone else has committed that chunk, as if it had lost its CPU there.
struct Chain {
    sections: usize,
    stall: Option<Arc<Step>>,
}

const WIDTH: usize = 64;
const CHUNKS: usize = 8;

fn value(prev: &[f32], section: usize, i: usize) -> f32 {
    let mut acc = (section * 31 + i) as f32 * 0.001;
    for (j, p) in prev.iter().enumerate() {
        acc += p * ((i * 7 + j) % 13) as f32 * 0.01;
    }
    acc.sin()
}

impl Program for Chain {
    fn run(&self, m: &mut Member<'_>) -> Result<(), Abandoned> {
        let mut prev = vec![0.5f32; WIDTH];
        for s in 0..self.sections {
            let caller = !m.worker;
            let per = WIDTH / CHUNKS;
            let out = m.section(
                |c, scratch| {
                    if let (Some(step), true) = (&self.stall, caller) {
                        let t0 = Instant::now();
                        while step.sections[s].state[c].load(Ordering::Acquire) != DONE {
                            assert!(t0.elapsed() < Duration::from_secs(20), "no one took over");
                            std::thread::yield_now();
                        }
                    }
                    scratch.extend((c * per..(c + 1) * per).map(|i| value(&prev, s, i)));
                },
                // SAFETY: chunk `c` owns values `c * per ..`.
                |c, scratch, out| unsafe { out.write(c * per, scratch) },
            )?;
            prev = out.to_vec();
        }
        Ok(())
    }
}

fn serial(sections: usize) -> Vec<f32> {
    let mut prev = vec![0.5f32; WIDTH];
    for s in 0..sections {
        prev = (0..WIDTH).map(|i| value(&prev, s, i)).collect();
    }
    prev
}

fn shapes(n: usize) -> Vec<Shape> {
    vec![
        Shape {
            out: WIDTH,
            chunks: CHUNKS
        };
        n
    ]
}

#[test]
fn a_team_step_gives_the_serial_bits() {
    for _ in 0..50 {
        let step = crate::pool::team(
            Arc::new(Chain {
                sections: 30,
                stall: None,
            }),
            &shapes(30),
        );
        assert_eq!(step.output(29), serial(30));
    }
}

/// The last output leaves the step without a copy when nothing else holds the step, and as a copy of the
/// same values while something does.
#[test]
fn the_last_output_moves_out_of_a_step_no_member_holds() {
    let step = crate::pool::team(
        Arc::new(Chain {
            sections: 4,
            stall: None,
        }),
        &shapes(4),
    );
    let at = step.output(3).as_ptr();
    let held = step.clone();
    let copied = Step::into_last(step);
    assert_eq!(copied, serial(4));
    assert_ne!(copied.as_ptr(), at);
    // A worker may still be on its way out of the step.
    let t0 = Instant::now();
    while Arc::strong_count(&held) > 1 {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "a worker kept the step"
        );
        std::thread::yield_now();
    }
    let moved = Step::into_last(held);
    assert_eq!(moved, serial(4));
    assert_eq!(moved.as_ptr(), at);
}

/// The caller stalls in every chunk it claims: the worker computes and commits those chunks after its
/// patience runs out, the caller's own commits of them fail, and the bits are the serial ones.
#[test]
fn a_stalled_member_is_overtaken_and_its_late_commits_fail() {
    let step = Arc::new(Step::new(&shapes(3)));
    let program = Chain {
        sections: 3,
        stall: Some(step.clone()),
    };
    std::thread::scope(|s| {
        let worker = s.spawn(|| {
            let mut m = Member::new(&step, true);
            let r = program.run(&mut m);
            (r, m.computed)
        });
        let mut m = Member::new(&step, false);
        program.run(&mut m).unwrap();
        let (r, worker_computed) = worker.join().unwrap();
        assert_eq!(r, Ok(()));
        assert!(
            m.computed >= 1 && m.lost == m.computed,
            "{} {}",
            m.computed,
            m.lost
        );
        assert_eq!(worker_computed, 3 * CHUNKS);
    });
    assert_eq!(step.output(2), serial(3));
}

/// A worker whose commit panics hands its chunk back: the caller computes it, and the step finishes
/// with the serial bits instead of waiting for ever on a chunk left half-written.
#[test]
fn a_commit_that_panics_reopens_its_chunk() {
    struct PanicInCommit(Arc<AtomicBool>);
    impl Program for PanicInCommit {
        fn run(&self, m: &mut Member<'_>) -> Result<(), Abandoned> {
            let (worker, per) = (m.worker, WIDTH / CHUNKS);
            let mut prev = vec![0.5f32; WIDTH];
            for s in 0..3 {
                let out = m.section(
                    |c, scratch| {
                        // The caller starts only once the worker has failed.
                        let t0 = Instant::now();
                        while !worker && !self.0.load(Ordering::Acquire) {
                            assert!(t0.elapsed() < Duration::from_secs(20), "no panic");
                            std::thread::yield_now();
                        }
                        scratch.extend((c * per..(c + 1) * per).map(|i| value(&prev, s, i)));
                    },
                    |c, scratch, out| {
                        assert!(!worker, "a worker's commit fails");
                        // SAFETY: chunk `c` owns values `c * per ..`.
                        unsafe { out.write(c * per, scratch) }
                    },
                )?;
                prev = out.to_vec();
            }
            Ok(())
        }
    }
    let step = Step::new(&shapes(3));
    let failed = Arc::new(AtomicBool::new(false));
    let program = PanicInCommit(failed.clone());
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut m = Member::new(&step, true);
            let r = catch_unwind(AssertUnwindSafe(|| program.run(&mut m)));
            assert!(r.is_err());
            failed.store(true, Ordering::Release);
        });
        let mut m = Member::new(&step, false);
        program.run(&mut m).unwrap();
    });
    assert_eq!(step.output(2), serial(3));
}

/// A member that arrives after the caller finished leaves at its first section.
#[test]
fn a_late_worker_leaves_a_finished_step() {
    let step = Step::new(&shapes(4));
    let program = Chain {
        sections: 4,
        stall: None,
    };
    lead(&program, &step).unwrap();
    let mut late = Member::new(&step, true);
    assert_eq!(program.run(&mut late), Err(Abandoned));
    assert_eq!(late.computed, 0);
    assert_eq!(step.output(3), serial(4));
}
