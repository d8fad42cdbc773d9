//! The state the simulator's servers share: every unit behind its own lock (commands are
//! short and pure, so a std mutex held for one is fine), the simulated clock, the count of
//! connections being served, and the shutdown.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Fault, commands, unit};
use crate::luxos::Curtail;

pub(crate) struct Session {
    pub id: String,
    pub last_used_s: f64,
}

/// One unit's state behind its lock.
pub(crate) struct UnitState {
    pub unit: unit::Unit,
    pub session: Option<Session>,
    pub fault: Fault,
    pub curtail_log: Vec<(Curtail, Instant)>,
    /// xorshift state for session ids (ids are not secrets here, only unique-ish).
    rng: u64,
}

impl UnitState {
    /// Unit `index`'s state, awake or asleep as `unit` is, with no session and no fault.
    pub fn new(unit: unit::Unit, index: usize) -> UnitState {
        UnitState {
            unit,
            session: None,
            fault: Fault::None,
            curtail_log: Vec::new(),
            rng: (0x9E37_79B9_7F4A_7C15 ^ (index as u64 + 1).wrapping_mul(0x2545_F491_4F6C_DD1D))
                | 1,
        }
    }

    pub fn next_session_id(&mut self) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        (0..8)
            .map(|_| {
                self.rng ^= self.rng << 13;
                self.rng ^= self.rng >> 7;
                self.rng ^= self.rng << 17;
                char::from(ALPHABET[(self.rng % ALPHABET.len() as u64) as usize])
            })
            .collect()
    }
}

/// What the servers share: the units, the clock, the counters, the shutdown.
pub(crate) struct Shared {
    pub units: Vec<Mutex<UnitState>>,
    pub origin: Instant,
    pub speed: f64,
    pub open: AtomicUsize,
    pub max_open: AtomicUsize,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
}

/// Decrements the open-connection count when dropped.
pub(crate) struct ConnectionGuard<'a>(&'a AtomicUsize);

impl Drop for ConnectionGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Shared {
    pub fn lock(&self, index: usize) -> Option<MutexGuard<'_, UnitState>> {
        // A poisoned lock only means a panic elsewhere mid-update; the state is still plain data.
        Some(
            self.units
                .get(index)?
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    pub fn now(&self) -> commands::Now {
        let instant = Instant::now();
        commands::Now {
            instant,
            sim_s: (instant - self.origin).as_secs_f64() * self.speed,
        }
    }

    pub fn fault(&self, index: usize) -> Fault {
        self.lock(index).map_or(Fault::Hangup, |u| u.fault)
    }

    pub fn connection_started(&self) -> ConnectionGuard<'_> {
        let open = self.open.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_open.fetch_max(open, Ordering::SeqCst);
        ConnectionGuard(&self.open)
    }

    pub fn refuse(&self, code: i64, msg: &str) -> Vec<u8> {
        commands::refuse(&self.now(), code, msg)
    }

    pub fn handle(&self, index: usize, request: &[u8]) -> Vec<u8> {
        let now = self.now();
        match self.lock(index) {
            Some(mut unit) => commands::handle(&mut unit, &now, request),
            None => Vec::new(),
        }
    }
}
