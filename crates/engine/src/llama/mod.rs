//! Our own forward pass for llama-family GGUF models (llama, mistral, qwen2), built for
//! continuous batching: one call runs any mix of prefill chunks and decode tokens from many
//! sequences, each with its own paged KV cache.
//!
//! candle's `quantized_llama` keeps one KV cache inside the model and runs one sequence at a
//! time, which is why this exists; candle still reads the GGUF and computes the weight
//! formats we have no kernel for.
//!
//! - [`config`]: hyperparameters from GGUF metadata, per architecture.
//! - [`weights`]: tensors → our matrices (or candle's, as a fallback).
//! - [`kv`]: the paged KV cache and its block allocator (the memory budget).
//! - [`forward`]: the batched forward pass.

pub mod config;
pub mod forward;
pub mod kv;
pub mod weights;

pub use config::Config;
pub use forward::{Scratch, Step};
pub use kv::{KvCache, SeqCache};
pub use weights::LlamaModel;
