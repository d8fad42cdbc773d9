//! The OpenAI data plane: authenticates customers' keys, finds a replica of the requested
//! model, and streams the replica's answer back unchanged.
//!
//! Layout:
//! - [`snapshot`]: the keys and routes in force, as watched from the control plane.
//! - [`watch`]: the task that long-polls the control plane for them.
//! - [`routing`]: the pure choice of a replica.
//! - [`replicas`]: per-replica live state (outstanding requests, health) and health checks.
//! - [`proxy`]: the `/v1/*` handlers: auth, body checks, forwarding with retry-once.
//! - [`error`]: every failure in OpenAI's error shape, in one place.
//!
//! **Architecture invariant:** the gateway holds key hashes, never secrets, and keeps serving
//! its last config when the control plane is unreachable (static stability).

pub mod error;
pub mod proxy;
pub mod replicas;
pub mod routing;
pub mod snapshot;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use proxy::router;
pub use snapshot::Snapshot;

/// How the gateway reaches its control plane and what it accepts.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    pub control_url: String,
    pub control_token: String,
    /// Request bodies above this get 413.
    pub max_body_bytes: usize,
    /// How often each replica's `/health` is probed.
    pub health_interval: Duration,
}

impl GatewayOptions {
    pub fn new(control_url: String, control_token: String) -> Self {
        Self {
            control_url,
            control_token,
            max_body_bytes: 4 << 20,
            health_interval: Duration::from_secs(2),
        }
    }
}

/// Everything a request handler needs; cheap to clone.
#[derive(Clone)]
pub struct GatewayState {
    pub(crate) config: tokio::sync::watch::Receiver<Arc<Snapshot>>,
    pub(crate) replicas: replicas::ReplicaTable,
    pub(crate) http: reqwest::Client,
    pub(crate) max_body_bytes: usize,
}

impl GatewayState {
    /// A state whose config is set by the returned sender: the watcher in production,
    /// the test itself in tests.
    pub fn new(max_body_bytes: usize) -> (Self, tokio::sync::watch::Sender<Arc<Snapshot>>) {
        let (tx, rx) = tokio::sync::watch::channel(Arc::new(Snapshot::default()));
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default();
        let state =
            Self { config: rx, replicas: replicas::ReplicaTable::default(), http, max_body_bytes };
        (state, tx)
    }
}

/// Runs the gateway on `listener` until `shutdown`: watches the control plane for keys and
/// routes, probes replicas, and serves `/v1/*`; in-flight requests finish on shutdown.
pub async fn run(
    listener: TcpListener,
    options: GatewayOptions,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let (state, config_tx) = GatewayState::new(options.max_body_bytes);
    let tracker = tokio_util::task::TaskTracker::new();
    tracker.spawn(watch::watch_control(
        state.http.clone(),
        options.control_url.clone(),
        options.control_token.clone(),
        config_tx,
        shutdown.child_token(),
    ));
    tracker.spawn(replicas::health_checks(state.clone(), options.health_interval, shutdown.child_token()));
    let served = axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await;
    shutdown.cancel();
    tracker.close();
    tracker.wait().await;
    served
}
