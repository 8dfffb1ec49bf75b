//! Scheduling hints for rill's helper threads.
//!
//! The generation thread and the pool's workers compute the steps; the other threads (the HTTP runtime's, and
//! `rill generate`'s reader) only carry finished tokens onward. On Linux those helpers run under `SCHED_BATCH`:
//! the same weight, so the same CPU share, as any normal thread, but their wake-ups do not preempt a running
//! thread. Without it, the HTTP thread that each delivered token wakes was placed on the generation thread's
//! CPU and ran first, and the generation thread's work between two steps took ~110 µs instead of ~10 µs per
//! step (one stream and eight alike). The helper now runs when a CPU comes free, a few milliseconds at most.
//!
//! `RILL_SCHED_BATCH=0` leaves the helpers as normal threads (comparisons).

/// Marks the calling thread as a helper (see the module doc). Best effort: where the policy cannot be set,
/// the thread stays as it was.
pub fn helper_thread() {
    if std::env::var_os("RILL_SCHED_BATCH").is_some_and(|v| v == "0") {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `param` is a valid `sched_param` for the duration of the call; pid 0 names the calling thread,
        // and SCHED_BATCH at priority 0 needs no privilege.
        let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
        if rc != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "SCHED_BATCH not set");
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    /// A helper thread gets SCHED_BATCH; the thread that spawned it keeps its own policy.
    #[test]
    fn a_helper_thread_runs_as_a_batch_thread() {
        // SAFETY: plain queries of the calling thread's policy.
        let policy = || unsafe { libc::sched_getscheduler(0) };
        let before = policy();
        let helper = std::thread::spawn(move || {
            super::helper_thread();
            policy()
        })
        .join()
        .unwrap();
        assert_eq!(helper, libc::SCHED_BATCH);
        assert_eq!(policy(), before);
    }
}
