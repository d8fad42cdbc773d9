//! `fleet::set_power` against the simulator over TCP: miners end at the highest profile at or
//! below the target, confirmed by their own draw; a sleeping miner is given the profile but
//! not woken; one miner's failure stays in its own report; a bad target contacts no one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use wattmesh_domain::mining::{AsicModel, asic_model};
use wattmesh_miner::fleet::{self, FleetError, FleetOptions, OpError, PowerReport};
use wattmesh_miner::sim::{Phase, SimFleet, SimOptions, UnitSpec, unit};
use wattmesh_miner::{MinerClient, MinerError};

/// 100× time: a ramp up of the S19 XP's whole range takes 1.2 s.
const SPEED: f64 = 100.0;

fn s19() -> AsicModel {
    *asic_model("Antminer S19 XP").unwrap()
}

/// The watts of the simulated S19 XP's profile `name`, as its `profiles` lists them (rounded).
fn profile_w(name: &str) -> f64 {
    unit::profiles(&s19())
        .into_iter()
        .find(|p| p.name == name)
        .unwrap()
        .watts
        .round()
}

/// Halfway between the profiles `-6` and `-5`: the answer is `-6`.
fn between_steps() -> f64 {
    (profile_w("-6") + profile_w("-5")) / 2.0
}

/// Units `0..n` at `profile`, asleep where `asleep` says.
async fn sim(n: usize, profile: impl Fn(usize) -> &'static str, asleep: &[usize]) -> SimFleet {
    let specs = (0..n)
        .map(|i| UnitSpec {
            profile: profile(i).into(),
            asleep: asleep.contains(&i),
            ..UnitSpec::new(s19())
        })
        .collect();
    let options = SimOptions {
        speed: SPEED,
        ..SimOptions::default()
    };
    SimFleet::start_with(specs, options).await.unwrap()
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

/// Every miner but `except` took `profile` and confirmed it by its draw, and its unit is
/// hashing at it with no session left open.
fn assert_set(sim: &SimFleet, report: &PowerReport, profile: &str, except: &[usize]) {
    let want_w = profile_w(profile);
    for (i, m) in report.miners.iter().enumerate() {
        if except.contains(&i) {
            continue;
        }
        assert!(m.error.is_none(), "miner {i}: {m:?}");
        assert_eq!(m.profile.as_deref(), Some(profile), "miner {i}");
        assert_eq!(m.profile_w, Some(want_w), "miner {i}");
        assert!(!m.asleep, "miner {i}");
        assert!(m.confirmed_at.unwrap() >= m.acknowledged_at.unwrap());
        assert!((m.last_w.unwrap() - want_w).abs() <= want_w * 0.05, "{m:?}");
        let u = sim.unit(i).unwrap();
        assert_eq!(u.profile, profile, "unit {i}");
        assert!(!u.session_held, "unit {i}");
    }
}

/// Half the units ramp up to the target, half drop to it at once.
#[tokio::test]
async fn a_target_between_profiles_ends_at_the_one_below() {
    let sim = sim(20, |i| if i % 2 == 0 { "-16" } else { "+4" }, &[]).await;
    let target = between_steps();
    // Spawned: the operation's future must be `Send` for the planner to run it.
    let addrs = sim.addrs().to_vec();
    let report = tokio::spawn(async move { fleet::set_power(&addrs, target, &opts()).await })
        .await
        .unwrap()
        .unwrap();
    assert!(
        report.all_confirmed(),
        "{:?}",
        report.failed().collect::<Vec<_>>()
    );
    assert_set(&sim, &report, "-6", &[]);
    assert!(report.miners.iter().all(|m| !m.clamped));
    // Confirmed within 5 %: a unit ramping up may not have settled yet, but none was curtailed.
    for u in sim.units() {
        assert!(
            matches!(u.phase, Phase::Hashing | Phase::RampingUp),
            "unit {}: {:?}",
            u.index,
            u.phase
        );
        assert!(u.curtails.is_empty(), "unit {}", u.index);
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn a_target_below_every_profile_clamps_to_the_lowest() {
    let sim = sim(4, |_| "default", &[]).await;
    let report = fleet::set_power(sim.addrs(), 100.0, &opts()).await.unwrap();
    assert!(report.all_confirmed(), "{report:?}");
    assert_set(&sim, &report, "-16", &[]);
    assert!(report.miners.iter().all(|m| m.clamped));
    sim.shutdown().await;
}

/// A sleeping unit gets the profile, to wake at the target, but stays asleep.
#[tokio::test]
async fn a_sleeping_miner_is_reported_asleep_and_not_woken() {
    let sim = sim(5, |_| "default", &[1, 3]).await;
    let report = fleet::set_power(sim.addrs(), between_steps(), &opts())
        .await
        .unwrap();
    assert!(report.all_confirmed(), "{report:?}");
    assert_set(&sim, &report, "-6", &[1, 3]);
    for i in [1, 3] {
        let m = &report.miners[i];
        assert!(m.asleep && m.error.is_none(), "{m:?}");
        assert!(
            m.acknowledged_at.is_some() && m.confirmed_at.is_none(),
            "{m:?}"
        );
        let u = sim.unit(i).unwrap();
        assert_eq!(u.phase, Phase::Asleep, "unit {i}");
        assert_eq!(u.profile, "-6", "unit {i}");
        assert!(u.curtails.is_empty() && !u.session_held, "unit {i}");
    }
    assert_eq!(report.failed().count(), 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_miner_held_by_another_session_fails_alone() {
    let sim = sim(6, |_| "default", &[]).await;
    let holder = MinerClient::new(sim.addrs()[2], Duration::from_secs(5));
    let held = holder.logon().await.unwrap();
    let report = fleet::set_power(sim.addrs(), between_steps(), &opts())
        .await
        .unwrap();
    assert!(!report.all_confirmed());
    let m = &report.miners[2];
    assert!(
        matches!(
            m.error,
            Some(OpError::Miner(MinerError::SessionHeld { .. }))
        ),
        "{m:?}"
    );
    assert!(m.acknowledged_at.is_none() && m.confirmed_at.is_none());
    assert_set(&sim, &report, "-6", &[2]);
    // Untouched, and the holder's session neither stolen nor closed.
    let u = sim.unit(2).unwrap();
    assert_eq!(u.profile, "default");
    assert!(u.session_held);
    holder.logoff(&held).await.unwrap();
    sim.shutdown().await;
}

#[tokio::test]
async fn a_miner_that_does_not_answer_fails_alone() {
    let sim = sim(4, |_| "default", &[]).await;
    // A port nothing listens on any more.
    let closed: SocketAddr = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    let mut addrs = sim.addrs().to_vec();
    addrs.insert(2, closed);
    let report = fleet::set_power(&addrs, between_steps(), &opts())
        .await
        .unwrap();
    let failed: Vec<SocketAddr> = report.failed().map(|m| m.addr).collect();
    assert_eq!(failed, [closed]);
    let m = &report.miners[2];
    assert!(
        matches!(m.error, Some(OpError::Miner(MinerError::Connect { .. }))),
        "{m:?}"
    );
    assert!(m.profile.is_none() && m.acknowledged_at.is_none());
    for (i, m) in report.miners.iter().enumerate().filter(|(i, _)| *i != 2) {
        assert!(m.confirmed_at.is_some(), "miner {i}: {m:?}");
        assert_eq!(m.profile.as_deref(), Some("-6"));
    }
    for u in sim.units() {
        assert_eq!(u.profile, "-6", "unit {}", u.index);
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn a_bad_target_is_refused_before_any_miner_is_contacted() {
    let sim = sim(2, |_| "default", &[]).await;
    for target in [f64::NAN, -1.0, 0.0, -0.0, f64::INFINITY, f64::NEG_INFINITY] {
        let result = fleet::set_power(sim.addrs(), target, &opts()).await;
        assert!(
            matches!(result, Err(FleetError::BadTarget(t)) if t.to_bits() == target.to_bits()),
            "{target}: {result:?}"
        );
    }
    // Bad options are refused the same way.
    let bad = FleetOptions {
        parallelism: 0,
        ..opts()
    };
    let result = fleet::set_power(sim.addrs(), 2500.0, &bad).await;
    assert!(
        matches!(result, Err(FleetError::BadOptions(_))),
        "{result:?}"
    );
    assert_eq!(sim.max_concurrent_connections(), 0);
    for u in sim.units() {
        assert_eq!(u.profile, "default");
    }
    sim.shutdown().await;
}
