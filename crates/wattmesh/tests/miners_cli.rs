//! `wattmesh miners` as an operator runs it: the real binary drives simulated miners (`wattmesh
//! miners sim`, on their own ports) over the CGMiner/LuxOS protocol: status, sleep confirmed by
//! each miner's telemetry, and clear failures for miners that do not answer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};

const UNITS: u16 = 20;

fn wattmesh(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wattmesh"))
        .args(args)
        .output()
        .expect("running wattmesh")
}

/// A running `wattmesh miners sim`, killed on drop.
struct Sim {
    child: Child,
    range: String,
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the simulator on a run of free ports (tries a few bases: another test may hold one).
fn start_sim() -> Sim {
    for attempt in 0..20u32 {
        let base = 20_000 + (std::process::id() % 1000 * 40 + attempt * 1_997) % 40_000;
        let base = u16::try_from(base).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_wattmesh"))
            .args([
                "miners",
                "sim",
                "--units",
                &UNITS.to_string(),
                "--base-port",
                &base.to_string(),
                "--meter-listen",
                "127.0.0.1:0",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        match lines.next() {
            Some(Ok(first)) if first.contains(" on 127.0.0.1:") => {
                let range = first.rsplit(' ').next().unwrap().to_owned();
                assert_eq!(range, format!("127.0.0.1:{base}-{}", base + UNITS - 1));
                assert!(
                    lines
                        .next()
                        .unwrap()
                        .unwrap()
                        .starts_with("meter 127.0.0.1:")
                );
                // Keep reading so the child never blocks on a full pipe.
                std::thread::spawn(move || for _ in lines {});
                return Sim { child, range };
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
    panic!("could not start the simulator on any run of free ports");
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn status_then_sleep_confirmed_by_every_miner() {
    let sim = start_sim();
    let status = json(&wattmesh(&[
        "miners", "status", "--miners", &sim.range, "--json",
    ]));
    let rows = status.as_array().unwrap();
    assert_eq!(rows.len(), usize::from(UNITS));
    assert!(rows.iter().all(|r| r["state"] == "hashing"), "{status}");

    let slept = json(&wattmesh(&[
        "miners",
        "sleep",
        "--miners",
        &sim.range,
        "--parallelism",
        "8",
        "--confirm-within-s",
        "60",
        "--json",
    ]));
    let rows = slept.as_array().unwrap();
    assert_eq!(rows.len(), usize::from(UNITS));
    for r in rows {
        assert!(r["error"].is_null(), "{r}");
        assert!(
            r["confirmed_after_s"].as_f64().unwrap() >= r["acknowledged_after_s"].as_f64().unwrap()
        );
    }

    let status = json(&wattmesh(&[
        "miners", "status", "--miners", &sim.range, "--json",
    ]));
    assert!(
        status
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["state"] == "asleep"),
        "{status}"
    );
}

#[test]
fn miners_that_do_not_answer_fail_the_command_and_are_named() {
    // A port nothing listens on: bind one, then let it go.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let out = wattmesh(&["miners", "status", "--miners", &addr, "--timeout-s", "2"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(&addr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("did not answer"));

    let out = wattmesh(&["miners", "sleep", "--miners", &addr, "--timeout-s", "2"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("did not sleep"));

    for bad in ["nowhere", "127.0.0.1:9-1", "127.0.0.1:port"] {
        let out = wattmesh(&["miners", "status", "--miners", bad]);
        assert!(!out.status.success(), "{bad}");
    }
    // Durations that would panic `Duration::from_secs_f64`.
    for bad in ["-1", "NaN", "1e300", "0"] {
        let flag = format!("--timeout-s={bad}");
        let out = wattmesh(&["miners", "status", "--miners", &addr, &flag]);
        assert!(!out.status.success(), "{bad}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("--timeout-s must be"),
            "{bad}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = wattmesh(&["miners", "sim", "--model", "Antminer S9"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("known: Antminer S19 XP"));
}

#[test]
fn agent_power_flags_that_cannot_take_effect_are_refused_before_it_starts() {
    // No control plane listens at port 9: each is refused before anything is called.
    let base = [
        "agent",
        "--control-url",
        "http://127.0.0.1:9",
        "--site",
        "s",
        "--region",
        "r",
        "--bootstrap-token",
        "x",
    ];
    for (extra, says) in [
        (
            &["--gpu-group", "h100"][..],
            "--gpu-group needs --meter or --miners",
        ),
        (
            &["--meter", "127.0.0.1:1502", "--sample-every-s", "0"][..],
            "--sample-every-s",
        ),
    ] {
        let out = wattmesh(&[&base[..], extra].concat());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?} was accepted");
        assert!(stderr.contains(says), "{extra:?}: {stderr}");
    }
}
