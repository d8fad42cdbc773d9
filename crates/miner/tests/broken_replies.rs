//! The client against a fake miner that misbehaves on raw TCP: every broken reply is a clear
//! error naming the miner, never a panic, a hang or a guess.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use wattmesh_miner::api::{self, ApiError};
use wattmesh_miner::{MinerClient, MinerError};

const SUMMARY: &[u8] = b"{\"STATUS\":[{\"STATUS\":\"S\",\"When\":1700000000,\"Code\":11,\"Msg\":\"Summary\",\"Description\":\"cgminer 4.11.1\"}],\"SUMMARY\":[{\"Elapsed\":3600,\"MHS av\":140000000.0,\"MHS 5s\":139500000.0}],\"id\":1}";

/// What the fake miner does once it has read the request.
#[derive(Clone)]
enum Behaviour {
    /// Writes these bytes and closes.
    Say(Vec<u8>),
    /// Never answers (keeps the connection open).
    Hang,
}

/// A one-connection fake miner.
async fn fake(behaviour: Behaviour) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut request = [0u8; 1024];
        let _ = stream.read(&mut request).await;
        match behaviour {
            Behaviour::Say(bytes) => {
                // The client may hang up first (over-long replies): not this side's problem.
                let _ = stream.write_all(&bytes).await;
            }
            Behaviour::Hang => std::future::pending::<()>().await,
        }
    });
    addr
}

fn with_nul(bytes: &[u8]) -> Vec<u8> {
    let mut v = bytes.to_vec();
    v.push(0);
    v
}

#[derive(Debug)]
enum Expect {
    Summary,
    Malformed,
    TooLong,
    Timeout,
    Refused(i64),
}

#[tokio::test]
async fn broken_replies_are_clear_errors() {
    let over_long = vec![b' '; api::MAX_REPLY_BYTES + 1];
    let mut trailing = with_nul(SUMMARY);
    trailing.extend_from_slice(b"trailing junk after the NUL");
    let cases: Vec<(&str, Behaviour, Expect)> = vec![
        (
            "well formed",
            Behaviour::Say(with_nul(SUMMARY)),
            Expect::Summary,
        ),
        // Lenient on purpose: firmware that forgets the NUL but sends whole JSON is common.
        (
            "whole JSON, no NUL, then EOF",
            Behaviour::Say(SUMMARY.to_vec()),
            Expect::Summary,
        ),
        (
            "bytes after the NUL are not read",
            Behaviour::Say(trailing),
            Expect::Summary,
        ),
        (
            "truncated, no NUL, then EOF",
            Behaviour::Say(SUMMARY[..60].to_vec()),
            Expect::Malformed,
        ),
        (
            "truncated, then NUL",
            Behaviour::Say(with_nul(&SUMMARY[..60])),
            Expect::Malformed,
        ),
        (
            "garbage",
            Behaviour::Say(b"\x16\x03\x01 not json at all".to_vec()),
            Expect::Malformed,
        ),
        (
            "closed without a word",
            Behaviour::Say(Vec::new()),
            Expect::Malformed,
        ),
        (
            "a reply without STATUS",
            Behaviour::Say(with_nul(b"{\"SUMMARY\":[]}")),
            Expect::Malformed,
        ),
        (
            "a refusal",
            Behaviour::Say(with_nul(
                b"{\"STATUS\":[{\"STATUS\":\"E\",\"Code\":45,\"Msg\":\"Access denied\"}],\"id\":1}",
            )),
            Expect::Refused(45),
        ),
        ("over-long", Behaviour::Say(over_long), Expect::TooLong),
        ("no answer", Behaviour::Hang, Expect::Timeout),
    ];
    for (name, behaviour, expect) in cases {
        let addr = fake(behaviour).await;
        let client = MinerClient::new(addr, Duration::from_millis(300));
        let result = client.summary().await;
        let ok = match (&expect, &result) {
            (Expect::Summary, Ok(s)) => s.ths_5s == 139.5,
            (
                Expect::Malformed,
                Err(MinerError::Api {
                    source: ApiError::Malformed(_),
                    ..
                }),
            ) => true,
            (Expect::TooLong, Err(MinerError::TooLong { .. })) => true,
            (Expect::Timeout, Err(MinerError::Timeout { .. })) => true,
            (Expect::Refused(code), Err(e)) => e.code() == Some(*code),
            _ => false,
        };
        assert!(ok, "{name}: expected {expect:?}, got {result:?}");
        if let Err(e) = result {
            assert_eq!(e.addr(), addr, "{name}");
            assert!(e.to_string().contains(&addr.to_string()), "{name}: {e}");
        }
    }
}

#[tokio::test]
async fn a_closed_port_is_a_connect_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let err = MinerClient::new(addr, Duration::from_secs(5))
        .summary()
        .await
        .unwrap_err();
    assert!(matches!(err, MinerError::Connect { .. }), "{err}");
}

/// `power+summary` in one exchange: each part read as its own command would be, and a part
/// refused, missing or unreadable is an error, never a reading with a gap.
#[tokio::test]
async fn joined_power_and_summary_is_read_whole_or_not_at_all() {
    let power_ok =
        r#"[{"STATUS":[{"STATUS":"S","Code":300,"Msg":"Power"}],"POWER":[{"Watts":3210}],"id":1}]"#;
    let summary_ok =
        r#"[{"STATUS":[{"STATUS":"S","Code":11}],"SUMMARY":[{"MHS av":1e8,"MHS 5s":2e8}],"id":1}]"#;
    let refused = r#"[{"STATUS":[{"STATUS":"E","Code":45,"Msg":"Access denied"}],"id":1}]"#;
    let no_watts = r#"[{"STATUS":[{"STATUS":"S","Code":300}],"POWER":[{}],"id":1}]"#;
    let joined = |power: &str, summary: &str| {
        with_nul(format!(r#"{{"power":{power},"summary":{summary},"id":1}}"#).as_bytes())
    };
    let addr = fake(Behaviour::Say(joined(power_ok, summary_ok))).await;
    let (watts, summary) = MinerClient::new(addr, Duration::from_secs(2))
        .power_and_summary()
        .await
        .unwrap();
    assert_eq!(watts, 3210.0);
    assert_eq!(summary.ths_5s, 200.0);
    let broken = [
        joined(refused, summary_ok),
        joined(power_ok, refused),
        joined(no_watts, summary_ok),
        with_nul(format!(r#"{{"power":{power_ok},"id":1}}"#).as_bytes()),
        with_nul(SUMMARY),
    ];
    for bytes in broken {
        let addr = fake(Behaviour::Say(bytes.clone())).await;
        let got = MinerClient::new(addr, Duration::from_secs(2))
            .power_and_summary()
            .await;
        assert!(
            matches!(got, Err(MinerError::Api { .. })),
            "{}: {got:?}",
            String::from_utf8_lossy(&bytes)
        );
    }
}
