//! The control plane as the CLI sees it: [`open`] a data directory, get a [`Control`], serve
//! its [`router`](Control::router) and run its reconciler with [`run`](Control::run).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wattmesh_domain::market::IntervalLength;
use wattmesh_store::{SqliteStore, Store};

use crate::liveness::Liveness;
use crate::reconciler::Reconciler;
use crate::secrets::{new_admin_token, new_bootstrap_token, sha256_hex, write_secret_file};
use crate::{ControlConfig, ControlError, routes};

/// The SQLite database inside the data directory.
pub const DB_FILE: &str = "wattmesh.db";
/// The admin token's plaintext, written once (mode 0600) on first start.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";
/// The agent bootstrap token's plaintext, written once (mode 0600) on first start.
pub const BOOTSTRAP_TOKEN_FILE: &str = "bootstrap-token";

/// Largest request body any endpoint reads.
pub(crate) const BODY_LIMIT_BYTES: usize = 1 << 20;
/// Longest a long-poll waits, whatever the caller asks: below common proxy idle timeouts.
pub(crate) const MAX_WATCH: Duration = Duration::from_secs(30);

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct AppState {
    pub store: Arc<dyn Store>,
    pub reconciler: Arc<Reconciler>,
    pub admin_sha256: Arc<str>,
    pub bootstrap_sha256: Arc<str>,
    /// Cancelled when the service stops, so long-polls answer at once instead of holding
    /// the graceful shutdown for up to [`MAX_WATCH`].
    pub stop: CancellationToken,
    /// The live planner's interval.
    pub plan_interval: IntervalLength,
}

/// An opened control plane, ready to serve.
pub struct Control {
    state: AppState,
}

/// Opens (or creates) `DATA_DIR/wattmesh.db`, runs migrations, and on first start creates the
/// admin and agent bootstrap tokens (plaintexts to `DATA_DIR/admin-token` and
/// `DATA_DIR/bootstrap-token`, mode 0600; only hashes in the database). Later starts keep
/// both tokens and all state.
pub async fn open(config: ControlConfig) -> Result<Control, ControlError> {
    let dir = &config.data_dir;
    std::fs::create_dir_all(dir)
        .map_err(|e| ControlError::io(format!("creating {}", dir.display()), e))?;
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.join(DB_FILE)).await?);
    let admin = ensure_token(
        &*store,
        "admin",
        &dir.join(ADMIN_TOKEN_FILE),
        new_admin_token,
    )
    .await?;
    let bootstrap = ensure_token(
        &*store,
        "bootstrap",
        &dir.join(BOOTSTRAP_TOKEN_FILE),
        new_bootstrap_token,
    )
    .await?;

    store.forget_replica_reports().await?;
    let liveness = Liveness::new(config.heartbeat_timeout);
    // Grace after a restart: sites that were alive get one timeout to call in again.
    for site in store.list_sites().await? {
        if site.last_heartbeat.is_some() {
            liveness.beat(&site.name);
        }
    }
    let reconciler = Arc::new(Reconciler::new(store.clone(), liveness).await?);
    reconciler.step().await?;
    let state = AppState {
        store,
        reconciler,
        admin_sha256: admin.into(),
        bootstrap_sha256: bootstrap.into(),
        stop: CancellationToken::new(),
        plan_interval: config.plan_interval,
    };
    Ok(Control { state })
}

/// The stored hash of a named token, creating the token (and its file) if there is none.
/// The file is written before the hash is stored: a crash in between regenerates both next
/// time, instead of leaving a token nobody has.
async fn ensure_token(
    store: &dyn Store,
    name: &str,
    path: &Path,
    generate: fn() -> String,
) -> Result<String, ControlError> {
    if let Some(hash) = store.secret(name).await? {
        return Ok(hash);
    }
    let token = generate();
    write_secret_file(path, &token)
        .map_err(|e| ControlError::io(format!("writing {}", path.display()), e))?;
    let hash = sha256_hex(&token);
    store.insert_secret(name, &hash).await?;
    tracing::info!(path = %path.display(), "created the {name} token");
    Ok(hash)
}

impl Control {
    /// The whole HTTP surface, testable with `oneshot` and no socket. Handlers reconcile
    /// after each change; only the staleness tick needs [`run`](Self::run).
    pub fn router(&self) -> Router {
        routes::router(self.state.clone())
    }

    /// Serves on `listener` and ticks the reconciler until `shutdown`, then lets in-flight
    /// requests finish (long-polls answer at once) and returns.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        let stop = self.state.stop.clone();
        let tasks = TaskTracker::new();
        tasks.spawn({
            let stop = stop.clone();
            async move {
                tokio::select! {
                    _ = shutdown.cancelled() => stop.cancel(),
                    _ = stop.cancelled() => {}
                }
            }
        });
        tasks.spawn(self.state.reconciler.clone().tick_until(stop.clone()));
        tasks.spawn(crate::accrual::run(
            self.state.store.clone(),
            self.state.reconciler.clone(),
            stop.clone(),
        ));
        tasks.spawn(crate::planning::run(
            self.state.store.clone(),
            self.state.reconciler.clone(),
            self.state.plan_interval,
            stop.clone(),
        ));
        let served = axum::serve(listener, self.router())
            .with_graceful_shutdown(stop.clone().cancelled_owned())
            .await;
        stop.cancel();
        tasks.close();
        tasks.wait().await;
        served
    }
}
