//! Decode speed of one greedy stream, to compare with llama.cpp (≈ 75 tokens/s on 2 threads
//! for SmolLM2-135M Q4_1 on the reference machine). A measurement, not a test.
//!
//! `cargo run -p wattmesh-engine --example decode_speed [-- <models dir>] [tokens]`; `REPEAT=40`
//! repeats the prompt 40 times (≈ 520 tokens) to time a long prefill.

use std::time::Instant;

use wattmesh_domain::ModelKind;
use wattmesh_engine::Replica;
use wattmesh_engine::generate::GenEvent;
use wattmesh_proto::openai::{CompletionRequest, Prompt};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../target/test-data/models")
        });
    let tokens: u32 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(128);
    let repeat: usize = std::env::var("REPEAT").map_or(Ok(1), |v| v.parse())?;
    let prompt = "Once upon a time, in a small village by the sea,".repeat(repeat);
    let replica = Replica::load("smol", ModelKind::Chat, &dir.join("smollm2-135m-instruct"))?;
    let chat = replica.chat("bench")?;
    let req = CompletionRequest {
        model: "smol".into(),
        prompt: Prompt::Text(prompt.clone()),
        max_tokens: Some(tokens),
        temperature: Some(0.0),
        top_p: None,
        stop: None,
        seed: None,
        stream: None,
        stream_options: None,
        echo: None,
        n: None,
        user: None,
    };
    for round in 0..2 {
        let prepared = chat.prepare_completion(&req)?;
        let prompt_len = prepared.tokens.len();
        let started = Instant::now();
        let mut rx = chat.submit(prepared, wattmesh_engine::generate::Priority::Normal)?;
        let mut first = None;
        let mut usage = None;
        while let Some(ev) = rx.blocking_recv() {
            match ev {
                GenEvent::Text(_) => {
                    first.get_or_insert_with(Instant::now);
                }
                GenEvent::Done { usage: u, .. } => usage = Some(u),
                GenEvent::Failed(e) => return Err(e.into()),
            }
        }
        let end = Instant::now();
        let usage = usage.ok_or("no usage")?;
        let first = first.unwrap_or(end);
        let decode = usage.completion_tokens.saturating_sub(1) as f64 / (end - first).as_secs_f64();
        println!(
            "round {round}: prompt {prompt_len} tok, prefill+first token {:.0} ms, \
             {} tokens generated, decode {decode:.1} tok/s",
            (first - started).as_secs_f64() * 1e3,
            usage.completion_tokens,
        );
    }
    Ok(())
}
