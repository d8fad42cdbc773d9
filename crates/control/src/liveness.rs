//! Which sites (and gateway processes) are alive: the instant of each one's last heartbeat
//! (for a gateway, its last config poll), on tokio's clock so tests can pause and advance it. Kept in memory only: after a restart every site that ever
//! heartbeated gets one timeout of grace, so a restart does not make the whole fleet look
//! lost and reshuffle replicas before the agents have had a chance to call in.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
pub(crate) struct Liveness {
    timeout: Duration,
    last_seen: Mutex<HashMap<String, Instant>>,
}

impl Liveness {
    pub(crate) fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            last_seen: Mutex::new(HashMap::new()),
        }
    }

    /// Records a heartbeat of `site` now; returns whether the site was ready before it.
    pub(crate) fn beat(&self, site: &str) -> bool {
        let now = Instant::now();
        let mut seen = self.seen();
        let was_ready = seen.get(site).is_some_and(|t| self.fresh(*t, now));
        seen.insert(site.to_owned(), now);
        was_ready
    }

    pub(crate) fn is_ready(&self, site: &str) -> bool {
        let now = Instant::now();
        let seen = self.seen();
        seen.get(site).is_some_and(|t| self.fresh(*t, now))
    }

    /// Every site heartbeating on time, at one instant (one reconcile sees one answer).
    pub(crate) fn ready_sites(&self) -> BTreeSet<String> {
        let now = Instant::now();
        let seen = self.seen();
        seen.iter()
            .filter(|(_, t)| self.fresh(**t, now))
            .map(|(s, _)| s.clone())
            .collect()
    }

    /// Forgets `name` now (a gateway process that said it leaves); returns whether it was
    /// counted.
    pub(crate) fn forget(&self, name: &str) -> bool {
        let now = Instant::now();
        let mut seen = self.seen();
        seen.remove(name).is_some_and(|t| self.fresh(t, now))
    }

    /// Forgets whoever went stale and counts the rest. For names that come and go (a
    /// gateway process's id is new at each start), so the map does not grow forever; for
    /// sites nothing changes either, since a name not seen reads as not ready.
    pub(crate) fn prune_and_count(&self) -> usize {
        let now = Instant::now();
        let mut seen = self.seen();
        seen.retain(|_, t| self.fresh(*t, now));
        seen.len()
    }

    fn seen(&self) -> MutexGuard<'_, HashMap<String, Instant>> {
        self.last_seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn fresh(&self, seen: Instant, now: Instant) -> bool {
        now.saturating_duration_since(seen) < self.timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_site_is_ready_until_its_heartbeat_is_older_than_the_timeout() {
        let live = Liveness::new(Duration::from_secs(10));
        assert!(!live.is_ready("a"), "never heartbeated: not ready");
        assert!(!live.beat("a"), "was not ready before its first heartbeat");
        assert!(live.is_ready("a"));
        tokio::time::advance(Duration::from_millis(9_999)).await;
        assert!(live.is_ready("a"));
        assert!(live.beat("a"), "a beat in time keeps it ready");
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(!live.is_ready("a"));
        assert!(live.ready_sites().is_empty());
        assert!(!live.beat("a"), "back after going stale");
        live.beat("b");
        tokio::time::advance(Duration::from_secs(5)).await;
        live.beat("b");
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(
            live.prune_and_count(),
            1,
            "a is stale and forgotten; b is live"
        );
        assert!(!live.beat("a"), "a forgotten name reads as not ready");
        assert_eq!(
            live.ready_sites().into_iter().collect::<Vec<_>>(),
            vec!["a".to_owned(), "b".to_owned()]
        );
    }
}
