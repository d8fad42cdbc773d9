//! The simulator's physics on tokio's paused clock, through the in-process API (no sockets:
//! a paused clock jumps ahead while sockets are in flight), and its refusals of bad setups.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use tokio::time::advance;
use wattmesh_domain::mining::{AsicModel, asic_model};
use wattmesh_miner::api::{self, Request};
use wattmesh_miner::sim::{Phase, SimError, SimFleet, SimOptions, UnitSpec};

fn s19() -> AsicModel {
    *asic_model("Antminer S19 XP").unwrap()
}

fn request(command: &str, parameter: Option<&str>) -> Request {
    Request::new(&[command], parameter).unwrap()
}

fn watts(sim: &SimFleet) -> f64 {
    api::watts(&sim.call(0, &request("power", None)).unwrap()[0]).unwrap()
}

fn ths_5s(sim: &SimFleet) -> f64 {
    let reply = sim.call(0, &request("summary", None)).unwrap().remove(0);
    api::Summary::from_reply(&reply).unwrap().ths_5s
}

#[tokio::test(start_paused = true)]
async fn a_unit_sleeps_and_wakes_on_the_ramps_of_its_model() {
    let m = s19();
    let sim = SimFleet::start(vec![UnitSpec::new(m)]).await.unwrap();
    let logon = sim.call(0, &request("logon", None)).unwrap().remove(0);
    let sid = api::session_id(&logon).unwrap();
    let sleep = format!("{sid},sleep");
    assert!(
        sim.call(0, &request("curtail", Some(&sleep))).unwrap()[0]
            .status
            .letter
            .is_ok()
    );

    // (seconds to advance, phase, watts, hashing?) in order.
    let half_down = m.ramp_down_s / 2.0;
    let steps = [
        (
            half_down,
            Phase::RampingDown,
            ((m.nominal_w + m.sleep_w) / 2.0).round(),
            false,
        ),
        (half_down, Phase::Asleep, m.sleep_w, false),
        (600.0, Phase::Asleep, m.sleep_w, false),
    ];
    for (dt, phase, w, hashing) in steps {
        advance(Duration::from_secs_f64(dt)).await;
        assert_eq!(sim.unit(0).unwrap().phase, phase);
        assert_eq!(watts(&sim), w);
        assert_eq!(ths_5s(&sim) > 0.0, hashing);
    }
    assert_eq!(sim.total_watts(), m.sleep_w);

    // It wakes by itself (the field failure hold_asleep exists for), ramps and hashes.
    sim.wake_self(0).unwrap();
    let steps = [
        (m.ramp_up_s / 4.0, Phase::RampingUp, false),
        (m.ramp_up_s / 2.0, Phase::RampingUp, true),
        (m.ramp_up_s / 4.0, Phase::Hashing, true),
    ];
    for (dt, phase, hashing) in steps {
        advance(Duration::from_secs_f64(dt)).await;
        assert_eq!(sim.unit(0).unwrap().phase, phase);
        assert_eq!(ths_5s(&sim) > 0.0, hashing);
    }
    assert_eq!(sim.total_watts(), m.nominal_w);
    assert!((sim.total_ths() - m.nominal_ths).abs() < 1e-9);
    sim.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn sessions_time_out_and_speed_scales_time() {
    let m = s19();
    let options = SimOptions {
        speed: 10.0,
        ..SimOptions::default()
    };
    let sim = SimFleet::start_with(vec![UnitSpec::new(m)], options)
        .await
        .unwrap();
    let logon = || sim.call(0, &request("logon", None)).unwrap().remove(0);
    assert!(logon().status.letter.is_ok());
    assert_eq!(logon().status.code, api::code::SESSION_HELD);
    // 10× time: the simulator's session timeout passes in a tenth of it.
    advance(Duration::from_secs_f64(
        wattmesh_miner::sim::SESSION_IDLE_S / 10.0 + 1.0,
    ))
    .await;
    assert!(!sim.unit(0).unwrap().session_held);
    assert!(logon().status.letter.is_ok());

    // Heat: derated above 40 °C, shut down above 47 °C.
    sim.set_ambient(0, 44.0).unwrap();
    assert!(watts(&sim) < m.nominal_w && watts(&sim) >= m.min_w.round());
    sim.set_ambient(0, 50.0).unwrap();
    assert_eq!(sim.unit(0).unwrap().phase, Phase::Overheated);
    assert_eq!((watts(&sim), ths_5s(&sim)), (m.sleep_w, 0.0));
    sim.shutdown().await;
}

#[tokio::test]
async fn bad_setups_are_refused() {
    let m = s19();
    let bad_profile = UnitSpec {
        profile: "turbo".into(),
        ..UnitSpec::new(m)
    };
    let bad_ambient = UnitSpec {
        ambient_c: f64::NAN,
        ..UnitSpec::new(m)
    };
    let cases: Vec<(&str, Vec<UnitSpec>, SimOptions)> = vec![
        (
            "unknown profile",
            vec![UnitSpec::new(m), bad_profile],
            SimOptions::default(),
        ),
        ("NaN ambient", vec![bad_ambient], SimOptions::default()),
        (
            "speed 0",
            vec![UnitSpec::new(m)],
            SimOptions {
                speed: 0.0,
                ..SimOptions::default()
            },
        ),
        (
            "ports past 65535",
            vec![UnitSpec::new(m); 2],
            SimOptions {
                base_port: Some(u16::MAX),
                ..SimOptions::default()
            },
        ),
    ];
    for (name, specs, options) in cases {
        let err = SimFleet::start_with(specs, options).await.unwrap_err();
        assert!(
            matches!(err, SimError::BadSpec { .. } | SimError::BadOptions(_)),
            "{name}: {err}"
        );
    }
    let sim = SimFleet::start(vec![UnitSpec::new(m)]).await.unwrap();
    assert!(matches!(sim.unit(1), Err(SimError::NoSuchUnit(1))));
    assert!(matches!(sim.wake_self(5), Err(SimError::NoSuchUnit(5))));
    assert!(matches!(
        sim.set_ambient(0, f64::INFINITY),
        Err(SimError::BadSpec { .. })
    ));
    assert!(matches!(
        sim.call(2, &request("summary", None)),
        Err(SimError::NoSuchUnit(2))
    ));
    sim.shutdown().await;
}
