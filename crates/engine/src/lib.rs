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
//! - [`tokenizer`]: the GGUF's tokenizer rebuilt from its metadata (byte-level BPE with
//!   llama.cpp's pre-tokenizers, SentencePiece), giving llama.cpp's ids.
//! - [`template`]: chat templates with minijinja.
//! - [`generate`]: validated sampling parameters, request events, the queueing handle.
//! - `worker`: the batching worker thread that owns a chat model and its KV cache.
//! - [`scheduler`]: continuous batching policy: admission, decode-first, chunked prefill.
//! - [`llama`]: our batched forward pass for llama-family GGUF models, paged KV cache.
//! - [`kernels`]: quantized dot products (AVX2), batched mat-mul, layer ops.
//! - [`sampler`]: greedy / temperature / top-p sampling.
//! - [`options`]: replica tuning (threads, KV budget, queue bounds).
//! - [`detok`]: incremental UTF-8-safe detokenization with stop strings.
//! - [`embed`]: the BERT embedding model (mean pooling, L2 normalization).
//! - [`metrics`]: per-replica Prometheus counters (vLLM names).
//! - [`error`]: [`EngineError`] and its one mapping to OpenAI errors.

pub mod chat;
pub mod detok;
pub mod embed;
pub mod error;
pub mod generate;
pub mod kernels;
pub mod llama;
pub mod metrics;
pub mod options;
pub mod replica;
pub mod sampler;
pub mod scheduler;
pub mod server;
pub mod stream;
pub mod template;
pub mod tokenizer;
mod worker;

pub use error::EngineError;
pub use options::EngineOptions;
pub use replica::Replica;
pub use server::{Access, guarded_router, router, serve};
