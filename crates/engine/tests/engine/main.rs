//! End-to-end tests of the engine with the real default models: one test binary, so each
//! model is loaded once (see [`common`]) however many tests use it.

// A test binary: failing loudly on a broken fixture is the point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod batching;
mod chat;
mod chat_templates;
mod common;
mod embeddings;
mod embeddings_reference;
mod errors;
mod reference;
mod socket;
mod tokenizer_vocab;
