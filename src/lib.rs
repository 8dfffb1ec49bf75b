//! rill: a local-model inference streaming server.
//!
//! Request path, in file order: [`config`] (flags) → [`api`] (HTTP, validation) → [`engine`] (generation thread,
//! batching, sampling, stop strings) → [`model`] (architectures over caller-owned KV caches), with [`load`]
//! finding and reading model files into a model, a tokenizer and a chat template, [`tokenizer`] turning text
//! into ids and ids back into streamed text, [`pool`] running the kernels' parallel sections on the CPU, and
//! [`sched`] keeping helper threads from preempting them.
//! [`mod@bench`] is the other side: a client that measures any OpenAI-compatible streaming server.

pub mod api;
pub mod bench;
pub mod cli;
pub mod config;
pub mod engine;
pub mod load;
pub mod model;
pub mod panic;
pub mod pool;
pub mod sched;
pub mod time;
pub mod tokenizer;
