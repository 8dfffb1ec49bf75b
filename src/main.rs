//! The `rill` binary: parse flags, set up logging, and run the chosen command.

use clap::Parser;
use rill::config::{Cli, Command};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let threads = match &cli.command {
        Command::Serve(a) => a.model.threads,
        Command::Generate(a) => a.model.threads,
        Command::Bench(_) | Command::Quantize(_) => None,
    };
    rill::cli::set_cpu_threads(threads);
    let default_level = match cli.command {
        Command::Serve(_) => "info",
        Command::Generate(_) | Command::Bench(_) | Command::Quantize(_) => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("RILL_LOG")
        .unwrap_or_else(|_| default_level.into());
    // Colours only on a terminal: log files and journald get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Generate(args) => rill::cli::generate::run(args),
        Command::Serve(args) => rill::cli::serve::run(args),
        Command::Bench(args) => rill::cli::bench::run(args),
        Command::Quantize(args) => rill::cli::quantize(args),
    }
}
