//! The site agent: joins the fleet, reports what its site runs, and runs what the control plane
//! wants there — and keeps running it when the control plane is unreachable.
//!
//! Layout:
//! - [`catalog`] and [`fetch`]: which models exist and getting their files, sha256-checked.
//! - `client`: the agent protocol over HTTP.
//! - `state`: the token and last desired state kept on disk.
//! - `replicas`: the converger, the one task that owns the replicas.
//! - [`runtime`]: how one replica is started (embedded candle engine today; a
//!   [`ReplicaLauncher`] of your own in tests).
//! - here: [`run`], the session with the control plane (register, heartbeat, watch).
//!
//! **Architecture invariant (static stability):** the last desired state is kept on disk and
//! in memory; losing the control plane never stops a replica.

mod client;
mod replicas;
mod state;

pub mod catalog;
pub mod fetch;
pub mod runtime;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rust_decimal::Decimal;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wattmesh_proto::agent::{DesiredState, Heartbeat, NodeReport, RegisterRequest};

pub use catalog::{Catalog, CatalogError, CatalogFile, CatalogModel, Source};
pub use fetch::{FetchError, PullProgress, Quiet, pull};
pub use runtime::{LaunchError, Launched, ReplicaLauncher, Runtime, Serving};

use client::{CallError, ControlClient};
use replicas::{Converger, Observed, SiteRuntime};
use state::{SavedToken, StateDir};

/// Everything one site's agent needs; passed to [`run`].
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Base URL of the control plane, e.g. `http://127.0.0.1:7070`.
    pub control_url: String,
    /// The fleet's bootstrap token, traded for an agent token at registration.
    pub bootstrap_token: String,
    pub site: String,
    pub region: String,
    pub power_price_usd_per_mwh: Option<Decimal>,
    pub node_name: String,
    pub node_memory_bytes: u64,
    /// Model files, one directory per catalog model (shared by the agents of one host).
    pub models_dir: PathBuf,
    /// Where the agent keeps its token and its last desired state (one per agent).
    pub state_dir: PathBuf,
    pub heartbeat_interval: Duration,
    pub catalog: Catalog,
}

/// Why an agent stopped other than by being asked to.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(
        "the control plane refused the bootstrap token for site {site}: {message} \
         (check the agent's bootstrap token against the control plane's)"
    )]
    BootstrapRefused { site: String, message: String },
    #[error("cannot use the state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Longest wait of one desired-state long-poll.
const WATCH_WAIT_S: u64 = 25;
/// First pause before a failed control-plane call is tried again; doubles up to the max.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Runs one site's agent until `shutdown`: registers, heartbeats, watches its desired state
/// and converges its replicas, run by the embedded engine.
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> Result<(), AgentError> {
    run_with(config, Runtime::Embedded, shutdown).await
}

/// [`run`] with the replicas started by `launcher` (a fake engine in tests).
pub async fn run_with<L: ReplicaLauncher>(
    config: AgentConfig,
    launcher: L,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    let state = StateDir::open(&config.state_dir).map_err(|source| AgentError::StateDir {
        path: config.state_dir.clone(),
        source,
    })?;
    // Static stability: converge to what we were last told before the control plane answers.
    let last = state.load_desired().unwrap_or(DesiredState {
        version: 0,
        replicas: Vec::new(),
    });
    if !last.replicas.is_empty() {
        tracing::info!(site = %config.site, version = last.version, "resuming the last desired state");
    }
    let (desired_tx, desired_rx) = watch::channel(last);
    let (observed_tx, observed_rx) = watch::channel(Observed::default());

    let tasks = TaskTracker::new();
    let replicas = shutdown.child_token();
    let site = Arc::new(SiteRuntime {
        site: config.site.clone(),
        catalog: config.catalog.clone(),
        models_dir: config.models_dir.clone(),
        launcher,
    });
    tasks.spawn(Converger::new(site, observed_tx, replicas.clone()).run(desired_rx));
    tasks.close();

    let session = Session {
        client: ControlClient::new(&config.control_url),
        config,
        state,
        desired: desired_tx,
        observed: observed_rx,
    };
    let result = session.run(&shutdown).await;
    // A fatal session error stops the replicas too: the caller is told and exits.
    replicas.cancel();
    tasks.wait().await;
    result
}

/// The agent's conversation with the control plane.
struct Session {
    client: ControlClient,
    config: AgentConfig,
    state: StateDir,
    desired: watch::Sender<DesiredState>,
    observed: watch::Receiver<Observed>,
}

impl Session {
    /// Heartbeats and watches until shutdown, (re-)registering whenever it has no token the
    /// control plane accepts (a new agent, or a control plane that lost its state).
    async fn run(&self, shutdown: &CancellationToken) -> Result<(), AgentError> {
        let site = &self.config.site;
        let registration = self.registration();
        let mut token = self
            .state
            .load_token()
            .filter(|t| t.control_url == self.config.control_url && t.registration == registration)
            .map(|t| t.agent_token);
        if token.is_some() {
            tracing::info!(site = %site, "resuming with the saved agent token");
        }
        loop {
            let current = match token.take() {
                Some(t) => t,
                None => match self.register(&registration, shutdown).await? {
                    Some(t) => t,
                    None => return Ok(()),
                },
            };
            let lost = shutdown.child_token();
            let refetch = Notify::new();
            tokio::join!(
                self.heartbeats(&current, &lost, &refetch),
                self.watch(&current, &lost, &refetch),
            );
            if shutdown.is_cancelled() {
                return Ok(());
            }
            tracing::warn!(site = %site, "the control plane refused the agent token; registering again");
            if let Err(e) = self.state.forget_token() {
                tracing::warn!(site = %site, "cannot remove the refused token: {e}");
            }
        }
    }

    fn registration(&self) -> RegisterRequest {
        RegisterRequest {
            site: self.config.site.clone(),
            region: self.config.region.clone(),
            power_price_usd_per_mwh: self.config.power_price_usd_per_mwh,
            nodes: vec![self.node()],
        }
    }

    fn node(&self) -> NodeReport {
        NodeReport {
            name: self.config.node_name.clone(),
            memory_bytes: self.config.node_memory_bytes,
        }
    }

    /// Registers, retrying while the control plane is unreachable; `None` on shutdown.
    async fn register(
        &self,
        req: &RegisterRequest,
        shutdown: &CancellationToken,
    ) -> Result<Option<String>, AgentError> {
        let site = &self.config.site;
        let mut backoff = FIRST_BACKOFF;
        loop {
            let result = tokio::select! {
                _ = shutdown.cancelled() => return Ok(None),
                r = self.client.register(&self.config.bootstrap_token, req) => r,
            };
            match result {
                Ok(r) => {
                    tracing::info!(site = %site, "registered with the control plane");
                    let saved = SavedToken {
                        control_url: self.config.control_url.clone(),
                        registration: req.clone(),
                        agent_token: r.agent_token.clone(),
                    };
                    if let Err(e) = self.state.save_token(&saved) {
                        tracing::warn!(site = %site, "cannot save the agent token: {e}");
                    }
                    return Ok(Some(r.agent_token));
                }
                Err(CallError::Unauthorized(message)) => {
                    return Err(AgentError::BootstrapRefused {
                        site: site.clone(),
                        message,
                    });
                }
                Err(CallError::Failed(e)) => {
                    tracing::warn!(site = %site, "cannot register yet (retrying in {backoff:?}): {e}");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(None),
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Reports the node and its replicas every interval, and at once when a replica changes
    /// state. Ends (cancelling `lost`) when the token is refused.
    async fn heartbeats(&self, token: &str, lost: &CancellationToken, refetch: &Notify) {
        let site = &self.config.site;
        let mut observed = self.observed.clone();
        let mut reachable = true;
        loop {
            let hb = {
                let now = observed.borrow_and_update();
                Heartbeat {
                    nodes: vec![self.node()],
                    replicas: now.replicas.clone(),
                    desired_version: now.converged_version,
                }
            };
            let result = tokio::select! {
                _ = lost.cancelled() => return,
                r = self.client.heartbeat(token, &hb) => r,
            };
            match result {
                Ok(ack) => {
                    if !reachable {
                        tracing::info!(site = %site, "the control plane is reachable again");
                        reachable = true;
                    }
                    if ack.desired_version != self.desired.borrow().version {
                        refetch.notify_one();
                    }
                }
                Err(CallError::Unauthorized(_)) => return lost.cancel(),
                Err(CallError::Failed(e)) => {
                    if reachable {
                        tracing::warn!(site = %site, "heartbeat failed; serving the last desired state meanwhile: {e}");
                        reachable = false;
                    }
                }
            }
            tokio::select! {
                _ = lost.cancelled() => return,
                _ = tokio::time::sleep(self.config.heartbeat_interval) => {}
                changed = observed.changed() => if changed.is_err() {
                    // The converger is gone: only shutdown does that.
                    lost.cancelled().await;
                    return;
                },
            }
        }
    }

    /// Long-polls the desired state and hands every new one to the converger (and to disk).
    /// On errors keeps the last state and retries. Ends (cancelling `lost`) when the token is
    /// refused.
    async fn watch(&self, token: &str, lost: &CancellationToken, refetch: &Notify) {
        let site = &self.config.site;
        let mut backoff = FIRST_BACKOFF;
        loop {
            let have = self.desired.borrow().version;
            let result = tokio::select! {
                _ = lost.cancelled() => return,
                _ = refetch.notified() => continue,
                r = self.client.desired(token, have, WATCH_WAIT_S) => r,
            };
            match result {
                Ok(state) => {
                    backoff = FIRST_BACKOFF;
                    if state != *self.desired.borrow() {
                        tracing::info!(site = %site, version = state.version, replicas = state.replicas.len(), "new desired state");
                        if let Err(e) = self.state.save_desired(&state) {
                            tracing::warn!(site = %site, "cannot save the desired state: {e}");
                        }
                        self.desired.send_replace(state);
                    }
                    continue;
                }
                Err(CallError::Unauthorized(_)) => return lost.cancel(),
                Err(CallError::Failed(e)) => {
                    tracing::debug!(site = %site, "desired-state watch failed: {e}");
                }
            }
            tokio::select! {
                _ = lost.cancelled() => return,
                _ = refetch.notified() => {}
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}
