//! Live per-replica state the gateway learns itself, faster than the control plane can tell
//! it: requests in flight (for least-outstanding routing) and health (passive, from failed
//! connects, and active, from probing `/health`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::GatewayState;

/// How long a replica that refused a connection is avoided, unless a probe clears it first.
pub const EJECTION: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
pub struct ReplicaStats {
    outstanding: AtomicUsize,
    unhealthy_until: Mutex<Option<Instant>>,
}

impl ReplicaStats {
    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    pub fn healthy(&self) -> bool {
        match *lock(&self.unhealthy_until) {
            None => true,
            Some(until) => Instant::now() >= until,
        }
    }

    pub fn eject(&self, for_how_long: Duration) {
        *lock(&self.unhealthy_until) = Some(Instant::now() + for_how_long);
    }

    pub fn restore(&self) {
        *lock(&self.unhealthy_until) = None;
    }

    /// Counts a request in flight until the returned guard is dropped — which, for a stream,
    /// is when the relayed body ends or the client goes away.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

pub struct InFlight(Arc<ReplicaStats>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Stats by replica id, created on first sight.
#[derive(Clone, Default)]
pub struct ReplicaTable(Arc<Mutex<HashMap<String, Arc<ReplicaStats>>>>);

impl ReplicaTable {
    pub fn get(&self, id: &str) -> Arc<ReplicaStats> {
        lock(&self.0).entry(id.to_owned()).or_default().clone()
    }

    /// Forgets replicas that left the config, so the table does not grow forever.
    fn retain(&self, ids: &[String]) {
        lock(&self.0).retain(|id, _| ids.contains(id));
    }
}

/// Probes every routed replica's `/health` each `interval`; a failure ejects it until a later
/// probe succeeds.
pub async fn health_checks(state: GatewayState, interval: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let targets: Vec<(String, String)> = state
            .config
            .borrow()
            .models
            .values()
            .flat_map(|m| m.replicas.iter().map(|r| (r.id.clone(), r.endpoint.clone())))
            .collect();
        state.replicas.retain(&targets.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>());
        let probes = targets.into_iter().map(|(id, endpoint)| {
            let http = state.http.clone();
            let stats = state.replicas.get(&id);
            async move {
                let ok = http
                    .get(format!("{}/health", endpoint.trim_end_matches('/')))
                    .timeout(Duration::from_secs(1))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ok {
                    stats.restore();
                } else {
                    stats.eject(interval * 2);
                }
            }
        });
        futures::future::join_all(probes).await;
    }
}
