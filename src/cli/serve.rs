//! `rill serve`: load the model, then serve the HTTP API until Ctrl-C.

use anyhow::Context;

use crate::config::ServeArgs;

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let engine = super::start_engine(&args.model, args.engine.config())
        .with_context(|| format!("loading model `{}`", args.model.model))?;
    let info = engine.info().clone();
    tracing::info!(model = %info.name, arch = %info.arch, quant = %info.quantization, context = info.context_length, "model ready");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
            .await
            .with_context(|| format!("binding {}:{}", args.host, args.port))?;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, "listening");
        eprintln!("rill listening on http://{addr}");
        axum::serve(listener, crate::api::app(engine))
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        Ok(())
    })
}
