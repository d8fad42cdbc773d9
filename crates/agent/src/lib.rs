//! The site agent: joins the fleet, reports what its site runs, and runs what the control plane
//! wants there — and keeps running it when the control plane is unreachable.
//!
//! Layout:
//! - [`catalog`] and [`fetch`]: which models exist and getting their files, sha256-checked.
//! - [`client`]: the agent protocol over HTTP.
//! - [`replicas`]: the converger that owns the running replicas.
//! - [`runtime`]: how one replica is started (embedded candle engine today).
//!
//! **Architecture invariant (static stability):** the last desired state is kept on disk and
//! in memory; losing the control plane never stops a replica.

pub mod catalog;
pub mod client;
pub mod fetch;
pub mod replicas;
pub mod runtime;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rust_decimal::Decimal;
use tokio_util::sync::CancellationToken;
use wattmesh_proto::agent::{DesiredState, Heartbeat, NodeReport, RegisterRequest};

pub use catalog::{Catalog, CatalogError, CatalogModel};
pub use fetch::{FetchError, PullProgress, pull};

use client::{CallError, ControlClient};
use replicas::Reports;

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub control_url: String,
    pub bootstrap_token: String,
    pub site: String,
    pub region: String,
    pub power_price_usd_per_mwh: Option<Decimal>,
    pub node_name: String,
    pub node_memory_bytes: u64,
    pub models_dir: PathBuf,
    /// Where the agent keeps its last desired state.
    pub state_dir: PathBuf,
    pub heartbeat_interval: Duration,
    pub catalog: Catalog,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("the control plane refused the bootstrap token for site {0}")]
    BootstrapRefused(String),
    #[error("cannot use the state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
}

const DESIRED_FILE: &str = "desired.json";
const WATCH_WAIT_S: u64 = 25;

/// Runs one site's agent until `shutdown`: registers, heartbeats, watches its desired state
/// and converges its replicas.
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> Result<(), AgentError> {
    std::fs::create_dir_all(&config.state_dir).map_err(|source| AgentError::StateDir {
        path: config.state_dir.clone(),
        source,
    })?;
    let config = Arc::new(config);
    // Static stability: start from what we were last told, before the control plane answers.
    let last = load_desired(&config).unwrap_or(DesiredState {
        version: 0,
        replicas: Vec::new(),
    });
    let (desired_tx, desired_rx) = tokio::sync::watch::channel(last);
    let converged = Arc::new(AtomicU64::new(0));
    let reports = Reports::default();

    let converger = tokio::spawn(replicas::converge(
        config.clone(),
        desired_rx,
        converged.clone(),
        reports.clone(),
        shutdown.child_token(),
    ));
    let session = session(
        config.clone(),
        desired_tx,
        converged,
        reports,
        shutdown.clone(),
    )
    .await;
    shutdown.cancel();
    let _ = converger.await;
    session
}

/// Registers, then heartbeats and watches until shutdown; registers again whenever the
/// agent token is refused (say, the control plane lost its state).
async fn session(
    config: Arc<AgentConfig>,
    desired: tokio::sync::watch::Sender<DesiredState>,
    converged: Arc<AtomicU64>,
    reports: Reports,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    let client = ControlClient::new(&config.control_url);
    loop {
        let Some(token) = register(&client, &config, &shutdown).await? else {
            return Ok(());
        };
        tracing::info!(site = %config.site, "registered with the control plane");
        let lost = shutdown.child_token();
        let heartbeats = heartbeat_loop(&client, &config, &token, &converged, &reports, &lost);
        let watch = watch_loop(&client, &config, &token, &desired, &lost);
        tokio::join!(heartbeats, watch);
        if shutdown.is_cancelled() {
            return Ok(());
        }
        tracing::warn!(site = %config.site, "agent token refused; registering again");
    }
}

/// Retries until registered; `None` on shutdown.
async fn register(
    client: &ControlClient,
    config: &AgentConfig,
    shutdown: &CancellationToken,
) -> Result<Option<String>, AgentError> {
    let req = RegisterRequest {
        site: config.site.clone(),
        region: config.region.clone(),
        power_price_usd_per_mwh: config.power_price_usd_per_mwh,
        nodes: vec![node(config)],
    };
    let mut backoff = Duration::from_millis(200);
    loop {
        match client.register(&config.bootstrap_token, &req).await {
            Ok(r) => return Ok(Some(r.agent_token)),
            Err(CallError::Unauthorized) => {
                return Err(AgentError::BootstrapRefused(config.site.clone()));
            }
            Err(CallError::Failed(e)) => {
                tracing::warn!(site = %config.site, "cannot register yet: {e}");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

fn node(config: &AgentConfig) -> NodeReport {
    NodeReport {
        name: config.node_name.clone(),
        memory_bytes: config.node_memory_bytes,
    }
}

async fn heartbeat_loop(
    client: &ControlClient,
    config: &AgentConfig,
    token: &str,
    converged: &AtomicU64,
    reports: &Reports,
    lost: &CancellationToken,
) {
    loop {
        let hb = Heartbeat {
            nodes: vec![node(config)],
            replicas: reports.all(),
            desired_version: converged.load(Ordering::Relaxed),
        };
        match client.heartbeat(token, &hb).await {
            Ok(_) => {}
            Err(CallError::Unauthorized) => return lost.cancel(),
            Err(CallError::Failed(e)) => {
                tracing::debug!(site = %config.site, "heartbeat failed: {e}")
            }
        }
        tokio::select! {
            _ = lost.cancelled() => return,
            _ = tokio::time::sleep(config.heartbeat_interval) => {}
        }
    }
}

async fn watch_loop(
    client: &ControlClient,
    config: &AgentConfig,
    token: &str,
    desired: &tokio::sync::watch::Sender<DesiredState>,
    lost: &CancellationToken,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let have = desired.borrow().version;
        let result = tokio::select! {
            _ = lost.cancelled() => return,
            r = client.desired(token, have, WATCH_WAIT_S) => r,
        };
        match result {
            Ok(state) => {
                backoff = Duration::from_millis(200);
                if state != *desired.borrow() {
                    save_desired(config, &state);
                    desired.send_replace(state);
                }
                continue;
            }
            Err(CallError::Unauthorized) => return lost.cancel(),
            Err(CallError::Failed(e)) => {
                tracing::debug!(site = %config.site, "desired-state watch failed: {e}");
            }
        }
        tokio::select! {
            _ = lost.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

fn load_desired(config: &AgentConfig) -> Option<DesiredState> {
    let text = std::fs::read_to_string(config.state_dir.join(DESIRED_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

fn save_desired(config: &AgentConfig, state: &DesiredState) {
    let path = config.state_dir.join(DESIRED_FILE);
    let tmp = config.state_dir.join(format!(".{DESIRED_FILE}.tmp"));
    let written = serde_json::to_vec_pretty(state)
        .map_err(std::io::Error::other)
        .and_then(|bytes| std::fs::write(&tmp, bytes))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        tracing::warn!(site = %config.site, "cannot save the desired state to {}: {e}", path.display());
    }
}
