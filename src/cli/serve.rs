//! `rill serve`: bind the port, load the model on the generation thread meanwhile (`/health` answers 503 until
//! it is ready), then serve the HTTP API until Ctrl-C or SIGTERM. A failed load stops the server with the error.
//!
//! Shutdown is graceful and bounded: the first signal closes the listener and lets requests in flight finish
//! for up to `--shutdown-grace-secs`, then the process exits 0; a second signal exits at once.

use anyhow::Context;
use tokio::sync::oneshot;

use crate::api::{self, AppState};
use crate::config::ServeArgs;
use crate::load::{ModelLocator, ModelSource};

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .on_thread_start(crate::sched::helper_thread)
        .enable_all()
        .build()?;
    rt.block_on(serve(args))
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
        .await
        .with_context(|| format!("binding {}:{}", args.host, args.port))?;
    let addr = listener.local_addr()?;
    let state = AppState::loading(super::short_name(&args.model.model), args.api.config());
    tracing::info!(%addr, model = %state.model_name(), "listening; loading the model");
    eprintln!("rill listening on http://{addr}");
    let failed = spawn_loader(&args, state.clone());
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let mut server = tokio::spawn(api::serve(listener, state.clone(), async {
        let _ = stop_rx.await;
    }));
    let mut load_failed = false;
    tokio::select! {
        r = &mut server => return Ok(r??),
        _ = signalled() => {}
        Ok(()) = failed => load_failed = true,
    }
    let _ = stop_tx.send(());
    if !load_failed {
        let grace = std::time::Duration::from_secs_f64(args.shutdown_grace_secs.max(0.0));
        tracing::info!(
            grace_secs = grace.as_secs_f64(),
            "shutting down: no new connections; finishing requests in flight"
        );
        tokio::select! {
            r = &mut server => r??,
            _ = tokio::time::sleep(grace) => {
                tracing::warn!("shutdown grace period over: exiting with requests still in flight");
            }
            _ = signalled() => tracing::warn!("second signal: exiting at once"),
        }
    } else {
        server.await??;
    }
    match state.engine() {
        Err(api::ApiError::LoadFailed(e)) => {
            anyhow::bail!("loading model `{}`: {e}", args.model.model)
        }
        _ => Ok(()),
    }
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM.
async fn signalled() {
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminated() => {}
    }
}

/// Resolves on SIGTERM (how service managers and containers stop a process); never elsewhere.
async fn terminated() {
    #[cfg(unix)]
    if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        s.recv().await;
        return;
    }
    std::future::pending::<()>().await
}

/// Loads the model on its own thread; flips `state` to ready, or marks it failed and signals the server to stop.
fn spawn_loader(args: &ServeArgs, state: AppState) -> oneshot::Receiver<()> {
    let (tx, rx) = oneshot::channel();
    let (model_args, config) = (args.model.clone(), args.engine.config());
    std::thread::spawn(move || match super::start_engine(&model_args, config) {
        Ok(engine) => {
            let info = engine.info().clone();
            let load_ms = engine.shared().load_time.as_millis() as u64;
            tracing::info!(
                model = %info.name, arch = %info.arch, quant = %info.quantization, context = info.context_length, load_ms,
                "model ready"
            );
            if let Some(bytes) = weights_size(&model_args) {
                state.set_model_size(bytes);
            }
            let shared = engine.shared().clone();
            state.set_ready(engine);
            // The vocabulary for constrained decoding takes ~0.2 s to prepare on a 49k-token model: do it now,
            // on this thread, rather than on the first structured request's async worker.
            if let Err(e) = shared.grammars() {
                tracing::warn!(error = %e, "constrained decoding is unavailable");
            }
        }
        Err(e) => {
            state.set_failed(e.to_string());
            let _ = tx.send(());
        }
    });
    rx
}

/// Bytes of the model's weight files (resolved again: the load already cached any download).
fn weights_size(args: &crate::config::ModelArgs) -> Option<u64> {
    let source = ModelLocator::from_env(args.models_dir())
        .resolve(&args.model)
        .ok()?;
    let files = match source {
        ModelSource::Gguf { file, .. } => vec![file],
        ModelSource::HfFolder { weights, .. } => weights,
    };
    files
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()).ok())
        .sum()
}
