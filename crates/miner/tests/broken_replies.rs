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
