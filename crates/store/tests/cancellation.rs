//! Callers give up: an HTTP handler is dropped when its client hangs up, a heartbeat times out.
//! A store call cancelled at any await point must leave no transaction open on a pooled
//! connection — one left open holds SQLite's write lock, so every later writer fails with
//! "database is locked", and every later write on that connection with "begin_with at non-zero
//! transaction depth" (what bench/dr at 40 sites hit).

// Helpers outside `#[test]` fns panic on setup failures too; that is what a test wants.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use wattmesh_proto::api::SiteSpec;
use wattmesh_proto::energy::{MinerCounts, PowerSample};
use wattmesh_store::{SqliteStore, Store};

fn sample(at_ms: i64) -> PowerSample {
    PowerSample {
        at_ms,
        meter_kw: Some(100.0),
        meter_kwh: Some(1.0),
        meter_error: None,
        miners: MinerCounts::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_cancelled_at_any_point_leave_no_transaction_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("wattmesh.db"))
        .await
        .unwrap();
    store.create_region("us").await.unwrap();
    store
        .create_site(&SiteSpec {
            name: "a".into(),
            region: "us".into(),
            power_price_usd_per_mwh: 40.into(),
        })
        .await
        .unwrap();

    // Writers that give up after a few to a few hundred microseconds: across thousands of them,
    // some are dropped at every await point of a write, including between BEGIN and COMMIT.
    let mut writers = Vec::new();
    for w in 0..8_i64 {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..400_i64 {
                let patience =
                    Duration::from_micros(u64::try_from((i * 37 + w * 11) % 400).unwrap());
                let at_ms = w * 1_000_000 + i;
                let _ =
                    tokio::time::timeout(patience, store.record_power_sample("a", &sample(at_ms)))
                        .await;
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }

    // Every pooled connection must still take writes, at once (not after the busy timeout).
    for i in 0..16 {
        tokio::time::timeout(
            Duration::from_secs(3),
            store.record_power_sample("a", &sample(10_000_000 + i)),
        )
        .await
        .expect("a write waited on a lock that a cancelled write left held")
        .expect("a write failed on a connection that a cancelled write left in a transaction");
    }
}
