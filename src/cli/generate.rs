//! `rill generate`: one prompt, generated text streamed to stdout, timing to stderr.

use std::io::Write;

use anyhow::Context;

use crate::config::GenerateArgs;
use crate::engine::{EngineConfig, Event, FinishReason, GenRequest};
use crate::tokenizer::ChatMessage;

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let engine = super::start_engine(
        &args.model,
        EngineConfig {
            max_running: 1,
            ..EngineConfig::default()
        },
    )
    .with_context(|| format!("loading model `{}`", args.model.model))?;
    // After the engine's threads exist, which would otherwise inherit the policy: this thread only prints.
    crate::sched::helper_thread();
    let shared = engine.shared().clone();
    let text = if args.chat {
        let mut msgs = Vec::new();
        if let Some(s) = &args.system {
            msgs.push(ChatMessage::new("system", s));
        }
        msgs.push(ChatMessage::new("user", &args.prompt));
        shared.chat.render(&msgs, true)?
    } else {
        args.prompt.clone()
    };
    let prompt = shared.encode_prompt(&text)?;
    tracing::debug!(prompt = ?text, ids = ?prompt, "prompt");
    let req = GenRequest {
        constraint: None,
        prompt,
        sampling: args.sampling.params(),
        max_tokens: Some(args.sampling.max_tokens),
        stop: args.sampling.stop.clone(),
        ignore_eos: args.sampling.ignore_eos,
        logprobs: None,
        prompt_logprobs: None,
    };
    let mut stream = engine.submit(req)?;
    let mut out = std::io::stdout().lock();
    while let Some(ev) = stream.blocking_next() {
        match ev {
            Event::Delta { text, .. } => {
                out.write_all(text.as_bytes())?;
                out.flush()?;
            }
            Event::Prompt(_) => {}
            Event::Done(c) => {
                writeln!(out)?;
                let t = c.timings;
                eprintln!(
                    "[{} prompt tokens, {} generated; TTFT {:.0} ms; {:.1} tok/s; ended by {}]",
                    c.usage.prompt_tokens,
                    c.usage.completion_tokens,
                    t.ttft.as_secs_f64() * 1e3,
                    t.decode_tokens_per_sec(c.usage.completion_tokens),
                    ended_by(&c.finish)
                );
                return Ok(());
            }
            Event::Error(e) => return Err(e.into()),
        }
    }
    anyhow::bail!("the generation thread stopped unexpectedly")
}

/// Why generation ended, in the words of the stats line.
fn ended_by(f: &FinishReason) -> String {
    match f {
        FinishReason::Eos => "the end-of-sequence token".into(),
        FinishReason::StopSequence(s) => format!("the stop string {s:?}"),
        FinishReason::Length => "the token limit".into(),
    }
}
