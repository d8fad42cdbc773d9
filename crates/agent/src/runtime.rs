//! Runtimes start one replica and hand back where it serves. A closed set: `Embedded` runs the
//! candle engine inside the agent's process on its own loopback port; process and container
//! runtimes (vLLM, SGLang, llama.cpp servers) join this enum later.

use std::path::Path;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use wattmesh_domain::ModelKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    Embedded,
}

/// A started replica: its endpoint and the future that serves it until `shutdown`.
pub struct Started {
    pub endpoint: String,
    pub serving: std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<()>> + Send>>,
}

impl Runtime {
    /// Loads the model in `dir` and binds its server; the returned future serves it.
    pub async fn start(
        self,
        served_name: &str,
        kind: ModelKind,
        dir: &Path,
        shutdown: CancellationToken,
    ) -> Result<Started, String> {
        match self {
            Runtime::Embedded => {
                let (name, dir) = (served_name.to_owned(), dir.to_owned());
                let replica = tokio::task::spawn_blocking(move || {
                    wattmesh_engine::Replica::load(&name, kind, &dir)
                })
                .await
                .map_err(|e| format!("loading task failed: {e}"))?
                .map_err(|e| format!("cannot load the model: {e}"))?;
                let listener = TcpListener::bind("127.0.0.1:0")
                    .await
                    .map_err(|e| format!("cannot bind a port: {e}"))?;
                let addr = listener.local_addr().map_err(|e| e.to_string())?;
                Ok(Started {
                    endpoint: format!("http://{addr}"),
                    serving: Box::pin(wattmesh_engine::serve(listener, replica, shutdown)),
                })
            }
        }
    }
}
