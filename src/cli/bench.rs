//! `rill bench`: measure an OpenAI-compatible streaming server (rill or any other) at one or more concurrency
//! levels and print a table, plus JSON with `--json`.
//!
//! Exit status: 0 when every measured request succeeded; 1 when any failed (the table and JSON are written
//! first, each failed request carrying its error) or when the run could not start (bad flags, no model list);
//! 2 for flags clap rejects. Warm-up failures are reported on stderr but do not change the status.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::bench::report::{Report, ServerInfo};
use crate::bench::{self, BenchError, Endpoint, Level, RequestOptions, Settings, Target};

/// Flags of `rill bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Server base URL, with or without a trailing `/v1`.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// API key, sent as `Authorization: Bearer <key>`.
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Model name to request (default: the first id listed by `GET /v1/models`).
    #[arg(long)]
    pub model: Option<String>,
    /// Concurrency levels, comma-separated (e.g. `1,2,4,8`): one measured run per level, in order.
    #[arg(long, value_delimiter = ',', default_value = "4")]
    pub concurrency: Vec<usize>,
    /// Requests each concurrent client sends back to back; a level sends concurrency × rounds requests.
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// `max_tokens` of every request.
    #[arg(long, default_value_t = 128)]
    pub max_tokens: u64,
    /// A prompt (repeatable); request i uses prompt i mod the number of prompts. Default: a built-in list of
    /// distinct short questions.
    #[arg(long)]
    pub prompt: Vec<String>,
    /// File of prompts, one per line (blank lines skipped), used after any --prompt.
    #[arg(long)]
    pub prompts_file: Option<PathBuf>,
    /// Route to measure: `chat` (/v1/chat/completions, the prompt as a user message) or `completions`
    /// (/v1/completions, the prompt as text).
    #[arg(long, value_enum, default_value_t = Endpoint::Chat)]
    pub endpoint: Endpoint,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Ask for exactly --max-tokens tokens: sends `ignore_eos: true` (rill, vLLM, llama.cpp's server) and
    /// `min_tokens: <max-tokens>` (vLLM, llama-cpp-python, which bans only the model's main EOS id that way).
    #[arg(long)]
    pub ignore_eos: bool,
    /// Token ids to ban with `logit_bias: {"<id>": -100}` (comma-separated or repeatable), e.g. the model's
    /// end-of-generation ids for a server that has neither `ignore_eos` nor `min_tokens`. Not together with
    /// --ignore-eos against llama-cpp-python: given both `min_tokens` and `logit_bias`, it applies neither.
    #[arg(long, value_delimiter = ',')]
    pub ban_token: Vec<u32>,
    /// Untimed requests sent one at a time before each level.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Also write the full results as JSON to this file; `-` writes them to stdout (the table then goes to
    /// stderr).
    #[arg(long)]
    pub json: Option<String>,
    /// Longest a single request may take, in seconds; a slower one is recorded as failed.
    #[arg(long, default_value_t = 300.0)]
    pub timeout_secs: f64,
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(bench(args))
}

async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let target = Target::new(&args.url, args.api_key.clone())?;
    let prompts = bench::prompts::load(&args.prompt, args.prompts_file.as_deref())?;
    let model = match &args.model {
        Some(m) => m.clone(),
        None => target
            .first_model()
            .await
            .context("finding the model to request")?,
    };
    let settings = Settings {
        concurrency: args.concurrency.clone(),
        rounds: args.rounds,
        warmup: args.warmup,
        timeout_secs: args.timeout_secs,
        request: RequestOptions {
            endpoint: args.endpoint,
            model: model.clone(),
            max_tokens: args.max_tokens,
            temperature: args.temperature,
            ignore_eos: args.ignore_eos,
            ban_token_ids: args.ban_token.clone(),
        },
        prompts,
    };
    settings.validate()?;
    eprintln!(
        "rill bench: {} model {}, levels {:?}, {} round(s) each",
        target.base(),
        model,
        settings.concurrency,
        settings.rounds
    );
    let levels = bench::run(&target, &settings, progress).await;
    let server = ServerInfo {
        url: target.base().to_string(),
        model,
    };
    let report = Report::new(server, &settings, &levels);
    write_outputs(&report, args.json.as_deref())?;
    let total: usize = levels.iter().map(|l| l.summary.requests).sum();
    let failed: usize = levels.iter().map(|l| l.summary.failed).sum();
    if failed > 0 {
        return Err(BenchError::RequestsFailed { failed, total }.into());
    }
    Ok(())
}

/// One stderr line per finished level, with the first error of any failure.
fn progress(level: &Level) {
    let s = &level.summary;
    eprintln!(
        "  concurrency {}: {}/{} ok in {:.2} s, {:.1} tok/s",
        s.concurrency, s.ok, s.requests, s.wall_s, s.aggregate_tok_s
    );
    for e in level.warmup_errors.iter().take(1) {
        eprintln!("    warm-up failed: {e}");
    }
    if let Some(e) = level.requests.iter().find_map(|r| r.error.as_ref()) {
        eprintln!("    {} failed; first error: {e}", s.failed);
    }
}

fn write_outputs(report: &Report<'_>, json: Option<&str>) -> Result<(), BenchError> {
    let table = report.table();
    match json {
        Some("-") => {
            eprint!("{table}");
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", report.json()).map_err(|source| BenchError::Write {
                path: "-".into(),
                source,
            })?;
        }
        Some(path) => {
            print!("{table}");
            std::fs::write(path, report.json() + "\n").map_err(|source| BenchError::Write {
                path: path.into(),
                source,
            })?;
        }
        None => print!("{table}"),
    }
    Ok(())
}
