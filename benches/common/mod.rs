//! Helpers the benches share: knobs from the environment, medians, and an engine over a model folder.

#![allow(dead_code)]

/// A numeric knob from the environment, or `default`.
pub fn env_usize(k: &str, default: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The median (the upper one of an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Tokens per answer and rounds: `RILL_BENCH_TOKENS` (default 64) and `RILL_BENCH_ROUNDS` (default 3).
pub fn knobs() -> (usize, usize) {
    (
        env_usize("RILL_BENCH_TOKENS", 64),
        env_usize("RILL_BENCH_ROUNDS", 3).max(1),
    )
}

/// An engine over the model in `dir` on `device`, without the prefix cache (repeated prompts would otherwise
/// become copies instead of being computed).
pub fn engine(
    dir: &std::path::Path,
    label: &str,
    device: &candle_core::Device,
) -> rill::engine::EngineHandle {
    let locator = rill::load::ModelLocator::from_env(dir.parent().unwrap().to_path_buf());
    let source = locator.resolve(dir.to_str().unwrap()).unwrap();
    let (label, device) = (label.to_string(), device.clone());
    rill::engine::EngineHandle::start(
        move || rill::load::load(&source, &label, &device),
        rill::engine::EngineConfig {
            prefix_cache_bytes: 0,
            ..rill::engine::EngineConfig::default()
        },
    )
    .unwrap()
}

/// Waits for every stream, each on its own thread, and returns how each ended.
pub fn finish_all(streams: Vec<rill::engine::EventStream>) -> Vec<rill::engine::Completion> {
    streams
        .into_iter()
        .map(|s| std::thread::spawn(move || s.collect_blocking().unwrap().2))
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect()
}
