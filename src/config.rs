//! Command-line flags (every flag also readable from the environment where that helps).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::engine::{EngineConfig, SamplingParams};

/// rill: run a local language model and stream its output.
#[derive(Debug, Parser)]
#[command(name = "rill", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate text for one prompt, streaming only the generated text to stdout.
    Generate(GenerateArgs),
    /// Serve the model over HTTP.
    Serve(ServeArgs),
    /// Measure an OpenAI-compatible streaming server (rill or any other) at one or more concurrency levels.
    Bench(crate::cli::bench::BenchArgs),
    /// Re-quantize a GGUF file to another weight mix (q4_k_m, q5_k_m, q6_k, q8_0, ...).
    Quantize(QuantizeArgs),
}

/// `rill quantize IN OUT --type MIX`.
#[derive(Debug, Args)]
pub struct QuantizeArgs {
    /// The GGUF file to read.
    pub input: PathBuf,
    /// The GGUF file to write.
    pub output: PathBuf,
    /// The weight mix to write.
    #[arg(long = "type", value_enum, default_value = "q4_k_m")]
    pub mix: crate::load::quantize::Mix,
}

/// Which model to load and where.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Model: a .gguf file, a HuggingFace-layout folder, a short name under the models folder (e.g. `smollm2`),
    /// or a HuggingFace repo id (e.g. `gpt2`) resolved through the hub cache.
    #[arg(long, short, env = "RILL_MODEL", default_value = "smollm2")]
    pub model: String,
    /// Folder of short-named models; defaults to `./models`, else the `models` folder of rill's source tree.
    #[arg(long, env = "RILL_MODELS_DIR")]
    pub models_dir: Option<PathBuf>,
    /// Compute device: cpu, cuda, metal or auto (the first GPU of this build that works, else the CPU). cuda and
    /// metal need the matching cargo feature.
    #[arg(long, env = "RILL_DEVICE", default_value = "cpu", value_parser = ["cpu", "cuda", "metal", "auto"])]
    pub device: String,
    /// CPU threads for the model's kernels (default: every available core).
    #[arg(long, short = 't', env = "RILL_THREADS", value_parser = thread_count)]
    pub threads: Option<usize>,
    /// Most tokens per sequence, prompt and answer together (default: the model's own context; for Phi-3 /
    /// 3.5 long-context models their pretrained 4096, above which they switch to their long rotary factors).
    #[arg(long, env = "RILL_CTX_SIZE", value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    pub ctx_size: Option<u64>,
    /// The type a safetensors checkpoint's matrices are kept and multiplied in: `auto` keeps a checkpoint's
    /// f16 or bf16 on the CPU (half the memory of f32 and faster decoding, the same results as f32) and, on a
    /// GPU, for matrices of more than 2M values (smaller ones become f32); `f32`, `f16` or `bf16` convert.
    /// On a GPU a half-type matrix multiplies activations rounded to its type; everything else runs in f32.
    /// GGUF files keep their own types.
    #[arg(long, env = "RILL_DTYPE", value_enum, default_value = "auto")]
    pub dtype: DtypeArg,
}

/// `--dtype`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DtypeArg {
    Auto,
    F32,
    F16,
    Bf16,
}

impl ModelArgs {
    /// The loader's options from these flags.
    pub fn load_options(&self) -> crate::load::LoadOptions {
        use crate::load::WeightDtype as W;
        crate::load::LoadOptions {
            ctx_size: self.ctx_size.map(|n| n as usize),
            dtype: match self.dtype {
                DtypeArg::Auto => W::Auto,
                DtypeArg::F32 => W::F32,
                DtypeArg::F16 => W::F16,
                DtypeArg::Bf16 => W::Bf16,
            },
        }
    }

    pub fn models_dir(&self) -> PathBuf {
        if let Some(d) = &self.models_dir {
            return d.clone();
        }
        let local = PathBuf::from("models");
        if local.is_dir() {
            local
        } else {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models")
        }
    }
}

/// Sampling flags shared by the CLI commands, each checked against its range as it is parsed (negative numbers
/// reach the check rather than being taken for flags).
#[derive(Debug, Clone, Args)]
pub struct SamplingArgs {
    /// Most tokens to generate (at least 1).
    #[arg(long, default_value_t = 256, value_parser = at_least_1)]
    pub max_tokens: usize,
    /// Sampling temperature, at least 0; 0 is greedy.
    #[arg(long, default_value_t = 0.8, allow_negative_numbers = true, value_parser = at_least_0)]
    pub temperature: f32,
    /// Nucleus sampling: keep the most likely tokens up to this probability mass, 0 to 1 (1 = off).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true, value_parser = from_0_to_1)]
    pub top_p: f32,
    /// Keep only the k most likely tokens (0 = off).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Drop tokens less likely than this fraction of the most likely one, 0 to 1 (0 = off).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true, value_parser = from_0_to_1)]
    pub min_p: f32,
    /// Repetition penalty over the last 64 tokens, above 0 (1 = off; above 1 discourages repeats).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true, value_parser = above_0)]
    pub repeat_penalty: f32,
    /// Random seed; the same seed gives the same output.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop when this string appears (repeatable); it is not printed.
    #[arg(long)]
    pub stop: Vec<String>,
    /// Keep generating past the model's end-of-sequence token.
    #[arg(long)]
    pub ignore_eos: bool,
}

/// A finite number for which `ok` holds, else what it must be.
fn number_where(s: &str, ok: fn(f32) -> bool, must: &str) -> Result<f32, String> {
    match s.trim().parse::<f32>() {
        Ok(v) if v.is_finite() && ok(v) => Ok(v),
        _ => Err(format!("must be a number {must}")),
    }
}

fn at_least_1(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err("must be a whole number of at least 1".into()),
    }
}

fn thread_count(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=crate::pool::MAX_THREADS).contains(&n) => Ok(n),
        _ => Err(format!(
            "must be a whole number from 1 to {}",
            crate::pool::MAX_THREADS
        )),
    }
}

/// The longest time a seconds flag takes (a year): `Duration` holds it, and no wait needs more.
const MAX_SECONDS: f64 = 365.0 * 86_400.0;

/// A number of seconds from 0 to a year.
fn seconds(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if (0.0..=MAX_SECONDS).contains(&v) => Ok(v),
        _ => Err(format!(
            "must be a number of seconds from 0 to {MAX_SECONDS}"
        )),
    }
}

fn at_least_0(s: &str) -> Result<f32, String> {
    number_where(s, |v| v >= 0.0, "of at least 0")
}

fn from_0_to_1(s: &str) -> Result<f32, String> {
    number_where(s, |v| (0.0..=1.0).contains(&v), "from 0 to 1")
}

fn above_0(s: &str) -> Result<f32, String> {
    number_where(s, |v| v > 0.0, "above 0")
}

impl SamplingArgs {
    pub fn params(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            min_p: self.min_p,
            repetition_penalty: self.repeat_penalty,
            seed: self.seed,
            ..SamplingParams::default()
        }
    }
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt (or the user message with --chat).
    #[arg(long, short)]
    pub prompt: String,
    /// Format the prompt with the model's chat template as a user message.
    #[arg(long)]
    pub chat: bool,
    /// System message for --chat.
    #[arg(long)]
    pub system: Option<String>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// Generation-thread tuning.
#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// Sequences generated at once, batched into one forward pass per step.
    #[arg(long, env = "RILL_MAX_RUNNING", default_value_t = 8, value_parser = at_least_1)]
    pub max_running: usize,
    /// Requests allowed to wait for a slot; beyond it requests are refused (429/503).
    #[arg(long, env = "RILL_QUEUE_SIZE", default_value_t = 64, value_parser = at_least_1)]
    pub queue_size: usize,
    /// Prompt tokens per step, shared by the prompts being prefilled in arrival order; long prompts are
    /// processed in chunks between decode steps.
    #[arg(long, env = "RILL_PREFILL_CHUNK", default_value_t = 256, value_parser = at_least_1)]
    pub prefill_chunk: usize,
    /// KV-cache memory the running requests may reserve together, in MiB (each counted at its worst case:
    /// prompt plus maximum tokens). Larger requests are refused; others wait in order until theirs fits.
    #[arg(long, env = "RILL_KV_BUDGET_MB", default_value_t = 4096, value_parser = at_least_1)]
    pub kv_budget_mb: usize,
    /// KV-cache memory, in MiB, kept from finished requests so that prompts starting the same way (system
    /// prompt, earlier turns of a conversation) prefill only what is new; 0 turns the prefix cache off.
    #[arg(long, env = "RILL_PREFIX_CACHE_MB", default_value_t = 512)]
    pub prefix_cache_mb: usize,
    /// Most alternatives a request may ask for with each token's log probability (`top_logprobs`, the
    /// completions' `logprobs`); OpenAI's limit is 20. Raise it for fidelity measurements.
    #[arg(long, env = "RILL_MAX_LOGPROBS", default_value_t = 20)]
    pub max_logprobs: usize,
    /// The type the KV cache stores keys and values in: `f32`, or `f16` for half the memory (each value
    /// rounded to f16 once, as llama.cpp's default cache does).
    #[arg(long, env = "RILL_KV_DTYPE", value_enum, default_value = "f32")]
    pub kv_dtype: KvDtype,
}

/// `--kv-dtype`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KvDtype {
    F32,
    F16,
}

impl EngineArgs {
    pub fn config(&self) -> EngineConfig {
        EngineConfig {
            max_running: self.max_running,
            queue_capacity: self.queue_size,
            prefill_chunk: self.prefill_chunk,
            kv_budget_bytes: self.kv_budget_mb.saturating_mul(1 << 20),
            prefix_cache_bytes: self.prefix_cache_mb.saturating_mul(1 << 20),
            max_logprobs: self.max_logprobs,
            kv_dtype: match self.kv_dtype {
                KvDtype::F32 => candle_core::DType::F32,
                KvDtype::F16 => candle_core::DType::F16,
            },
            ..EngineConfig::default()
        }
    }
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Address to listen on; 127.0.0.1 keeps the server private to this machine.
    #[arg(long, env = "RILL_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 picks a free one and prints it).
    #[arg(long, env = "RILL_PORT", default_value_t = 8080)]
    pub port: u16,
    /// On SIGTERM or Ctrl-C, stop accepting connections and give requests in flight this many seconds to
    /// finish before exiting; a second signal exits at once.
    #[arg(long, env = "RILL_SHUTDOWN_GRACE_SECS", default_value_t = 30.0, value_parser = seconds)]
    pub shutdown_grace_secs: f64,
    #[command(flatten)]
    pub engine: EngineArgs,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// HTTP behaviour of `rill serve`.
#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// Require this key on every model route, as `Authorization: Bearer <key>` or `x-api-key: <key>`
    /// (`/health`, `/`, the chat page's files and a browser stream's event feed, which its token guards, stay
    /// open).
    #[arg(long, env = "RILL_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Allow browsers from this origin (repeatable or comma-separated; `*` allows any). CORS is off by default.
    #[arg(long, env = "RILL_CORS_ORIGIN", value_delimiter = ',')]
    pub cors_origin: Vec<String>,
    /// Largest request body accepted, in bytes; larger ones get 413.
    #[arg(long, env = "RILL_BODY_LIMIT", default_value_t = 4 * 1024 * 1024, value_parser = at_least_1)]
    pub body_limit: usize,
    /// Let OpenAI and Anthropic requests name any model and get the served one (by default an unknown name is a
    /// 404; Ollama requests must always name the served model). From the environment, `1`, `true`, `yes` or
    /// `on` turn it on.
    #[arg(long, env = "RILL_ANY_MODEL", value_parser = clap::builder::BoolishValueParser::new())]
    pub any_model: bool,
    /// Seconds a stream may stay silent (e.g. during a long prefill) before an SSE keep-alive is sent.
    #[arg(long, env = "RILL_SSE_PING_SECS", default_value_t = 10.0, value_parser = seconds)]
    pub sse_ping_secs: f64,
    /// Seconds a client may take to send a request's headers, and again its body; a slower client (one that
    /// trickles bytes to hold a connection) is cut off: the connection is closed, or a 408 for a late body.
    #[arg(long, env = "RILL_REQUEST_TIMEOUT_SECS", default_value_t = 30.0, value_parser = seconds)]
    pub request_timeout_secs: f64,
    /// Seconds a browser stream (`/v1/streams`, the chat page) goes on generating after its reader disconnects,
    /// waiting for the reconnect that resumes it; also how long its events are kept after the last one.
    #[arg(long, env = "RILL_RESUME_WINDOW_SECS", default_value_t = 30.0, value_parser = seconds)]
    pub resume_window_secs: f64,
}

impl ApiArgs {
    pub fn config(&self) -> crate::api::ApiConfig {
        crate::api::ApiConfig {
            api_key: self.api_key.clone().filter(|k| !k.is_empty()),
            cors_origins: self
                .cors_origin
                .iter()
                .map(|o| o.trim().to_string())
                .filter(|o| !o.is_empty())
                .collect(),
            body_limit: self.body_limit,
            any_model: self.any_model,
            ping_interval: std::time::Duration::from_secs_f64(
                self.sse_ping_secs.clamp(0.05, 3600.0),
            ),
            request_timeout: std::time::Duration::from_secs_f64(
                self.request_timeout_secs.clamp(0.05, 86_400.0),
            ),
            resume_window: std::time::Duration::from_secs_f64(
                self.resume_window_secs.clamp(0.05, 86_400.0),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `rill generate` refuses sampling values out of range as it parses them, naming the flag and the range,
    /// negative numbers included (rather than taking them for flags); values in range pass.
    #[test]
    fn sampling_flags_are_checked_as_they_are_parsed() {
        let parse = |flags: &[&str]| {
            let args = ["rill", "generate", "--prompt", "hi"].iter().chain(flags);
            Cli::try_parse_from(args)
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        let refused = [
            (&["--min-p", "1.5"][..], "from 0 to 1"),
            (&["--min-p=-0.5"], "from 0 to 1"),
            (&["--top-p", "2"], "from 0 to 1"),
            (&["--temperature", "-1"], "at least 0"),
            (&["--temperature", "nan"], "at least 0"),
            (&["--temperature", "inf"], "at least 0"),
            (&["--repeat-penalty", "0"], "above 0"),
            (&["--max-tokens", "0"], "at least 1"),
        ];
        for (flags, range) in refused {
            let e = parse(flags).unwrap_err();
            let flag = flags[0].split('=').next().unwrap();
            assert!(e.contains(flag) && e.contains(range), "{flags:?}: {e}");
        }
        let fine = [
            "--temperature",
            "0",
            "--top-p",
            "1",
            "--min-p",
            "0.05",
            "--repeat-penalty",
            "1.1",
        ];
        parse(&fine).unwrap();
    }
}
