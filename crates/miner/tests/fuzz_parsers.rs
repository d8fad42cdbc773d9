//! The protocol parsers against arbitrary and mutated input (property-based fuzzing that runs
//! in every test run): a miner's reply, a request to the simulator, a meter's registers. None
//! may panic; a mutated valid reply is either still read the same way or refused with an
//! error.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use wattmesh_miner::api::{self, Request, Summary};
use wattmesh_miner::meter::decode_reading;

const SUMMARY: &[u8] = b"{\"STATUS\":[{\"STATUS\":\"S\",\"When\":1700000000,\"Code\":11,\"Msg\":\"Summary\",\"Description\":\"cgminer 4.11.1\"}],\"SUMMARY\":[{\"Elapsed\":3600,\"MHS av\":140000000.0,\"MHS 5s\":139500000.0,\"Accepted\":1200,\"Rejected\":3,\"Hardware Errors\":5}],\"id\":1}\0";
const JOINED: &[u8] = b"{\"power\":[{\"STATUS\":[{\"STATUS\":\"S\",\"Code\":300,\"Msg\":\"Power\"}],\"POWER\":[{\"Watts\":3210}],\"id\":1}],\"summary\":[{\"STATUS\":[{\"STATUS\":\"S\",\"Code\":11}],\"SUMMARY\":[{\"MHS av\":1e8,\"MHS 5s\":1e8}],\"id\":1}],\"id\":1}\0";

/// Reads `bytes` as the reply to `request` the way the client does, to the typed values.
fn read_everything(request: &Request, bytes: &[u8]) {
    if let Ok(replies) = api::decode_replies(request, bytes) {
        for reply in &replies {
            let _ = Summary::from_reply(reply);
            let _ = api::watts(reply);
            let _ = api::session_id(reply);
            let _ = reply.clone().into_ok("x");
        }
    }
}

/// A valid reply with some bytes changed, cut or added.
fn mutated(base: &'static [u8]) -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        any::<prop::sample::Index>(),
        prop::collection::vec(any::<u8>(), 0..8),
    )
        .prop_map(move |(flips, cut, tail)| {
            let mut bytes = base.to_vec();
            for (at, value) in flips {
                let i = at.index(bytes.len());
                bytes[i] = value;
            }
            bytes.truncate(cut.index(bytes.len() + 1));
            bytes.extend(tail);
            bytes
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10_000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_replies_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        read_everything(&Request::new(&["summary"], None).unwrap(), &bytes);
        read_everything(&Request::new(&["power", "summary"], None).unwrap(), &bytes);
    }

    #[test]
    fn json_shaped_replies_never_panic(text in r#"[\{\}\[\]":,0-9a-zA-Z .\-+eE\\]{0,200}"#) {
        read_everything(&Request::new(&["summary"], None).unwrap(), text.as_bytes());
        read_everything(&Request::new(&["power", "summary"], None).unwrap(), text.as_bytes());
    }

    #[test]
    fn mutated_replies_are_read_or_refused(bytes in mutated(SUMMARY), joined in mutated(JOINED)) {
        read_everything(&Request::new(&["summary"], None).unwrap(), &bytes);
        read_everything(&Request::new(&["power", "summary"], None).unwrap(), &joined);
    }

    #[test]
    fn arbitrary_requests_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(request) = Request::decode(&bytes) {
            // What decodes names only valid commands, and encodes back to a request.
            let again = Request::decode(&request.encode()).unwrap();
            prop_assert_eq!(again, request);
        }
    }

    #[test]
    fn arbitrary_meter_registers_never_panic(words in prop::collection::vec(any::<u16>(), 0..24)) {
        if let Ok(reading) = decode_reading(&words) {
            prop_assert!(reading.active_power_kw.is_finite() && reading.active_power_kw >= 0.0);
            prop_assert!(reading.energy_kwh.is_finite() && reading.energy_kwh >= 0.0);
        }
    }
}
