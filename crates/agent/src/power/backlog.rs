//! The power samples the control plane has not taken yet. The sampler queues every sample;
//! each heartbeat carries the newest and the oldest of the rest (up to
//! [`MAX_EARLIER_POWER`]), and once the control plane took the heartbeat, what it carried
//! leaves the queue. So a control plane away, or heartbeats slower than samples, delays the
//! metered series but loses none of it — a DR event's record is its samples.
//!
//! Bounded: past [`CAPACITY`] samples the oldest are dropped, and that is logged once per
//! outage.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use wattmesh_proto::agent::MAX_EARLIER_POWER;
use wattmesh_proto::energy::PowerSample;

/// Samples kept for the control plane: two hours at the default 2 s sampling.
pub(crate) const CAPACITY: usize = 3_600;

#[derive(Debug, Default)]
pub(crate) struct Backlog {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// In the order taken (by the wall clock, which may have been set back meanwhile).
    samples: VecDeque<PowerSample>,
    /// Dropped since the control plane last took a heartbeat.
    dropped: u64,
}

/// What one heartbeat carries.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Batch {
    pub newest: Option<PowerSample>,
    /// Oldest first.
    pub earlier: Vec<PowerSample>,
}

impl Backlog {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues a sample, dropping the oldest past [`CAPACITY`].
    pub fn push(&self, sample: PowerSample) {
        let mut inner = self.inner();
        inner.samples.push_back(sample);
        while inner.samples.len() > CAPACITY {
            inner.samples.pop_front();
            if inner.dropped == 0 {
                tracing::warn!(
                    kept = CAPACITY,
                    "the control plane has not taken the power samples for a while: dropping the oldest"
                );
            }
            inner.dropped += 1;
        }
    }

    /// The next heartbeat's samples: the newest, and the oldest of the rest.
    pub fn batch(&self) -> Batch {
        let inner = self.inner();
        let Some(newest) = inner.samples.back().cloned() else {
            return Batch::default();
        };
        let earlier = inner
            .samples
            .iter()
            .take(inner.samples.len() - 1)
            .take(MAX_EARLIER_POWER)
            .cloned()
            .collect();
        Batch {
            newest: Some(newest),
            earlier,
        }
    }

    /// The control plane took `batch`: its samples leave the queue (newer ones stay).
    pub fn taken(&self, batch: &Batch) {
        let sent: HashSet<i64> = batch
            .earlier
            .iter()
            .chain(&batch.newest)
            .map(|s| s.at_ms)
            .collect();
        let mut inner = self.inner();
        inner.samples.retain(|s| !sent.contains(&s.at_ms));
        if inner.dropped > 0 {
            tracing::warn!(
                dropped = inner.dropped,
                "power samples were lost while the control plane was away"
            );
            inner.dropped = 0;
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner().samples.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wattmesh_proto::energy::MinerCounts;

    fn sample(at_ms: i64) -> PowerSample {
        PowerSample {
            at_ms,
            meter_kw: Some(1.0),
            meter_kwh: None,
            meter_error: None,
            miners: MinerCounts::default(),
        }
    }

    fn instants(samples: &[PowerSample]) -> Vec<i64> {
        samples.iter().map(|s| s.at_ms).collect()
    }

    #[test]
    fn a_heartbeat_carries_the_newest_and_the_oldest_of_the_rest() {
        let b = Backlog::default();
        assert_eq!(b.batch(), Batch::default());
        for at in 0..(MAX_EARLIER_POWER as i64 + 10) {
            b.push(sample(at));
        }
        let batch = b.batch();
        assert_eq!(batch.newest.as_ref().map(|s| s.at_ms), Some(309));
        assert_eq!(
            instants(&batch.earlier),
            (0..MAX_EARLIER_POWER as i64).collect::<Vec<_>>()
        );
        // Taken while two more came: the unsent middle and the new ones stay, in order.
        b.push(sample(310));
        b.push(sample(311));
        b.taken(&batch);
        let next = b.batch();
        assert_eq!(next.newest.as_ref().map(|s| s.at_ms), Some(311));
        assert_eq!(
            instants(&next.earlier),
            (300..309).chain([310]).collect::<Vec<_>>()
        );
        b.taken(&next);
        assert_eq!(b.len(), 0);
    }

    #[test]
    fn a_heartbeat_refused_sends_the_same_samples_again() {
        let b = Backlog::default();
        b.push(sample(1));
        b.push(sample(2));
        let first = b.batch();
        assert_eq!(b.batch(), first, "nothing leaves until taken");
        b.taken(&first);
        assert_eq!(b.batch(), Batch::default());
    }

    #[test]
    fn past_its_capacity_the_oldest_are_dropped() {
        let b = Backlog::default();
        for at in 0..(CAPACITY as i64 + 5) {
            b.push(sample(at));
        }
        assert_eq!(b.len(), CAPACITY);
        assert_eq!(b.batch().earlier[0].at_ms, 5);
    }
}
