//! The OpenAI data plane: authenticates customers' keys, finds a replica of the requested
//! model, and streams the replica's answer back unchanged.
//!
//! Layout:
//! - [`server`]: [`run`] and [`router`]: the `/v1/*` routes, their layers and handlers.
//! - [`listener`]: the accept loop under [`run`]: connection cap, header/idle timeouts.
//! - [`auth`]: the API-key layer (SHA-256 lookup, before the body is read).
//! - [`body`]: reading the body within its limit and finding `model` in it.
//! - [`config`]: the keys and routes in force ([`Snapshot`]).
//! - [`watch`]: the task that long-polls the control plane for them.
//! - [`routing`]: the pure choice of a replica.
//! - [`replicas`]: per-replica live state (outstanding requests, ejection).
//! - [`health`]: the active health checks.
//! - [`limits`]: requests, tokens and requests in flight per minute, per key and tenant.
//! - [`credit`]: prepaid credit leased from the control plane, reserved per request.
//! - [`forward`]: sending to a replica with retry-once, relaying the answer as a stream.
//! - [`metering`]: reading usage off the relayed body; the usage event of each request.
//! - [`metrics`]: Prometheus metrics, served on the gateway's own metrics listener.
//! - [`spool`]: the durable, group-committed queue of usage events; [`shipper`] delivers it.
//! - [`error`]: every failure in OpenAI's error shape, in one place.
//!
//! **Architecture invariant:** the gateway holds key hashes and its own scoped gateway token,
//! never customers' secrets or the admin token, and keeps serving its last config when the
//! control plane is unreachable (static stability); usage waits in the spool meanwhile.

pub mod auth;
pub mod body;
pub mod config;
pub mod credit;
pub mod error;
pub mod forward;
pub mod health;
pub mod limits;
pub mod listener;
pub mod metering;
pub mod metrics;
pub mod replicas;
pub mod routing;
pub mod server;
pub mod shipper;
pub mod spool;
pub mod watch;

#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use wattmesh_proto::gateway::GatewayConfig;

pub use config::Snapshot;
pub use error::GatewayError;
pub use server::{router, run};

/// The gateway's default body limit, 4 MiB: THE body limit of the data plane. Replicas accept
/// more (`wattmesh_engine::server::MAX_BODY_BYTES`, 8 MiB) so that they never refuse what the
/// gateway admitted; `crates/wattmesh/tests/body_limits.rs` fails if the two drift.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 << 20;

/// How the gateway reaches its control plane and what it accepts.
pub struct GatewayOptions {
    pub control_url: String,
    /// This gateway's own token (`wattmesh gateways create`): good for its config, credit
    /// leases and usage batches, and nothing else.
    pub control_token: String,
    /// The usage spool's directory (made if missing; its parent must exist).
    pub spool_path: PathBuf,
    /// Request bodies above this get 413. Keep it below the replicas' own limit
    /// (`wattmesh_engine::server::MAX_BODY_BYTES`): a body the gateway admits must never be
    /// refused upstream.
    pub max_body_bytes: usize,
    /// How long a client may take to send a request's headers, from its first byte (from
    /// accepting it, on a new connection); past it the connection is closed.
    pub header_read_timeout: Duration,
    /// How long a client may take to send a whole request body; past it, 408. Only the
    /// request: the answer (a stream may run for minutes) has no deadline.
    pub body_read_timeout: Duration,
    /// How long a kept-alive connection may sit without a request before it is closed.
    pub idle_timeout: Duration,
    /// Connections served at once; further ones wait in the listen backlog until one closes.
    pub max_connections: usize,
    /// How often each replica's `/health` is probed.
    pub health_interval: Duration,
    /// On shutdown, how long in-flight requests (streams included) may take to finish.
    pub shutdown_grace: Duration,
    /// Where `GET /metrics` is served (Prometheus text), apart from the customers' port:
    /// tenant names are in the labels. `None`: not served.
    pub metrics_listener: Option<tokio::net::TcpListener>,
}

impl GatewayOptions {
    /// The defaults: 4 MiB bodies, headers within 10 s, bodies within 30 s, idle connections
    /// closed after 60 s, 1024 connections at once, probes every 2 s, 30 s to drain on shutdown.
    pub fn new(control_url: String, control_token: String, spool_path: PathBuf) -> Self {
        Self {
            control_url,
            control_token,
            spool_path,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
            health_interval: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(30),
            metrics_listener: None,
        }
    }
}

// The token stays out of logs.
impl std::fmt::Debug for GatewayOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayOptions")
            .field("control_url", &self.control_url)
            .field("control_token", &"<redacted>")
            .field("spool_path", &self.spool_path)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("header_read_timeout", &self.header_read_timeout)
            .field("body_read_timeout", &self.body_read_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_connections", &self.max_connections)
            .field("health_interval", &self.health_interval)
            .field("shutdown_grace", &self.shutdown_grace)
            .field(
                "metrics_listener",
                &self.metrics_listener.as_ref().map(|l| l.local_addr()),
            )
            .finish()
    }
}

/// Everything a request handler needs; cheap to clone (one reference count: axum clones the
/// state for every request, several times). The config in force is swapped whole by
/// [`GatewayState::set_config`]: by the watcher in production, by the test itself in tests.
#[derive(Debug, Clone)]
pub struct GatewayState(Arc<StateInner>);

/// What [`GatewayState`] shares.
#[derive(Debug, Clone)]
pub struct StateInner {
    config: Arc<RwLock<Arc<Snapshot>>>,
    pub(crate) replicas: replicas::ReplicaTable,
    pub(crate) http: reqwest::Client,
    pub(crate) max_body_bytes: usize,
    /// How long a request body may take to arrive (408 past it).
    pub(crate) body_read_timeout: Duration,
    pub(crate) control: Arc<watch::ControlLink>,
    pub(crate) limiter: Arc<limits::RateLimiter>,
    pub(crate) credit: Arc<credit::Credit>,
    pub(crate) spool: spool::Spool,
    /// Where customers' usage and costs questions are passed to (empty: not connected).
    pub(crate) control_url: Arc<str>,
    pub(crate) metrics: Arc<metrics::GatewayMetrics>,
    pub(crate) shipper: Arc<shipper::ShipperStats>,
}

impl GatewayState {
    /// A state with no config yet (requests get 503 until [`Self::set_config`]), metering
    /// into `spool` and reserving prepaid credit from `credit`.
    pub fn new(max_body_bytes: usize, spool: spool::Spool, credit: Arc<credit::Credit>) -> Self {
        Self(Arc::new(StateInner {
            config: Arc::default(),
            replicas: replicas::ReplicaTable::default(),
            http: Self::http_client(),
            max_body_bytes,
            body_read_timeout: Duration::from_secs(30),
            control: Arc::default(),
            limiter: Arc::default(),
            credit,
            spool,
            control_url: Arc::from(""),
            metrics: Arc::default(),
            shipper: Arc::default(),
        }))
    }

    /// For the builder methods, before the state is shared.
    fn inner_mut(&mut self) -> &mut StateInner {
        Arc::make_mut(&mut self.0)
    }

    /// The gateway's metrics in Prometheus text.
    pub fn metrics_text(&self) -> String {
        self.metrics.render(&self.spool, &self.shipper, now_ms())
    }

    /// The control plane customers' usage and costs requests are passed to.
    pub fn with_control_url(mut self, control_url: &str) -> Self {
        self.inner_mut().control_url = Arc::from(control_url.trim_end_matches('/'));
        self
    }

    /// Where the shipper counts, for the metrics.
    pub fn with_shipper_stats(mut self, stats: Arc<shipper::ShipperStats>) -> Self {
        self.inner_mut().shipper = stats;
        self
    }

    /// How long a request body may take to arrive before the client gets 408.
    pub fn with_body_read_timeout(mut self, timeout: Duration) -> Self {
        self.inner_mut().body_read_timeout = timeout;
        self
    }

    /// Pooled connections; a connect timeout but no overall one, so streams run as long as
    /// the replica produces.
    pub(crate) fn http_client() -> reqwest::Client {
        reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default()
    }

    /// Puts `config` in force for the requests that start from now on.
    pub fn set_config(&self, config: GatewayConfig) {
        let snapshot = Arc::new(Snapshot::from_config(config));
        *self.config.write().unwrap_or_else(PoisonError::into_inner) = snapshot;
    }

    /// The config in force.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.config
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Requests in flight from this gateway to `replica`, streams being relayed included.
    pub fn outstanding(&self, replica: &str) -> usize {
        self.replicas.get(replica).outstanding()
    }

    /// Whether `replica` may be picked now (not ejected).
    pub fn replica_healthy(&self, replica: &str) -> bool {
        self.replicas.get(replica).healthy()
    }
}

impl std::ops::Deref for GatewayState {
    type Target = StateInner;

    fn deref(&self) -> &StateInner {
        &self.0
    }
}

/// Now, in unix milliseconds: the clock of usage events, key expiry and rate limits.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
