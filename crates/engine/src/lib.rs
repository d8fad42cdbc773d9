//! The embedded inference engine: candle models behind the OpenAI protocol of one replica.
//!
//! A site agent loads a [`Replica`] (a GGUF chat model or a BERT embedding model) and serves
//! it with [`serve`]; tests drive [`router`] directly.
//!
//! Layout:
//! - [`replica`]: a loaded model and its admission of work; the public entry point.
//! - [`server`]: routes, OpenAI request parsing, the graceful serve loop.
//! - [`stream`]: OpenAI server-sent-event chunks, and collecting non-streamed answers.
//! - [`chat`]: the GGUF chat model: load, chat/completion requests → token prompts.
//! - [`tokenizer`]: the byte-level BPE rebuilt from GGUF metadata (llama.cpp's ids).
//! - [`template`]: chat templates with minijinja.
//! - [`generate`]: sampling parameters and the worker thread that owns the weights.
//! - [`detok`]: incremental UTF-8-safe detokenization with stop strings.
//! - [`embed`]: the BERT embedding model (mean pooling, L2 normalization).
//! - [`metrics`]: per-replica Prometheus counters (vLLM names).
//! - [`error`]: [`EngineError`] and its one mapping to OpenAI errors.

pub mod chat;
pub mod detok;
pub mod embed;
pub mod error;
pub mod generate;
pub mod metrics;
pub mod replica;
pub mod server;
pub mod stream;
pub mod template;
pub mod tokenizer;

pub use error::EngineError;
pub use replica::Replica;
pub use server::{router, serve};
