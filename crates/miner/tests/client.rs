//! The client against the simulator on every command, LuxOS sessions (including one held by
//! someone else), and the simulator's answers to bad requests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wattmesh_domain::mining::{AsicModel, asic_model};
use wattmesh_miner::api::{self, ApiError, Request, code};
use wattmesh_miner::sim::{MAX_REQUEST_BYTES, Phase, SimFleet, UnitSpec, sim_code};
use wattmesh_miner::{Curtail, MinerClient, MinerError, SessionId, with_session};

const TIMEOUT: Duration = Duration::from_secs(5);

fn s19() -> AsicModel {
    *asic_model("Antminer S19 XP").unwrap()
}

async fn one_unit() -> (SimFleet, MinerClient) {
    let fleet = SimFleet::start(vec![UnitSpec::new(s19())]).await.unwrap();
    let client = MinerClient::new(fleet.addrs()[0], TIMEOUT);
    (fleet, client)
}

/// Every report command: its code, its section, and the figures a controller reads.
#[tokio::test]
async fn every_report_command_answers_in_shape() {
    let (fleet, client) = one_unit().await;
    let cases = [
        ("summary", code::SUMMARY, "SUMMARY"),
        ("stats", code::STATS, "STATS"),
        ("devs", code::DEVS, "DEVS"),
        ("pools", code::POOLS, "POOLS"),
        ("version", sim_code::VERSION, "VERSION"),
        ("power", sim_code::POWER, "POWER"),
        ("profiles", sim_code::PROFILES, "PROFILES"),
    ];
    for (command, expected_code, section) in cases {
        let reply = client.call_one(command, None).await.unwrap();
        assert_eq!(reply.status.code, expected_code, "{command}");
        assert!(reply.first(section).is_some(), "{command}: no {section}");
    }
    let m = s19();
    let summary = client.summary().await.unwrap();
    assert!((summary.ths_5s - m.nominal_ths).abs() < 1e-6, "{summary:?}");
    assert!((summary.ths_av - m.nominal_ths).abs() < 1e-6, "{summary:?}");
    assert_eq!(client.power().await.unwrap(), m.nominal_w);

    let version = client.version().await.unwrap();
    assert!(version.status.description.contains("LUXminer"));
    assert!(version.first("VERSION").unwrap().contains_key("LUXminer"));
    let stats = client.stats().await.unwrap();
    let stats = stats.sections["STATS"].as_array().unwrap();
    assert_eq!(stats[0]["Type"], Value::from(m.name));
    let rate: f64 = stats[1]["chain_rate1"].as_str().unwrap().parse().unwrap();
    assert!((rate * 3.0 / 1e3 - m.nominal_ths).abs() < 0.1, "{rate}");
    let devs = client.devs().await.unwrap();
    let devs = devs.sections["DEVS"].as_array().unwrap();
    assert_eq!(devs.len(), 3);
    assert!(devs.iter().all(|d| d["Status"] == "Alive"));
    let pools = client.pools().await.unwrap();
    assert_eq!(pools.first("POOLS").unwrap()["Status"], "Alive");
    fleet.shutdown().await;
}

#[tokio::test]
async fn joined_commands_answer_in_request_order() {
    let (fleet, client) = one_unit().await;
    let request = Request::new(&["power", "summary", "devs", "pools"], None).unwrap();
    let replies = client.call(&request).await.unwrap();
    let codes: Vec<i64> = replies.iter().map(|r| r.status.code).collect();
    assert_eq!(
        codes,
        [sim_code::POWER, code::SUMMARY, code::DEVS, code::POOLS]
    );
    assert_eq!(api::watts(&replies[0]).unwrap(), s19().nominal_w);

    // Refusals: as a whole for an unknown command, or a privileged one, in a join.
    let cases = [
        (vec!["summary", "bogus"], code::INVALID_COMMAND),
        (vec!["summary", "curtail"], code::ACCESS_DENIED),
    ];
    for (commands, expected) in cases {
        let request = Request::new(&commands, None).unwrap();
        let err = client.call(&request).await.unwrap_err();
        assert_eq!(err.code(), Some(expected), "{commands:?}: {err}");
    }
    let err = client.call_one("bogus", None).await.unwrap_err();
    assert_eq!(err.code(), Some(code::INVALID_COMMAND));
    assert!(err.to_string().contains(&client.addr.to_string()), "{err}");
    fleet.shutdown().await;
}

#[tokio::test]
async fn sessions_are_exclusive_and_gate_the_privileged_commands() {
    let (fleet, client) = one_unit().await;
    let someone_else = MinerClient::new(client.addr, TIMEOUT);
    let theirs = someone_else.logon().await.unwrap();
    assert!(fleet.unit(0).unwrap().session_held);

    // Held by someone else: a clear error with LuxOS's code, and their session is untouched.
    let err = client.logon().await.unwrap_err();
    assert!(matches!(err, MinerError::SessionHeld { .. }), "{err}");
    assert_eq!(err.code(), Some(code::SESSION_HELD));
    let err = with_session(&client, async |_| Ok(())).await.unwrap_err();
    assert!(matches!(err, MinerError::SessionHeld { .. }), "{err}");
    assert!(fleet.unit(0).unwrap().session_held);

    // Without the right session id, privileged commands are refused.
    let forged = SessionId::new("forged").unwrap();
    let refusals = [
        client.curtail(&forged, Curtail::Sleep).await,
        client.profileset(&forged, "-1").await,
        client.logoff(&forged).await,
        client.call_one("curtail", None).await.map(|_| ()),
    ];
    for refusal in refusals {
        assert_eq!(refusal.unwrap_err().code(), Some(code::ACCESS_DENIED));
    }
    assert_eq!(fleet.unit(0).unwrap().phase, Phase::Hashing);

    // The holder's session works; once it logs off, ours does.
    someone_else.curtail(&theirs, Curtail::Sleep).await.unwrap();
    assert_eq!(fleet.unit(0).unwrap().phase, Phase::RampingDown);
    someone_else.logoff(&theirs).await.unwrap();
    let ours = client.logon().await.unwrap();
    assert_ne!(ours, theirs);
    client.curtail(&ours, Curtail::Wakeup).await.unwrap();
    assert_eq!(fleet.unit(0).unwrap().phase, Phase::RampingUp);
    client.curtail(&ours, Curtail::Sleep).await.unwrap();
    assert_eq!(fleet.unit(0).unwrap().phase, Phase::RampingDown);
    let bad_word = client
        .call_one("curtail", Some(&format!("{ours},nap")))
        .await
        .unwrap_err();
    assert_eq!(bad_word.code(), Some(sim_code::BAD_PARAMETER));
    client.logoff(&ours).await.unwrap();
    assert!(!fleet.unit(0).unwrap().session_held);
    fleet.shutdown().await;
}

#[tokio::test]
async fn with_session_logs_off_whether_or_not_the_work_succeeded() {
    let (fleet, client) = one_unit().await;
    let m = s19();
    // Success: the profile changes the draw.
    with_session(&client, async |sid| client.profileset(sid, "-16").await)
        .await
        .unwrap();
    assert!(!fleet.unit(0).unwrap().session_held);
    assert_eq!(client.power().await.unwrap(), m.min_w.round());
    assert_eq!(fleet.unit(0).unwrap().profile, "-16");

    // Failure inside: the miner's error comes back, and the session is still closed.
    let err = with_session(&client, async |sid| client.profileset(sid, "turbo").await)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(sim_code::BAD_PARAMETER), "{err}");
    assert!(!fleet.unit(0).unwrap().session_held);

    // A profile name that would split LuxOS's parameter is refused before anything is sent.
    let err = with_session(&client, async |sid| {
        client.profileset(sid, "-1,sleep").await
    })
    .await
    .unwrap_err();
    assert!(matches!(err, MinerError::InvalidArgument { .. }), "{err}");
    assert!(!fleet.unit(0).unwrap().session_held);
    assert_eq!(fleet.unit(0).unwrap().profile, "-16");
    fleet.shutdown().await;
}

/// Sends raw bytes (half-closing if asked) and returns the simulator's reply.
async fn raw(addr: std::net::SocketAddr, bytes: &[u8], half_close: bool) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // A reply may come (and the connection close) before the whole request is written.
    let _ = stream.write_all(bytes).await;
    if half_close {
        let _ = stream.shutdown().await;
    }
    let mut reply = Vec::new();
    tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut reply))
        .await
        .unwrap()
        .unwrap();
    reply
}

/// Whatever arrives gets a reply with an error code, never a panic or a silent close.
#[tokio::test]
async fn bad_requests_get_error_replies() {
    let (fleet, client) = one_unit().await;
    let long = format!("{{\"command\":\"{}\"}}", "a".repeat(MAX_REQUEST_BYTES));
    let cases: &[(&str, &[u8], bool, i64)] = &[
        ("garbage", b"hello", false, sim_code::INVALID_JSON),
        ("not UTF-8", b"\xff\xfe\xfd", false, sim_code::INVALID_JSON),
        ("no command", b"{}", false, sim_code::INVALID_JSON),
        (
            "truncated, then EOF",
            b"{\"command\":\"sum",
            true,
            sim_code::INVALID_JSON,
        ),
        ("empty, then EOF", b"", true, sim_code::INVALID_JSON),
        (
            "uppercase",
            b"{\"command\":\"Summary\"}",
            false,
            code::INVALID_COMMAND,
        ),
        (
            "unknown",
            b"{\"command\":\"reboot\"}\0",
            false,
            code::INVALID_COMMAND,
        ),
        ("over-long", long.as_bytes(), false, sim_code::INVALID_JSON),
        (
            "NUL-terminated",
            b"{\"command\":\"summary\"}\0",
            false,
            code::SUMMARY,
        ),
        (
            "neither NUL nor EOF",
            b"{\"command\":\"pools\"}",
            false,
            code::POOLS,
        ),
    ];
    let any = Request::new(&["any"], None).unwrap();
    for (name, bytes, half_close, expected) in cases {
        let reply = raw(client.addr, bytes, *half_close).await;
        assert_eq!(reply.last(), Some(&0), "{name}: no NUL");
        let reply = api::decode_replies(&any, &reply).unwrap().remove(0);
        assert_eq!(reply.status.code, *expected, "{name}: {:?}", reply.status);
    }
    // Still serving.
    assert!(client.summary().await.is_ok());
    assert!(matches!(
        client.call_one("Bad Name", None).await,
        Err(MinerError::Api {
            source: ApiError::BadCommand(_),
            ..
        })
    ));
    fleet.shutdown().await;
}
