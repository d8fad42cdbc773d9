//! Serves one embedded replica over HTTP, outside `wattmesh up`, for benchmarks (`bench/engine`).
//!
//! `cargo run --release -p wattmesh-engine --example serve -- --model-dir DIR
//!  [--kind chat|embedding] [--name NAME] [--listen 127.0.0.1:0]`
//!
//! Prints `listening http://ADDR` on stdout once the model is loaded and the port is bound, then
//! serves the replica's OpenAI API (`/v1/completions`, `/v1/chat/completions`, `/v1/embeddings`,
//! `/v1/models`, `/metrics`) until Ctrl-C or SIGTERM. The engine reads `WATTMESH_THREADS` itself.

use std::io::Write;
use std::path::PathBuf;

use tokio_util::sync::CancellationToken;
use wattmesh_domain::ModelKind;
use wattmesh_engine::Replica;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const USAGE: &str = "usage: serve --model-dir DIR [--kind chat|embedding] [--name NAME] \
                     [--listen 127.0.0.1:PORT]";

struct Args {
    model_dir: PathBuf,
    kind: ModelKind,
    name: String,
    listen: String,
}

fn parse_args() -> Result<Args, BoxError> {
    let mut model_dir = None;
    let mut kind = ModelKind::Chat;
    let mut name = None;
    let mut listen = "127.0.0.1:0".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            "--model-dir" => model_dir = Some(PathBuf::from(value()?)),
            "--kind" => kind = value()?.parse()?,
            "--name" => name = Some(value()?),
            "--listen" => listen = value()?,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}\n{USAGE}").into()),
        }
    }
    let model_dir = model_dir.ok_or(USAGE)?;
    let name = match name {
        Some(name) => name,
        None => model_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("model")
            .to_owned(),
    };
    Ok(Args {
        model_dir,
        kind,
        name,
        listen,
    })
}

async fn wait_for_signal() -> Result<(), BoxError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = parse_args()?;
    if let Ok(threads) = std::env::var("WATTMESH_THREADS") {
        eprintln!("WATTMESH_THREADS={threads}");
    }
    let (name, kind, dir) = (args.name.clone(), args.kind, args.model_dir.clone());
    let replica = tokio::task::spawn_blocking(move || Replica::load(&name, kind, &dir)).await??;
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    let addr = listener.local_addr()?;
    println!("listening http://{addr}");
    std::io::stdout().flush()?;

    let shutdown = CancellationToken::new();
    let mut server = tokio::spawn(wattmesh_engine::serve(
        listener,
        replica,
        wattmesh_engine::Access::Open,
        shutdown.clone(),
    ));
    tokio::select! {
        r = &mut server => return Ok(r??),
        s = wait_for_signal() => s?,
    }
    shutdown.cancel();
    // Graceful: in-flight streams finish, but a benchmark must not hang on a stuck one.
    match tokio::time::timeout(std::time::Duration::from_secs(10), server).await {
        Ok(r) => Ok(r??),
        Err(_) => Ok(()),
    }
}
