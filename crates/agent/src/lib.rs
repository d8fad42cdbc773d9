//! The site agent: joins the fleet, reports what its site runs and draws, and runs what the
//! control plane wants there — replicas, and demand-response curtailment of its miners — and
//! keeps running it when the control plane is unreachable.
//!
//! Layout:
//! - [`catalog`] and [`fetch`]: which models exist and getting their files, sha256-checked.
//! - `client`: the agent protocol over HTTP.
//! - `state`: the token, the last desired state and the DR event being shed, kept on disk.
//! - `replicas`: the converger, the one task that owns the replicas.
//! - [`runtime`]: how one replica is started (embedded candle engine today; a
//!   [`ReplicaLauncher`] of your own in tests).
//! - `power`: the site's meter and miners ([`PowerConfig`]): the sampler, whose samples the
//!   heartbeats carry until the control plane took them (the backlog), and the DR executor,
//!   the one task that owns the miners' curtailment.
//! - here: [`run`], the session with the control plane (register, heartbeat, watch), and the
//!   wiring of the tasks above.
//!
//! **Architecture invariant (static stability):** the last desired state is kept on disk and
//! in memory; losing the control plane never stops a replica, nor a DR event already known.

mod client;
mod power;
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
pub use power::PowerConfig;
pub use runtime::{LaunchError, Launched, ReplicaLauncher, Runtime, Serving};
pub use wattmesh_miner::fleet::FleetOptions;

use client::{CallError, ControlClient};
use power::backlog::Backlog;
use power::dr::{self, DrExecutor};
use power::sample::Sampler;
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
    /// The site's miners and meter; `None` for a site without them: heartbeats carry no power
    /// sample and DR directives are only logged.
    pub power: Option<PowerConfig>,
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
    #[error("site {site}: {message}")]
    BadPowerConfig { site: String, message: String },
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
    if let Some(power) = &config.power {
        check_power(power)
            .await
            .map_err(|message| AgentError::BadPowerConfig {
                site: config.site.clone(),
                message,
            })?;
    }
    let state = StateDir::open(&config.state_dir).map_err(|source| AgentError::StateDir {
        path: config.state_dir.clone(),
        source,
    })?;
    // Static stability: converge to what we were last told before the control plane answers.
    let last = state.load_desired().unwrap_or(DesiredState {
        version: 0,
        replicas: Vec::new(),
        dr: None,
        plan: None,
    });
    if !last.replicas.is_empty() {
        tracing::info!(site = %config.site, version = last.version, "resuming the last desired state");
    }
    let (desired_tx, desired_rx) = watch::channel(last);
    let (observed_tx, observed_rx) = watch::channel(Observed::default());

    let (token_tx, token_rx) = watch::channel(None);
    let client = ControlClient::new(&config.control_url);

    let tasks = TaskTracker::new();
    // The background tasks' root: cancelled on shutdown, and when the session fails.
    let background = shutdown.child_token();
    let power = match &config.power {
        Some(power) => {
            let (samples_tx, samples_rx) = watch::channel(None);
            let backlog = Arc::new(Backlog::default());
            let sampler = Sampler::new(&config.site, power);
            tasks.spawn(sampler.run(samples_tx, backlog.clone(), background.clone()));
            let executor = DrExecutor::new(
                &config.site,
                power,
                client.clone(),
                token_rx,
                state.clone(),
                samples_rx.clone(),
                background.clone(),
            );
            tasks.spawn(executor.run(desired_tx.subscribe()));
            Some(backlog)
        }
        None => {
            let site = config.site.clone();
            tasks.spawn(dr::log_only(
                site,
                desired_tx.subscribe(),
                background.clone(),
            ));
            None
        }
    };
    let site = Arc::new(SiteRuntime {
        site: config.site.clone(),
        catalog: config.catalog.clone(),
        models_dir: config.models_dir.clone(),
        launcher,
    });
    tasks.spawn(Converger::new(site, observed_tx, background.clone()).run(desired_rx));
    tasks.close();

    let session = Session {
        client,
        config,
        state,
        desired: desired_tx,
        observed: observed_rx,
        power,
        token: token_tx,
    };
    let result = session.run(&shutdown).await;
    // A fatal session error stops the replicas (and the power tasks) too: the caller is told
    // and exits.
    background.cancel();
    tasks.wait().await;
    result
}

/// Refuses a power configuration no fleet operation would accept, before anything starts:
/// found out at the start of a DR event, it would leave the event unshed.
async fn check_power(power: &PowerConfig) -> Result<(), String> {
    if power.sample_every.is_zero() {
        return Err("the power sampling interval must be longer than zero".into());
    }
    // The miner crate owns what valid options are; an operation on no miners checks them
    // and does nothing else.
    wattmesh_miner::fleet::sleep(&[], &power.fleet)
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

/// The agent's conversation with the control plane.
struct Session {
    client: ControlClient,
    config: AgentConfig,
    state: StateDir,
    desired: watch::Sender<DesiredState>,
    observed: watch::Receiver<Observed>,
    /// The samples the control plane has not taken yet, when the site has a meter or miners.
    power: Option<Arc<Backlog>>,
    /// The agent token in use, for the DR executor's calls; `None` while there is none.
    token: watch::Sender<Option<String>>,
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
            self.token.send_replace(Some(current.clone()));
            tokio::join!(
                self.heartbeats(&current, &lost, &refetch),
                self.watch(&current, &lost, &refetch),
            );
            self.token.send_replace(None);
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
                Err(e @ (CallError::Failed(_) | CallError::NotFound(_))) => {
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
            let samples = self.power.as_ref().map(|b| b.batch()).unwrap_or_default();
            let hb = {
                let now = observed.borrow_and_update();
                Heartbeat {
                    nodes: vec![self.node()],
                    replicas: now.replicas.clone(),
                    desired_version: now.converged_version,
                    power: samples.newest.clone(),
                    earlier_power: samples.earlier.clone(),
                }
            };
            let result = tokio::select! {
                _ = lost.cancelled() => return,
                r = self.client.heartbeat(token, &hb) => r,
            };
            match result {
                Ok(ack) => {
                    if let Some(backlog) = &self.power {
                        backlog.taken(&samples);
                    }
                    if !reachable {
                        tracing::info!(site = %site, "the control plane is reachable again");
                        reachable = true;
                    }
                    if ack.desired_version != self.desired.borrow().version {
                        refetch.notify_one();
                    }
                }
                Err(CallError::Unauthorized(_)) => return lost.cancel(),
                Err(e @ (CallError::Failed(_) | CallError::NotFound(_))) => {
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
                        tracing::info!(site = %site, version = state.version, replicas = state.replicas.len(), dr = ?state.dr.as_ref().map(|d| &d.event_id), "new desired state");
                        if let Err(e) = self.state.save_desired(&state) {
                            tracing::warn!(site = %site, "cannot save the desired state: {e}");
                        }
                        self.desired.send_replace(state);
                    }
                    continue;
                }
                Err(CallError::Unauthorized(_)) => return lost.cancel(),
                Err(e @ (CallError::Failed(_) | CallError::NotFound(_))) => {
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
