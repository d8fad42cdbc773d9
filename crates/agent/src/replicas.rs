//! The converger: one task owns the table of replicas and makes it match the desired state —
//! starting what is missing, stopping what is no longer wanted, restarting with a growing
//! pause what failed or died. Each replica runs as a task of its own (fetch the model, launch
//! it, serve until cancelled) that tells the converger how it is doing over a channel; the
//! converger publishes what it observes for the heartbeats.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use wattmesh_proto::agent::{DesiredState, ReplicaAssignment, ReplicaReport};
use wattmesh_proto::api::ReplicaState;

use crate::catalog::Catalog;
use crate::fetch::{Quiet, pull};
use crate::runtime::ReplicaLauncher;

/// First pause before a failed replica is started again; doubles per failure in a row.
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// Longest pause between restarts.
const MAX_RETRY: Duration = Duration::from_secs(60);
/// A replica that served this long before it died starts its pauses from the beginning.
const STABLE_AFTER: Duration = Duration::from_secs(60);
/// How long a stopped replica may take to finish its in-flight requests.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// What the converger needs about its site.
pub(crate) struct SiteRuntime<L> {
    pub site: String,
    pub catalog: Catalog,
    pub models_dir: PathBuf,
    pub launcher: L,
}

/// What the site runs, as the heartbeats report it.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Observed {
    /// The desired-state version the table was last made to match.
    pub converged_version: u64,
    pub replicas: Vec<ReplicaReport>,
}

/// What a replica task tells the converger. `generation` tells apart the runs of one id.
#[derive(Debug)]
enum Event {
    Starting {
        id: String,
        generation: u64,
        message: String,
    },
    Ready {
        id: String,
        generation: u64,
        endpoint: String,
        access_token: String,
    },
    /// The run ended without being asked to.
    Ended {
        id: String,
        generation: u64,
        error: String,
    },
}

struct Slot {
    assignment: ReplicaAssignment,
    report: ReplicaReport,
    generation: u64,
    run: Option<Run>,
    /// Failures in a row, for the restart pause.
    failures: u32,
    retry_at: Option<Instant>,
}

struct Run {
    cancel: CancellationToken,
    task: JoinHandle<()>,
    ready_since: Option<Instant>,
}

/// The converger's state; owned by the one task running [`Converger::run`].
pub(crate) struct Converger<L> {
    site: Arc<SiteRuntime<L>>,
    slots: BTreeMap<String, Slot>,
    events_tx: mpsc::Sender<Event>,
    events: mpsc::Receiver<Event>,
    observed: watch::Sender<Observed>,
    converged_version: u64,
    /// Numbers the runs of all replicas, so events of a stopped run are never taken for
    /// those of a later run under the same id.
    runs_started: u64,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl<L: ReplicaLauncher> Converger<L> {
    pub fn new(
        site: Arc<SiteRuntime<L>>,
        observed: watch::Sender<Observed>,
        shutdown: CancellationToken,
    ) -> Self {
        let (events_tx, events) = mpsc::channel(64);
        Converger {
            site,
            slots: BTreeMap::new(),
            events_tx,
            events,
            observed,
            converged_version: 0,
            runs_started: 0,
            tracker: TaskTracker::new(),
            shutdown,
        }
    }

    /// Converges to every new desired state until `shutdown`, then stops every replica and
    /// waits (a bounded grace) for them.
    pub async fn run(mut self, mut desired: watch::Receiver<DesiredState>) {
        let mut watching = true;
        let first = desired.borrow_and_update().clone();
        self.apply(&first);
        loop {
            self.start_due();
            self.publish();
            let next_retry = self.slots.values().filter_map(|s| s.retry_at).min();
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                changed = desired.changed(), if watching => match changed {
                    Ok(()) => {
                        let state = desired.borrow_and_update().clone();
                        self.apply(&state);
                    }
                    // The session is gone: keep what runs until shutdown.
                    Err(_) => watching = false,
                },
                Some(event) = self.events.recv() => self.on_event(event),
                _ = sleep_until(next_retry), if next_retry.is_some() => {}
            }
        }
        let runs: Vec<Run> = self
            .slots
            .values_mut()
            .filter_map(|s| s.run.take())
            .collect();
        for run in runs {
            run.cancel.cancel();
            self.tracker.spawn(stop(run.task));
        }
        self.tracker.close();
        self.tracker.wait().await;
    }

    /// Makes the table hold exactly the desired replicas (those to start are started by
    /// [`Self::start_due`]).
    fn apply(&mut self, state: &DesiredState) {
        let want: BTreeMap<&str, &ReplicaAssignment> =
            state.replicas.iter().map(|a| (a.id.as_str(), a)).collect();
        let gone: Vec<String> = self
            .slots
            .iter()
            .filter(|(id, slot)| want.get(id.as_str()) != Some(&&slot.assignment))
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            let Some(slot) = self.slots.remove(&id) else {
                continue;
            };
            tracing::info!(site = %self.site.site, replica = %id, "stopping replica");
            if let Some(run) = slot.run {
                run.cancel.cancel();
                // Draining may take a while; the converger goes on meanwhile.
                self.tracker.spawn(stop(run.task));
            }
        }
        for (id, assignment) in want {
            self.slots.entry(id.to_owned()).or_insert_with(|| Slot {
                assignment: assignment.clone(),
                report: report(id, ReplicaState::Pending, None, None),
                generation: 0,
                run: None,
                failures: 0,
                retry_at: Some(Instant::now()),
            });
        }
        self.converged_version = state.version;
    }

    /// Starts every replica that is not running and whose pause is over.
    fn start_due(&mut self) {
        let now = Instant::now();
        for (id, slot) in &mut self.slots {
            if slot.run.is_some() || slot.retry_at.is_none_or(|at| at > now) {
                continue;
            }
            self.runs_started += 1;
            slot.generation = self.runs_started;
            slot.retry_at = None;
            slot.report = report(id, ReplicaState::Starting, None, Some("starting".into()));
            let cancel = self.shutdown.child_token();
            let span = tracing::info_span!("replica", site = %self.site.site, replica = %id);
            let task = self.tracker.spawn(
                replica_task(
                    self.site.clone(),
                    slot.assignment.clone(),
                    slot.generation,
                    self.events_tx.clone(),
                    cancel.clone(),
                )
                .instrument(span),
            );
            slot.run = Some(Run {
                cancel,
                task,
                ready_since: None,
            });
        }
    }

    fn on_event(&mut self, event: Event) {
        let (id, generation) = match &event {
            Event::Starting { id, generation, .. }
            | Event::Ready { id, generation, .. }
            | Event::Ended { id, generation, .. } => (id.clone(), *generation),
        };
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        if slot.generation != generation {
            return;
        }
        match event {
            Event::Starting { message, .. } => {
                slot.report = report(&id, ReplicaState::Starting, None, Some(message));
            }
            Event::Ready {
                endpoint,
                access_token,
                ..
            } => {
                tracing::info!(site = %self.site.site, replica = %id, %endpoint, "replica ready");
                slot.report = report(&id, ReplicaState::Ready, Some(endpoint), None);
                slot.report.access_token = Some(access_token);
                if let Some(run) = &mut slot.run {
                    run.ready_since = Some(Instant::now());
                }
            }
            Event::Ended { error, .. } => {
                let stable = slot
                    .run
                    .take()
                    .and_then(|r| r.ready_since)
                    .is_some_and(|t| t.elapsed() >= STABLE_AFTER);
                if stable {
                    slot.failures = 0;
                }
                let pause = retry_pause(slot.failures);
                slot.failures = slot.failures.saturating_add(1);
                slot.retry_at = Some(Instant::now() + pause);
                tracing::warn!(
                    site = %self.site.site, replica = %id,
                    "replica failed: {error}; starting it again in {pause:?}"
                );
                slot.report = report(&id, ReplicaState::Failed, None, Some(error));
            }
        }
    }

    fn publish(&self) {
        let now = Observed {
            converged_version: self.converged_version,
            replicas: self.slots.values().map(|s| s.report.clone()).collect(),
        };
        self.observed.send_if_modified(|old| {
            let changed = *old != now;
            if changed {
                *old = now;
            }
            changed
        });
    }
}

fn retry_pause(failures: u32) -> Duration {
    FIRST_RETRY
        .saturating_mul(1u32 << failures.min(16))
        .min(MAX_RETRY)
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Waits for a cancelled replica task to finish draining; gives up on it after the grace.
async fn stop(mut task: JoinHandle<()>) {
    if tokio::time::timeout(STOP_GRACE, &mut task).await.is_err() {
        tracing::warn!("a replica did not stop within {STOP_GRACE:?}; dropping it");
        task.abort();
    }
}

fn report(
    id: &str,
    state: ReplicaState,
    endpoint: Option<String>,
    message: Option<String>,
) -> ReplicaReport {
    ReplicaReport {
        id: id.to_owned(),
        state,
        endpoint,
        message,
        access_token: None,
    }
}

/// One run of a replica: fetch the model if needed, launch it, serve until cancelled (then
/// drain). Tells the converger how it goes; says nothing once cancelled.
async fn replica_task<L: ReplicaLauncher>(
    site: Arc<SiteRuntime<L>>,
    assignment: ReplicaAssignment,
    generation: u64,
    events: mpsc::Sender<Event>,
    cancel: CancellationToken,
) {
    let id = assignment.id.clone();
    let emit = |event: Event| {
        let (events, cancel) = (events.clone(), cancel.clone());
        async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = events.send(event) => {}
            }
        }
    };
    // Not raced against `cancel` here: a serving replica drains its in-flight requests
    // after the cancel, so its future must be polled to the end.
    let result = run_replica(&site, &assignment, generation, &emit, &cancel).await;
    if cancel.is_cancelled() {
        return;
    }
    let error = match result {
        Ok(()) => "the replica's server stopped".to_owned(),
        Err(e) => e,
    };
    emit(Event::Ended {
        id,
        generation,
        error,
    })
    .await;
}

async fn run_replica<L, E, F>(
    site: &SiteRuntime<L>,
    a: &ReplicaAssignment,
    generation: u64,
    emit: &E,
    cancel: &CancellationToken,
) -> Result<(), String>
where
    L: ReplicaLauncher,
    E: Fn(Event) -> F,
    F: std::future::Future<Output = ()>,
{
    let id = a.id.clone();
    let model = site
        .catalog
        .get(&a.artifact)
        .cloned()
        .ok_or_else(|| format!("artifact {:?} is not in this agent's catalog", a.artifact))?;
    emit(Event::Starting {
        id: id.clone(),
        generation,
        message: format!("fetching {}", model.name),
    })
    .await;
    let models_dir = site.models_dir.clone();
    let fetch = tokio::task::spawn_blocking(move || pull(&model, &models_dir, &Quiet));
    let dir = tokio::select! {
        // The pull itself finishes in the background; the next start finds its files.
        _ = cancel.cancelled() => return Ok(()),
        r = fetch => r,
    }
    .map_err(|e| format!("the fetch task failed: {e}"))?
    .map_err(|e| format!("fetching the model: {e}"))?;
    emit(Event::Starting {
        id: id.clone(),
        generation,
        message: "loading".into(),
    })
    .await;
    let launched = tokio::select! {
        _ = cancel.cancelled() => return Ok(()),
        r = site.launcher.launch(a, &dir, cancel.clone()) => r.map_err(|e| e.to_string())?,
    };
    emit(Event::Ready {
        id,
        generation,
        endpoint: launched.endpoint,
        access_token: launched.access_token,
    })
    .await;
    launched
        .serving
        .await
        .map_err(|e| format!("the replica's server failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_pauses_double_up_to_a_minute() {
        let pauses: Vec<u64> = (0..9).map(|f| retry_pause(f).as_secs()).collect();
        assert_eq!(pauses, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(retry_pause(u32::MAX), MAX_RETRY);
    }
}
