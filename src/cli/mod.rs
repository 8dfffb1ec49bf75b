//! The subcommands behind the binary.

pub mod bench;
pub mod generate;
pub mod serve;

use crate::config::ModelArgs;
use crate::engine::{EngineConfig, EngineHandle};
use crate::load::{self, ModelLocator};
use crate::model::ModelError;

/// `rill quantize`: writes the re-quantized file and says what it wrote.
pub fn quantize(args: crate::config::QuantizeArgs) -> anyhow::Result<()> {
    let t0 = std::time::Instant::now();
    let r = load::quantize::quantize(&args.input, &args.output, args.mix)?;
    println!(
        "wrote {} ({} tensors, {:.1} MB from {:.1} MB) in {:.1}s",
        args.output.display(),
        r.tensors,
        r.bytes_out as f64 / 1e6,
        r.bytes_in as f64 / 1e6,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Resolves the model named on the command line and starts the generation thread with it loaded.
pub fn start_engine(args: &ModelArgs, config: EngineConfig) -> Result<EngineHandle, ModelError> {
    let locator = ModelLocator::from_env(args.models_dir());
    let source = locator.resolve(&args.model)?;
    let name = short_name(&args.model);
    let device_name = args.device.clone();
    let opts = args.load_options();
    tracing::info!(model = %args.model, source = ?source, "loading model");
    EngineHandle::start(
        move || {
            let device = load::device(&device_name)?;
            load::load_with(&source, &name, &device, &opts)
        },
        config,
    )
}

/// Fixes the CPU thread count for candle and rill's kernels before any of them start. candle otherwise re-reads
/// `/proc/cpuinfo` each time it sizes a parallel operation, which costs several percent of decode time.
/// Call it from `main` before any other thread exists: it sets environment variables.
pub fn set_cpu_threads(threads: Option<usize>) {
    let n = threads
        .or_else(|| {
            std::env::var("RAYON_NUM_THREADS")
                .ok()
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, crate::pool::MAX_THREADS);
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    std::env::set_var("CANDLE_NUM_THREADS", n.to_string());
    crate::pool::set_threads(n);
}

/// The name a model is served under: the last path component without extension (`models/smollm2` → `smollm2`).
pub fn short_name(model: &str) -> String {
    let trimmed = model.trim_end_matches('/');
    let last = trimmed.rsplit('/').next().unwrap_or(trimmed);
    last.strip_suffix(".gguf").unwrap_or(last).to_string()
}
