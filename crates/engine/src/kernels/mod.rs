//! Compute kernels of the chat model: quantized dot products, the batched matrix product,
//! and the small vector operations of a transformer layer.
//!
//! Weights stay in their GGUF block formats; activations are quantized per row to the
//! companion format llama.cpp pairs with each weight format (Q4_1 weights with Q8_1
//! activations, Q8_0 with Q8_0), so the integer dot products — and the rounding — are the
//! ones llama.cpp computes. That is what lets greedy outputs match it token for token.
//!
//! - [`quant`]: block layouts, activation quantization, dequantization.
//! - [`dot`]: one weight row against up to [`dot::TILE`] activation rows; portable code, and
//!   AVX2 code where the build enables it (candle likewise selects at compile time).
//! - [`matmul`]: `Y = X · Wᵀ` over the thread pool, every weight row read once per step
//!   for the whole batch.
//! - [`pool`]: the compute threads of a replica, spinning between the regions of a step.
//! - [`ops`]: RMS norm, rotary embeddings, SiLU gating, softmax.

pub mod dot;
pub mod matmul;
pub mod ops;
pub mod pool;
pub mod quant;

pub use matmul::{Activations, QMatrix, Workspace};
pub use pool::SpinPool;
pub use quant::WeightFormat;
