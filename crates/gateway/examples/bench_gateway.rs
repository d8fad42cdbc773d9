//! The gateway's data plane in one process, configured directly, for benchmarks
//! (`bench/gateway/run`). A real gateway only routes to replicas an agent reported ready, so
//! a benchmark cannot put an arbitrary upstream behind `wattmesh gateway`; this harness builds
//! the same [`GatewayState`] that `wattmesh_gateway::run` builds (a real spool on disk,
//! credit, limits) and serves the same [`wattmesh_gateway::router`] (with plain `axum::serve`,
//! not `run`'s accept loop), with a config it sets itself instead of one watched from the
//! control plane. No shipper runs: usage events stay in the spool, as when the control plane
//! is unreachable.
//!
//! ```sh
//! cargo run --release -p wattmesh-gateway --example bench_gateway -- \
//!     --listen 127.0.0.1:0 --upstream http://127.0.0.1:9000 --mode all \
//!     --spool target/bench/gateway/spool [--keys 10000 --tenants 1000] [--threads 2] \
//!     [--nodelay on|off]
//! ```
//!
//! Accepted connections get `TCP_NODELAY` (`--nodelay off` to leave Nagle on): the gateway
//! sends an answer's last bytes in a write of their own once its usage event is durable, and
//! behind Nagle that write waits for the client's delayed ACK (≈ 40 ms on Linux).
//!
//! Modes:
//! - `auth`: key authentication only, as far as the gateway allows: a pay-as-you-go tenant
//!   with no limits and no price. Every request is still metered into the spool (the gateway
//!   has no switch to turn metering off).
//! - `all`: limits on key and tenant (high enough never to refuse), a prepaid tenant whose
//!   credit is leased from a local fake control plane in slices, prices set, metering.
//!
//! Keys are `sk-bench-000000`, `sk-bench-000001`, ...; key `i` belongs to tenant
//! `tenant-{i % tenants}`; the model is `mock`. Prints `ready http://ADDR rss_kib=N` once the
//! config is in force; on Ctrl-C flushes the spool and exits.

use std::collections::HashMap;
use std::error::Error;
use std::sync::{Arc, Mutex, PoisonError};

use axum::serve::ListenerExt;
use rust_decimal::Decimal;
use sha2::{Digest, Sha256};
use wattmesh_gateway::GatewayState;
use wattmesh_gateway::credit::{Credit, Leaser};
use wattmesh_gateway::spool::Spool;
use wattmesh_proto::gateway::GatewayConfig;
use wattmesh_proto::usage::{LeaseGrant, LeaseRequest};

type AnyResult<T> = Result<T, Box<dyn Error + Send + Sync>>;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Auth,
    All,
}

#[derive(Debug)]
struct Args {
    listen: String,
    upstream: String,
    mode: Mode,
    spool: std::path::PathBuf,
    keys: usize,
    tenants: usize,
    threads: usize,
    nodelay: bool,
}

fn parse_args() -> AnyResult<Args> {
    let mut args = Args {
        listen: "127.0.0.1:0".into(),
        upstream: String::new(),
        mode: Mode::Auth,
        spool: "spool".into(),
        keys: 1,
        tenants: 1,
        threads: 2,
        nodelay: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--listen" => args.listen = value,
            "--upstream" => args.upstream = value,
            "--mode" => {
                args.mode = match value.as_str() {
                    "auth" => Mode::Auth,
                    "all" => Mode::All,
                    other => return Err(format!("unknown mode {other}").into()),
                }
            }
            "--spool" => args.spool = value.into(),
            "--keys" => args.keys = value.parse()?,
            "--tenants" => args.tenants = value.parse()?,
            "--threads" => args.threads = value.parse()?,
            "--nodelay" => args.nodelay = value == "on",
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    if args.upstream.is_empty() {
        return Err("--upstream URL is required".into());
    }
    if args.keys == 0 || args.tenants == 0 {
        return Err("--keys and --tenants must be at least 1".into());
    }
    Ok(args)
}

/// A control plane that grants every lease at once, `slice` more than was asked each time,
/// so the gateway leases (in the background) every few thousand requests, as it would in
/// production, without a network round trip in the measurement.
#[derive(Debug)]
struct InstantLeaser {
    slice: Decimal,
    granted: Mutex<HashMap<String, Decimal>>,
}

impl Leaser for InstantLeaser {
    fn lease(
        &self,
        request: LeaseRequest,
    ) -> futures::future::BoxFuture<'static, Result<LeaseGrant, String>> {
        let mut granted = self.granted.lock().unwrap_or_else(PoisonError::into_inner);
        let total = granted.entry(request.tenant.clone()).or_default();
        *total += request.need.max(Decimal::ZERO) + self.slice;
        // Built as the control plane's answer is read (JSON), like the config below.
        let grant = serde_json::from_value::<LeaseGrant>(serde_json::json!({
            "tenant": request.tenant,
            "granted_total": total.to_string(),
            "spent_total": "0",
        }))
        .map_err(|e| e.to_string());
        Box::pin(async move { grant })
    }
}

/// Limits that are checked on every request but never refuse one at benchmark rates.
fn high_limits() -> serde_json::Value {
    serde_json::json!({"rpm": 1_000_000_000u32, "tpm": 4_000_000_000u32, "concurrency": 1_000_000})
}

/// The config as the control plane sends it: JSON text, parsed as the watcher parses it (so
/// the memory measured after it is in force holds no more scaffolding than the real gateway's,
/// and fields the protocol adds later with defaults need no change here).
fn config(args: &Args) -> AnyResult<GatewayConfig> {
    let all = args.mode == Mode::All;
    let limits = if all {
        high_limits()
    } else {
        serde_json::json!({})
    };
    let mut keys = Vec::with_capacity(args.keys);
    for i in 0..args.keys {
        keys.push(serde_json::to_string(&serde_json::json!({
            "id": format!("key-{i:06}"),
            "tenant": format!("tenant-{}", i % args.tenants),
            "secret_sha256": hex::encode(Sha256::digest(format!("sk-bench-{i:06}").as_bytes())),
            "models": null,
            "expires_at_ms": null,
            "priority": "interactive",
            "limits": limits,
        }))?);
    }
    let mut tenants = Vec::with_capacity(args.tenants);
    for t in 0..args.tenants {
        tenants.push(serde_json::to_string(&serde_json::json!({
            "name": format!("tenant-{t}"),
            "plan": if all { "prepaid" } else { "pay_as_you_go" },
            "limits": limits,
        }))?);
    }
    let prices = if all {
        r#"[{"model":"mock","tenant":null,"input_per_1m":"0.15","output_per_1m":"0.60"}]"#
    } else {
        "[]"
    };
    let models = serde_json::to_string(&serde_json::json!([{
        "model": "mock",
        "kind": "chat",
        "context_tokens": 2048,
        "replicas": [{
            "id": "mock-1",
            "deployment": "mock",
            "endpoint": args.upstream.trim_end_matches('/'),
            "site": "local",
            "region": "local",
        }],
    }]))?;
    let text = format!(
        r#"{{"version":1,"gateway":"gw-bench","keys":[{}],"tenants":[{}],"prices":{prices},"models":{models}}}"#,
        keys.join(","),
        tenants.join(",")
    );
    drop((keys, tenants));
    Ok(serde_json::from_str(&text)?)
}

/// This process's resident set (`VmRSS`), in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

async fn serve(args: Args) -> AnyResult<()> {
    let spool = Spool::open(&args.spool).await?;
    let spent = spool.spent().await?;
    let leaser = InstantLeaser {
        // Ten dollars a slice: a chat request without max_tokens reserves ≈ $0.0012.
        slice: Decimal::new(10, 0),
        granted: Mutex::default(),
    };
    let credit = Credit::new(spent, Arc::new(leaser));
    let state = GatewayState::new(4 << 20, spool.clone(), credit);
    state.set_config(config(&args)?);
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    println!(
        "ready http://{} rss_kib={}",
        listener.local_addr()?,
        rss_kib()
    );
    let nodelay = args.nodelay;
    let listener = listener.tap_io(move |tcp| {
        if let Err(e) = tcp.set_nodelay(nodelay) {
            eprintln!("TCP_NODELAY: {e}");
        }
    });
    axum::serve(listener, wattmesh_gateway::router(state))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    spool.close().await;
    Ok(())
}

fn main() -> AnyResult<()> {
    let args = parse_args()?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()?
        .block_on(serve(args))
}
