//! The site's power: what the agent reads of its meter and miners, and how it executes a
//! demand-response (DR) event on the miners. Two tasks, started by [`crate::run`] when the
//! agent has a [`PowerConfig`]:
//!
//! - `sample`: the sampler. Every `sample_every` it reads the meter and every miner's
//!   telemetry and publishes the newest [`PowerSample`]; each heartbeat carries the newest one.
//!   It only reads (telemetry needs no LuxOS session), so it runs beside the executor.
//! - `dr`: the DR executor, the **one owner of the miners' curtailment**. It follows the
//!   desired state's [`DrDirective`]: at the start it puts every miner to sleep, reports when
//!   each acknowledged and confirmed, holds them asleep until the end, then wakes them in
//!   staggered waves; a cancelled or replaced event wakes them (or goes to the new one) at
//!   once. Outside DR events it applies the live power plan in the desired state (module
//!   `plan`): the miners the plan has asleep sleep, the others hash at its power target; what
//!   their telemetry and the meter confirmed is reported back.
//!
//! Why one task owns the curtailment: a sleep, a hold and a wake are each many commands spread
//! over seconds to minutes. Two owners — say the wake of an event that just ended and the sleep
//! of the next — would interleave their commands, and the miners would end up in whichever
//! state was commanded last rather than in the one the desired state asks for; LuxOS would
//! also refuse one of them whenever the other holds a miner's session. One task deciding from
//! the desired state alone, one operation at a time, leaves one sequence of commands to
//! reason about.
//!
//! A site without a [`PowerConfig`] runs neither: its heartbeats carry no sample, and DR
//! directives are logged and otherwise ignored.
//!
//! **Invariant:** no fleet operation is started except by the executor, and the executor never
//! abandons a command half-way except on shutdown: a dropped command can leave a LuxOS session
//! held on its miner, which would refuse the next command for minutes. A power plan's wake and
//! power targets are cut short *between* commands when a DR event comes on (no further wave,
//! no more waiting for confirmations): the event's miners must answer within seconds, and a
//! wake's waves and ramps last minutes.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use wattmesh_miner::fleet::FleetOptions;
#[cfg(doc)]
use wattmesh_proto::energy::{DrDirective, PowerSample};

pub(crate) mod backlog;
pub(crate) mod dr;
pub(crate) mod gpu;
pub(crate) mod plan;
pub(crate) mod sample;

/// The site's miners and meter, as one agent drives and reads them.
#[derive(Debug, Clone, PartialEq)]
pub struct PowerConfig {
    /// Every miner's API (`IP:PORT`); a DR event puts every one of them to sleep.
    pub miners: Vec<SocketAddr>,
    /// The site meter (Modbus TCP, unit 1); `None`: samples carry no meter reading.
    pub meter: Option<SocketAddr>,
    /// Time between two samples; each heartbeat carries the newest.
    pub sample_every: Duration,
    /// How the miners are talked to: parallelism, timeouts (the meter's too), what counts as
    /// asleep or hashing, and the waves of a wake.
    pub fleet: FleetOptions,
    /// The power model's GPU group this host's GPUs belong to; `None`: the plan's only one.
    pub gpu_group: Option<String>,
}

/// The wall clock in unix milliseconds, the clock of [`DrDirective`] and [`PowerSample`].
pub(crate) fn now_ms() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

/// How long from `now_ms` until wall-clock time `at_ms` (zero if past).
pub(crate) fn ms_until(at_ms: i64, now_ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(at_ms.saturating_sub(now_ms)).unwrap_or(0))
}

/// The runtime instant of wall-clock time `at_ms`, but no further than `cap` from now: the
/// caller looks at the wall clock again then, so a wall clock that was set meanwhile is seen
/// within `cap`.
pub(crate) fn instant_at(at_ms: i64, cap: Duration) -> Instant {
    // `now_ms` rounds down, so the instant is never before `at_ms` by the wall clock.
    Instant::now() + ms_until(at_ms, now_ms()).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_until_a_wall_clock_instant_is_never_negative() {
        let cases = [
            (1_000, 400, Duration::from_millis(600)),
            (1_000, 1_000, Duration::ZERO),
            (1_000, 5_000, Duration::ZERO),
            (i64::MAX, i64::MIN, Duration::from_millis(i64::MAX as u64)),
            (i64::MIN, i64::MAX, Duration::ZERO),
        ];
        for (at, now, want) in cases {
            assert_eq!(ms_until(at, now), want, "{at} from {now}");
        }
    }

    #[test]
    fn a_far_instant_is_capped() {
        let cap = Duration::from_secs(60);
        let before = Instant::now();
        let at = instant_at(i64::MAX, cap);
        assert!(at >= before + cap && at <= Instant::now() + cap);
    }
}
