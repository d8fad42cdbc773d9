//! The OpenAI data plane: authenticates customers' keys, finds a replica of the requested
//! model, and streams the replica's answer back unchanged.
//!
//! Layout:
//! - [`server`]: [`run`] and [`router`]: the `/v1/*` routes, their layers and handlers.
//! - [`auth`]: the API-key layer (SHA-256 lookup, before the body is read).
//! - [`body`]: reading the body within its limit and finding `model` in it.
//! - [`config`]: the keys and routes in force ([`Snapshot`]).
//! - [`watch`]: the task that long-polls the control plane for them.
//! - [`routing`]: the pure choice of a replica.
//! - [`replicas`]: per-replica live state (outstanding requests, ejection).
//! - [`health`]: the active health checks.
//! - [`forward`]: sending to a replica with retry-once, relaying the answer as a stream.
//! - [`metering`]: the seam where served usage will be spooled.
//! - [`error`]: every failure in OpenAI's error shape, in one place.
//!
//! **Architecture invariant:** the gateway holds key hashes, never secrets, and keeps serving
//! its last config when the control plane is unreachable (static stability).

pub mod auth;
pub mod body;
pub mod config;
pub mod error;
pub mod forward;
pub mod health;
pub mod metering;
pub mod replicas;
pub mod routing;
pub mod server;
pub mod watch;

#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use wattmesh_proto::gateway::GatewayConfig;

pub use config::Snapshot;
pub use error::GatewayError;
pub use server::{router, run};

/// How the gateway reaches its control plane and what it accepts.
#[derive(Clone)]
pub struct GatewayOptions {
    pub control_url: String,
    /// The admin token the control plane's gateway-config endpoint wants.
    pub control_token: String,
    /// Request bodies above this get 413.
    pub max_body_bytes: usize,
    /// How often each replica's `/health` is probed.
    pub health_interval: Duration,
    /// On shutdown, how long in-flight requests (streams included) may take to finish.
    pub shutdown_grace: Duration,
}

impl GatewayOptions {
    /// The defaults: 4 MiB bodies, probes every 2 s, 30 s to drain on shutdown.
    pub fn new(control_url: String, control_token: String) -> Self {
        Self {
            control_url,
            control_token,
            max_body_bytes: 4 << 20,
            health_interval: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

// The token stays out of logs.
impl std::fmt::Debug for GatewayOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayOptions")
            .field("control_url", &self.control_url)
            .field("control_token", &"<redacted>")
            .field("max_body_bytes", &self.max_body_bytes)
            .field("health_interval", &self.health_interval)
            .field("shutdown_grace", &self.shutdown_grace)
            .finish()
    }
}

/// Everything a request handler needs; cheap to clone. The config in force is swapped whole
/// by [`GatewayState::set_config`]: by the watcher in production, by the test itself in tests.
#[derive(Debug, Clone)]
pub struct GatewayState {
    config: Arc<RwLock<Arc<Snapshot>>>,
    pub(crate) replicas: replicas::ReplicaTable,
    pub(crate) http: reqwest::Client,
    pub(crate) max_body_bytes: usize,
    pub(crate) control: Arc<watch::ControlLink>,
}

impl GatewayState {
    /// A state with no config yet (requests get 503 until [`Self::set_config`]).
    pub fn new(max_body_bytes: usize) -> Self {
        // Pooled connections; a connect timeout but no overall one, so streams run as long as
        // the replica produces.
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default();
        Self {
            config: Arc::default(),
            replicas: replicas::ReplicaTable::default(),
            http,
            max_body_bytes,
            control: Arc::default(),
        }
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
