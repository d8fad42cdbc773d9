//! A site's worth of miners (500, every model of FACTS.md's table) put to sleep at once: every
//! unit acknowledges and is confirmed by its own telemetry, the parallelism stays bounded as
//! the miners see it, and the meter's reading falls to 500 × the sleep draw.
//!
//! Alone in its test binary: 500 listeners and their connections are a lot of descriptors for
//! one process shared with other tests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use wattmesh_domain::mining::ASIC_MODELS;
use wattmesh_miner::Curtail;
use wattmesh_miner::fleet::{self, FleetOptions};
use wattmesh_miner::sim::{Phase, SimFleet, SimOptions, UnitSpec};

const UNITS: usize = 500;
const PARALLELISM: usize = 32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleeping_500_units() {
    let specs = (0..UNITS)
        .map(|i| {
            let mut spec = UnitSpec::new(ASIC_MODELS[i % ASIC_MODELS.len()]);
            // Some run at their lowest profile, below any power floor, and some are asleep
            // already: none may be skipped.
            match i % 10 {
                0 => spec.profile = "-16".into(),
                1 => spec.asleep = true,
                _ => {}
            }
            spec
        })
        .collect();
    // 40× time: an 8 s ramp-down takes 0.2 s.
    let options = SimOptions {
        speed: 40.0,
        ..SimOptions::default()
    };
    let sim = SimFleet::start_with(specs, options).await.unwrap();
    let sleep_w: f64 =
        ASIC_MODELS.iter().map(|m| m.sleep_w).sum::<f64>() / ASIC_MODELS.len() as f64;
    assert!(sim.total_watts() > UNITS as f64 * 1_000.0);

    let opts = FleetOptions {
        parallelism: PARALLELISM,
        timeout: Duration::from_secs(5),
        confirm_within: Duration::from_secs(20),
        poll_every: Duration::from_millis(100),
        ..FleetOptions::default()
    };
    let report = fleet::sleep(sim.addrs(), &opts).await.unwrap();

    let failed: Vec<String> = report.failed().map(|m| format!("{:?}", m.error)).collect();
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(report.all_confirmed());
    assert_eq!(report.miners.len(), UNITS);
    for (m, addr) in report.miners.iter().zip(sim.addrs()) {
        assert_eq!(m.addr, *addr, "reports keep the order given");
        let (ack, confirmed) = (m.acknowledged_at.unwrap(), m.confirmed_at.unwrap());
        assert!(confirmed >= ack);
    }
    // The target for a 500-miner site: every miner acknowledges within 10 s.
    let all_acked = report.all_acknowledged_after().unwrap();
    assert!(all_acked <= Duration::from_secs(10), "{all_acked:?}");

    let max = sim.max_concurrent_connections();
    assert!(
        (2..=PARALLELISM).contains(&max),
        "{max} connections at once"
    );
    for unit in sim.units() {
        assert_eq!(unit.phase, Phase::Asleep, "unit {}", unit.index);
        let commands: Vec<Curtail> = unit.curtails.iter().map(|(c, _)| *c).collect();
        assert_eq!(commands, [Curtail::Sleep], "unit {}", unit.index);
        assert!(!unit.session_held, "unit {} left locked", unit.index);
    }
    let total = sim.total_watts();
    assert!((total - UNITS as f64 * sleep_w).abs() < 1e-6, "{total} W");
    assert_eq!(sim.total_ths(), 0.0);
    sim.shutdown().await;
}
