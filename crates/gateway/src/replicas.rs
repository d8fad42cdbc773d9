//! Live per-replica state the gateway learns itself, faster than the control plane can tell
//! it: requests in flight (for least-outstanding routing) and health (passive, from failed
//! connects and 503s, and active, from the probes in [`crate::health`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// How long a replica that refused a connection (or answered 503) is avoided, unless a health
/// probe passes first.
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

    /// Counts a request in flight until the returned guard is dropped — which, for a relayed
    /// body, is when the body ends or the client goes away.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

/// One request in flight to a replica; dropping it ends the count.
#[derive(Debug)]
pub struct InFlight(Arc<ReplicaStats>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data is plain numbers: a panic elsewhere cannot leave it inconsistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Stats by replica id, created on first sight.
#[derive(Debug, Clone, Default)]
pub struct ReplicaTable(Arc<Mutex<HashMap<String, Arc<ReplicaStats>>>>);

impl ReplicaTable {
    pub fn get(&self, id: &str) -> Arc<ReplicaStats> {
        lock(&self.0).entry(id.to_owned()).or_default().clone()
    }

    /// Forgets replicas that left the config, so the table does not grow forever. Requests
    /// still in flight keep their own handle.
    pub fn retain(&self, ids: &[&str]) {
        lock(&self.0).retain(|id, _| ids.contains(&id.as_str()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_counts_until_dropped() {
        let table = ReplicaTable::default();
        let stats = table.get("r1");
        let a = stats.start();
        let b = table.get("r1").start();
        assert_eq!(stats.outstanding(), 2);
        drop(a);
        assert_eq!(stats.outstanding(), 1);
        drop(b);
        assert_eq!(stats.outstanding(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_expires_or_is_lifted_by_a_probe() {
        let stats = ReplicaStats::default();
        assert!(stats.healthy());
        stats.eject(EJECTION);
        assert!(!stats.healthy());
        tokio::time::advance(EJECTION).await;
        assert!(stats.healthy());
        stats.eject(EJECTION);
        stats.restore();
        assert!(stats.healthy());
    }
}
