//! The converger: one task owns the table of running replicas and makes it match the desired
//! state — starting what is missing, stopping what is no longer wanted, restarting (with a
//! pause) what died. Each replica runs as a task of its own that reports its state.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wattmesh_proto::agent::{DesiredState, ReplicaAssignment, ReplicaReport};
use wattmesh_proto::api::ReplicaState;

use crate::AgentConfig;
use crate::fetch::{Quiet, pull};
use crate::runtime::Runtime;

/// Pause before a replica that failed or died is started again.
const RESTART_PAUSE: Duration = Duration::from_secs(5);

/// What every replica last said about itself, for heartbeats.
#[derive(Clone, Default)]
pub struct Reports(Arc<Mutex<BTreeMap<String, ReplicaReport>>>);

impl Reports {
    fn set(
        &self,
        id: &str,
        state: ReplicaState,
        endpoint: Option<String>,
        message: Option<String>,
    ) {
        let report = ReplicaReport {
            id: id.to_owned(),
            state,
            endpoint,
            message,
        };
        self.lock().insert(id.to_owned(), report);
    }

    fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    pub fn all(&self) -> Vec<ReplicaReport> {
        self.lock().values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, ReplicaReport>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

struct Running {
    cancel: CancellationToken,
    task: JoinHandle<()>,
    started: Instant,
}

/// Converges until `shutdown`, then stops every replica and waits for them.
pub async fn converge(
    config: Arc<AgentConfig>,
    mut desired: tokio::sync::watch::Receiver<DesiredState>,
    converged: Arc<std::sync::atomic::AtomicU64>,
    reports: Reports,
    shutdown: CancellationToken,
) {
    let tracker = TaskTracker::new();
    let mut running: HashMap<String, Running> = HashMap::new();
    loop {
        let state = desired.borrow_and_update().clone();
        let want: HashMap<&str, &ReplicaAssignment> =
            state.replicas.iter().map(|a| (a.id.as_str(), a)).collect();

        running.retain(|id, r| {
            let keep = want.contains_key(id.as_str());
            if !keep {
                tracing::info!(site = %config.site, replica = %id, "stopping replica");
                r.cancel.cancel();
                reports.remove(id);
            }
            keep
        });
        for (id, assignment) in &want {
            let restart = match running.get(*id) {
                None => true,
                Some(r) => r.task.is_finished() && r.started.elapsed() >= RESTART_PAUSE,
            };
            if restart {
                let cancel = shutdown.child_token();
                let task = tracker.spawn(replica_task(
                    (*assignment).clone(),
                    config.clone(),
                    reports.clone(),
                    cancel.clone(),
                ));
                running.insert(
                    (*id).to_owned(),
                    Running {
                        cancel,
                        task,
                        started: Instant::now(),
                    },
                );
            }
        }
        converged.store(state.version, std::sync::atomic::Ordering::Relaxed);

        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = desired.changed() => if changed.is_err() { break },
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    for r in running.values() {
        r.cancel.cancel();
    }
    tracker.close();
    tracker.wait().await;
}

/// One replica's life: fetch the model if needed, load it, serve until cancelled.
async fn replica_task(
    a: ReplicaAssignment,
    config: Arc<AgentConfig>,
    reports: Reports,
    cancel: CancellationToken,
) {
    let id = a.id.as_str();
    reports.set(id, ReplicaState::Starting, None, None);
    let failed = |message: String| {
        tracing::warn!(site = %config.site, replica = %id, "replica failed: {message}");
        reports.set(id, ReplicaState::Failed, None, Some(message));
    };
    let Some(model) = config.catalog.get(&a.artifact).cloned() else {
        return failed(format!(
            "artifact {:?} is not in this agent's catalog",
            a.artifact
        ));
    };
    let models_dir = config.models_dir.clone();
    let dir = match tokio::task::spawn_blocking(move || pull(&model, &models_dir, &Quiet)).await {
        Ok(Ok(dir)) => dir,
        Ok(Err(e)) => return failed(format!("fetching the model: {e}")),
        Err(e) => return failed(format!("fetch task: {e}")),
    };
    let started = tokio::select! {
        _ = cancel.cancelled() => return,
        s = Runtime::Embedded.start(&a.model, a.kind, &dir, cancel.clone()) => s,
    };
    let started = match started {
        Ok(s) => s,
        Err(e) => return failed(e),
    };
    tracing::info!(site = %config.site, replica = %id, model = %a.model, endpoint = %started.endpoint, "replica ready");
    reports.set(id, ReplicaState::Ready, Some(started.endpoint), None);
    match started.serving.await {
        Ok(()) if cancel.is_cancelled() => {}
        Ok(()) => failed("the replica's server stopped".into()),
        Err(e) => failed(format!("the replica's server failed: {e}")),
    }
}
