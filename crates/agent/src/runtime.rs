//! How one replica is started. [`ReplicaLauncher`] is the seam between the converger and an
//! inference engine: the converger decides *what* runs, a launcher knows *how*. The real
//! runtimes are a closed set, [`Runtime`]: `Embedded` runs the candle engine inside the agent's
//! process on its own loopback port; process and container runtimes (vLLM, SGLang, llama.cpp
//! servers) join this enum later. Tests launch fakes through the same trait.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use wattmesh_proto::agent::ReplicaAssignment;

/// The future that serves a started replica until its shutdown token is cancelled.
pub type Serving = Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>>;

/// A started replica: where it takes requests, and the future that serves them.
///
/// The converger's replica task awaits `serving`, so the server lives inside the agent's one
/// shutdown tree; it returns once the `shutdown` token given to [`ReplicaLauncher::launch`]
/// is cancelled and in-flight requests are done, or early if the server fails.
pub struct Launched {
    /// Base URL of the replica's OpenAI server, e.g. `http://127.0.0.1:41234`.
    pub endpoint: String,
    /// What a caller must present (`Authorization: Bearer`) to be served: reported to the
    /// control plane, which gives it to gateways only.
    pub access_token: String,
    pub serving: Serving,
}

/// Why a replica could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("cannot load the model: {0}")]
    Load(String),
    #[error("cannot bind the replica's port: {0}")]
    Bind(std::io::Error),
}

/// Starts replicas: loads the model in `dir` (the artifact directory that [`crate::pull`]
/// filled) and binds its server. Open for tests; the real ones are [`Runtime`].
pub trait ReplicaLauncher: Send + Sync + 'static {
    fn launch(
        &self,
        assignment: &ReplicaAssignment,
        dir: &Path,
        shutdown: CancellationToken,
    ) -> impl Future<Output = Result<Launched, LaunchError>> + Send;
}

/// The runtimes the agent knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Runtime {
    /// The candle engine in the agent's own process, one loopback port per replica.
    #[default]
    Embedded,
}

impl ReplicaLauncher for Runtime {
    async fn launch(
        &self,
        assignment: &ReplicaAssignment,
        dir: &Path,
        shutdown: CancellationToken,
    ) -> Result<Launched, LaunchError> {
        match self {
            Runtime::Embedded => launch_embedded(assignment, dir, shutdown).await,
        }
    }
}

async fn launch_embedded(
    assignment: &ReplicaAssignment,
    dir: &Path,
    shutdown: CancellationToken,
) -> Result<Launched, LaunchError> {
    let (name, kind, dir) = (assignment.model.clone(), assignment.kind, dir.to_owned());
    // Loading reads and maps a model of up to a few hundred MB: not on the async workers.
    let replica =
        tokio::task::spawn_blocking(move || wattmesh_engine::Replica::load(&name, kind, &dir))
            .await
            .map_err(|e| LaunchError::Load(format!("the loading task failed: {e}")))?
            .map_err(|e| LaunchError::Load(e.to_string()))?;
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(LaunchError::Bind)?;
    let addr = listener.local_addr().map_err(LaunchError::Bind)?;
    // A fresh credential per run of the replica, never written anywhere: the agent reports
    // it to the control plane, which hands it to gateways.
    let access_token = format!("wm-replica-{}", hex::encode(rand::random::<[u8; 16]>()));
    let access = wattmesh_engine::Access::Token(access_token.clone());
    Ok(Launched {
        endpoint: format!("http://{addr}"),
        access_token,
        serving: Box::pin(wattmesh_engine::serve(listener, replica, access, shutdown)),
    })
}
