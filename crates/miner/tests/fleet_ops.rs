//! Fleet operations on small simulated fleets: staggered wake, hold-asleep against miners that
//! wake by themselves, and the failures one miner must not spread to the others.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wattmesh_domain::mining::{AsicModel, asic_model};
use wattmesh_miner::fleet::{self, FleetError, FleetOptions, OpError};
use wattmesh_miner::sim::{Fault, Phase, SimFleet, SimOptions, UnitSpec};
use wattmesh_miner::{Curtail, MinerClient, MinerError};

/// 100× time: ramp-down 0.08 s, ramp-up 1.2 s (hashing from 0.6 s).
const SPEED: f64 = 100.0;

fn s19() -> AsicModel {
    *asic_model("Antminer S19 XP").unwrap()
}

async fn sim(units: usize, asleep: bool) -> SimFleet {
    sim_at(units, asleep, SPEED).await
}

async fn sim_at(units: usize, asleep: bool, speed: f64) -> SimFleet {
    let spec = UnitSpec {
        asleep,
        ..UnitSpec::new(s19())
    };
    let options = SimOptions {
        speed,
        ..SimOptions::default()
    };
    SimFleet::start_with(vec![spec; units], options)
        .await
        .unwrap()
}

fn opts() -> FleetOptions {
    FleetOptions {
        parallelism: 4,
        timeout: Duration::from_secs(1),
        confirm_within: Duration::from_secs(10),
        poll_every: Duration::from_millis(50),
        ..FleetOptions::default()
    }
}

/// Waits until `ready` holds, checking every 20 ms, for at most 10 s.
async fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn wake_goes_in_waves() {
    let sim = sim(10, true).await;
    let opts = FleetOptions {
        wave_size: 4,
        wave_gap: Duration::from_millis(300),
        ..opts()
    };
    let report = fleet::wake(sim.addrs(), &opts).await.unwrap();
    assert!(
        report.all_confirmed(),
        "{:?}",
        report.failed().collect::<Vec<_>>()
    );
    for unit in sim.units() {
        let [(Curtail::Wakeup, at)] = unit.curtails[..] else {
            panic!("unit {}: {:?}", unit.index, unit.curtails);
        };
        // Miners 0–3 are the first wave, 4–7 the second, 8–9 the third: none early.
        let wave = unit.index / opts.wave_size;
        let wave_start = report.started + opts.wave_gap * wave as u32;
        assert!(
            at >= wave_start,
            "unit {} woke {:?} early",
            unit.index,
            wave_start - at
        );
        assert!(
            matches!(unit.phase, Phase::RampingUp | Phase::Hashing),
            "{:?}",
            unit.phase
        );
        assert!(unit.ths > 0.0);
    }
    for m in &report.miners {
        assert!(m.confirmed_at.unwrap() >= m.acknowledged_at.unwrap());
        assert!(m.last.unwrap().ths_5s > opts.idle_max_ths);
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn an_interrupted_wake_starts_no_more_waves_and_says_who_was_left() {
    let sim = sim(10, true).await;
    let opts = FleetOptions {
        wave_size: 4,
        wave_gap: Duration::from_secs(30),
        ..opts()
    };
    let interrupt = CancellationToken::new();
    let stop = interrupt.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop.cancel();
    });
    let started = Instant::now();
    let report = fleet::wake_unless(sim.addrs(), &opts, &interrupt)
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "it waited for the next wave: {:?}",
        started.elapsed()
    );
    // The first wave was commanded and finished; the other six never were.
    let commanded: Vec<usize> = sim
        .units()
        .iter()
        .filter(|u| !u.curtails.is_empty())
        .map(|u| u.index)
        .collect();
    assert_eq!(commanded, [0, 1, 2, 3]);
    for m in &report.miners[4..] {
        assert!(m.acknowledged_at.is_none() && m.error.is_none(), "{m:?}");
    }
    for m in &report.miners[..4] {
        assert!(m.acknowledged_at.is_some(), "{m:?}");
        // Confirmed before the interruption, or said to be cut short by it.
        assert!(
            m.confirmed_at.is_some() || matches!(m.error, Some(OpError::Interrupted { .. })),
            "{m:?}"
        );
    }
    assert!(!report.all_confirmed());
    sim.shutdown().await;
}

#[tokio::test]
async fn hold_asleep_puts_back_a_unit_that_woke_by_itself() {
    let sim = sim(6, true).await;
    let stop = CancellationToken::new();
    let until = Instant::now() + Duration::from_secs(30);
    let opts = FleetOptions {
        confirm_within: Duration::from_secs(1),
        ..opts()
    };
    let drive = async {
        sim.wake_self(2).unwrap();
        assert_eq!(sim.unit(2).unwrap().phase, Phase::RampingUp);
        wait_for("the re-sleep", || !sim.unit(2).unwrap().curtails.is_empty()).await;
        wait_for("unit 2 asleep", || {
            sim.unit(2).unwrap().phase == Phase::Asleep
        })
        .await;
        stop.cancel();
    };
    let (report, ()) = tokio::join!(fleet::hold_asleep(sim.addrs(), &opts, until, &stop), drive);
    let report = report.unwrap();
    assert_eq!(report.reslept(), [sim.addrs()[2]]);
    assert_eq!(report.miners[2].reslept_at.len(), 1);
    for unit in sim.units() {
        assert_eq!(unit.phase, Phase::Asleep, "unit {}", unit.index);
        let expected: &[Curtail] = if unit.index == 2 {
            &[Curtail::Sleep]
        } else {
            &[]
        };
        let got: Vec<Curtail> = unit.curtails.iter().map(|(c, _)| *c).collect();
        assert_eq!(got, expected, "unit {}", unit.index);
        assert!(!unit.session_held);
    }
    assert!(report.miners.iter().all(|m| m.error.is_none()));
    sim.shutdown().await;
}

/// A hung miner, one that hangs up, and one whose session someone else holds each get their
/// own error; every other miner is slept and confirmed.
#[tokio::test]
async fn one_miners_failure_stays_in_its_report() {
    let sim = sim(12, false).await;
    sim.set_fault(3, Fault::Silent).unwrap();
    sim.set_fault(7, Fault::Hangup).unwrap();
    let holder = MinerClient::new(sim.addrs()[9], Duration::from_secs(5));
    let held = holder.logon().await.unwrap();

    let report = fleet::sleep(sim.addrs(), &opts()).await.unwrap();
    for (i, m) in report.miners.iter().enumerate() {
        let ok = match (i, &m.error) {
            (3, Some(OpError::Miner(MinerError::Timeout { .. }))) => true,
            // Closed before or after reading the request: a reset, or an empty reply.
            (7, Some(OpError::Miner(MinerError::Api { .. } | MinerError::Io { .. }))) => true,
            (9, Some(OpError::Miner(MinerError::SessionHeld { .. }))) => true,
            (3 | 7 | 9, _) => false,
            (_, None) => m.confirmed_at.is_some(),
            (_, Some(_)) => false,
        };
        assert!(ok, "miner {i}: {m:?}");
        assert_eq!(
            m.acknowledged_at.is_some(),
            ![3, 7, 9].contains(&i),
            "miner {i}"
        );
    }
    // The failed ones are still hashing; the holder's session was neither stolen nor closed.
    for i in [3, 7, 9] {
        assert_eq!(sim.unit(i).unwrap().phase, Phase::Hashing, "unit {i}");
    }
    assert!(sim.unit(9).unwrap().session_held);
    holder.logoff(&held).await.unwrap();
    sim.shutdown().await;
}

/// A miner that acknowledges but never shows the new state is reported, not assumed.
#[tokio::test]
async fn an_acknowledged_but_unconfirmed_miner_is_an_error() {
    // 1000× time: the healthy units hash 60 ms after their wakeup.
    let sim = sim_at(3, true, 1000.0).await;
    // Above the shutdown temperature the firmware keeps the boards off: the wakeup is
    // acknowledged and never hashes.
    sim.set_ambient(1, 50.0).unwrap();
    let opts = FleetOptions {
        confirm_within: Duration::from_millis(1500),
        ..opts()
    };
    let report = fleet::wake(sim.addrs(), &opts).await.unwrap();
    let m = &report.miners[1];
    assert!(m.acknowledged_at.is_some() && m.confirmed_at.is_none());
    let Some(OpError::NotConfirmed { last, .. }) = &m.error else {
        panic!("{m:?}");
    };
    assert!(last.contains("W"), "{last}");
    assert_eq!(sim.unit(1).unwrap().phase, Phase::Overheated);
    assert!(report.miners[0].confirmed_at.is_some() && report.miners[2].confirmed_at.is_some());
    sim.shutdown().await;
}

#[tokio::test]
async fn bad_options_are_refused_before_anything_is_sent() {
    let sim = sim(1, false).await;
    let cases = [
        FleetOptions {
            parallelism: 0,
            ..opts()
        },
        FleetOptions {
            wave_size: 0,
            ..opts()
        },
        FleetOptions {
            timeout: Duration::ZERO,
            ..opts()
        },
        FleetOptions {
            poll_every: Duration::ZERO,
            ..opts()
        },
        FleetOptions {
            asleep_max_w: f64::NAN,
            ..opts()
        },
        FleetOptions {
            idle_max_ths: -1.0,
            ..opts()
        },
    ];
    for bad in cases {
        let result = fleet::sleep(sim.addrs(), &bad).await;
        assert!(matches!(result, Err(FleetError::BadOptions(_))), "{bad:?}");
        let result = fleet::wake(sim.addrs(), &bad).await;
        assert!(matches!(result, Err(FleetError::BadOptions(_))), "{bad:?}");
    }
    assert!(sim.unit(0).unwrap().curtails.is_empty());
    sim.shutdown().await;
}
