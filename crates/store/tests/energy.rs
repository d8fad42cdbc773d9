//! The SQLite store's energy paths against a real file: sites' power samples, demand-response
//! events (their windows may not overlap on one site) and how each event's miners answered,
//! a table of inputs each method must refuse, and that reopening the file keeps all of it.

// Helpers outside `#[test]` fns panic on setup failures too; that is what a test wants.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use wattmesh_proto::energy::{MinerAck, MinerCounts, PowerSample};
use wattmesh_store::{DrEventRecord, NewDrEvent, SqliteStore, Store, StoreError};

mod common;

use common::{open, seed};

fn sample(at_ms: i64, meter_kw: f64) -> PowerSample {
    PowerSample {
        at_ms,
        meter_kw: Some(meter_kw),
        meter_kwh: Some(1_234_567.125),
        meter_error: None,
        miners: MinerCounts {
            total: 100,
            hashing: 97,
            asleep: 2,
            unreachable: 1,
            kw: 310.5,
            ths: 11_000.25,
        },
    }
}

fn event(id: &str, site: &str, starts_at_ms: i64, ends_at_ms: i64) -> NewDrEvent {
    NewDrEvent {
        id: id.into(),
        site: site.into(),
        target_kw: 120.0,
        reduce_by_pct: Some(60.0),
        baseline_kw: Some(300.0),
        shed_inference: false,
        starts_at_ms,
        ends_at_ms,
        note: Some("dispatch 7".into()),
        created_at_ms: 10,
        created_by: "admin".into(),
    }
}

fn ack(miner: &str, acknowledged_ms: Option<i64>, confirmed_ms: Option<i64>) -> MinerAck {
    MinerAck {
        miner: miner.into(),
        acknowledged_ms,
        confirmed_ms,
        error: None,
    }
}

fn ids(events: &[DrEventRecord]) -> Vec<&str> {
    events.iter().map(|e| e.id.as_str()).collect()
}

// === power samples ===

#[tokio::test]
async fn samples_round_trip_by_window_and_keep_the_first_of_an_instant() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
    seed(&s).await;

    assert_eq!(s.last_power_sample("a").await.unwrap(), None);
    assert!(s.power_samples("a", 0, i64::MAX).await.unwrap().is_empty());

    // Out of order, as retries can deliver them.
    for (at, kw) in [(3000, 300.0), (1000, 100.0), (2000, 200.0)] {
        s.record_power_sample("a", &sample(at, kw)).await.unwrap();
    }
    // The meter did not answer: no kW, a reason instead.
    let dark = PowerSample {
        meter_kw: None,
        meter_kwh: None,
        meter_error: Some("modbus timeout".into()),
        ..sample(4000, 0.0)
    };
    s.record_power_sample("a", &dark).await.unwrap();
    // Another site's sample at the same instant is its own.
    s.record_power_sample("b", &sample(2000, 999.0))
        .await
        .unwrap();

    // A retried heartbeat: the same instant again, different numbers; the first stays.
    s.record_power_sample("a", &sample(2000, 555.0))
        .await
        .unwrap();

    let all = s.power_samples("a", 0, i64::MAX).await.unwrap();
    assert_eq!(
        all.iter()
            .map(|p| (p.at_ms, p.meter_kw))
            .collect::<Vec<_>>(),
        [
            (1000, Some(100.0)),
            (2000, Some(200.0)),
            (3000, Some(300.0)),
            (4000, None)
        ]
    );
    assert_eq!(all[0], sample(1000, 100.0), "every field round-trips");
    assert_eq!(all[3], dark);

    // from <= at < to.
    let window = s.power_samples("a", 2000, 4000).await.unwrap();
    assert_eq!(
        window.iter().map(|p| p.at_ms).collect::<Vec<_>>(),
        [2000, 3000]
    );
    assert!(s.power_samples("a", 2001, 3000).await.unwrap().is_empty());
    assert!(s.power_samples("a", 5000, 1000).await.unwrap().is_empty());

    assert_eq!(s.last_power_sample("a").await.unwrap(), Some(dark));
    assert_eq!(
        s.last_power_sample("b").await.unwrap(),
        Some(sample(2000, 999.0))
    );
}

#[tokio::test]
async fn a_backlog_of_samples_is_stored_whole_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
    seed(&s).await;
    s.record_power_sample("a", &sample(2000, 200.0))
        .await
        .unwrap();

    // An agent's backlog after an outage: one already stored (a heartbeat retried), in order.
    let backlog: Vec<PowerSample> = (1..=4).map(|i| sample(i * 1000, 1.0)).collect();
    s.record_power_samples("a", &backlog).await.unwrap();
    let stored = s.power_samples("a", 0, i64::MAX).await.unwrap();
    assert_eq!(
        stored
            .iter()
            .map(|p| (p.at_ms, p.meter_kw))
            .collect::<Vec<_>>(),
        [
            (1000, Some(1.0)),
            (2000, Some(200.0)),
            (3000, Some(1.0)),
            (4000, Some(1.0))
        ]
    );

    // One sample that is not a number: nothing of the batch is stored.
    let broken = vec![sample(5000, 1.0), sample(6000, f64::NAN)];
    let err = s.record_power_samples("a", &broken).await.unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err}");
    assert_eq!(s.power_samples("a", 5000, i64::MAX).await.unwrap(), []);
    // An unknown site, and an empty batch (a heartbeat with none).
    let err = s.record_power_samples("zz", &backlog).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    s.record_power_samples("a", &[]).await.unwrap();
}

// === demand-response events ===

#[tokio::test]
async fn events_are_listed_opened_and_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
    seed(&s).await;

    let made = s
        .create_dr_event(&event("late", "a", 5000, 6000))
        .await
        .unwrap();
    assert_eq!(made.cancelled_at_ms, None);
    assert_eq!(s.get_dr_event("late").await.unwrap(), made);
    let early = NewDrEvent {
        reduce_by_pct: None,
        baseline_kw: None,
        shed_inference: true,
        note: None,
        ..event("early", "a", 1000, 2000)
    };
    s.create_dr_event(&early).await.unwrap();
    s.create_dr_event(&event("b-1", "b", 1000, 3000))
        .await
        .unwrap();
    // Same start as b-1 on another site: ties go by id.
    s.create_dr_event(&event("a-tie", "a", 3000, 4000))
        .await
        .unwrap();

    let got = s.get_dr_event("early").await.unwrap();
    assert_eq!(
        (
            got.shed_inference,
            got.reduce_by_pct,
            got.baseline_kw,
            got.note.as_deref()
        ),
        (true, None, None, None)
    );

    assert_eq!(
        ids(&s.list_dr_events(None).await.unwrap()),
        ["b-1", "early", "a-tie", "late"]
    );
    assert_eq!(
        ids(&s.list_dr_events(Some("a")).await.unwrap()),
        ["early", "a-tie", "late"]
    );
    assert_eq!(ids(&s.list_dr_events(Some("b")).await.unwrap()), ["b-1"]);

    // Open: not cancelled and ending after now.
    let open_at = |now: i64| {
        let s = s.clone();
        async move { s.open_dr_events(now).await.unwrap() }
    };
    assert_eq!(ids(&open_at(0).await), ["b-1", "early", "a-tie", "late"]);
    assert_eq!(ids(&open_at(1999).await), ["b-1", "early", "a-tie", "late"]);
    assert_eq!(ids(&open_at(2000).await), ["b-1", "a-tie", "late"]);
    assert_eq!(ids(&open_at(4500).await), ["late"]);
    assert!(open_at(6000).await.is_empty());

    // Cancelling before it starts; the window stays, the cancellation is its end.
    let cancelled = s.cancel_dr_event("late", 4200).await.unwrap();
    assert_eq!(cancelled.cancelled_at_ms, Some(4200));
    assert_eq!((cancelled.starts_at_ms, cancelled.ends_at_ms), (5000, 6000));
    assert_eq!(cancelled.effective_end_ms(), 4200);
    assert_eq!(s.get_dr_event("late").await.unwrap(), cancelled);
    assert!(open_at(4500).await.is_empty());
    assert_eq!(
        s.list_dr_events(Some("a")).await.unwrap().len(),
        3,
        "a cancelled event is still listed"
    );

    // Cancelling one under way.
    let cut = s.cancel_dr_event("b-1", 1500).await.unwrap();
    assert_eq!(cut.effective_end_ms(), 1500);
    assert_eq!(ids(&open_at(0).await), ["early", "a-tie"]);
}

#[tokio::test]
async fn racing_overlapping_events_make_one() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
    seed(&s).await;

    let (ex, ey) = (event("x", "a", 1000, 3000), event("y", "a", 2000, 4000));
    let (x, y) = tokio::join!(s.create_dr_event(&ex), s.create_dr_event(&ey));
    let made = [&x, &y].iter().filter(|r| r.is_ok()).count();
    let conflicts = [&x, &y]
        .iter()
        .filter(|r| matches!(r, Err(StoreError::Conflict(_))))
        .count();
    assert_eq!((made, conflicts), (1, 1), "{x:?} {y:?}");
    assert_eq!(s.list_dr_events(Some("a")).await.unwrap().len(), 1);
}

// === miners' acknowledgements ===

#[tokio::test]
async fn acks_replace_per_miner_and_stay_with_their_event() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
    seed(&s).await;
    s.create_dr_event(&event("e1", "a", 1000, 2000))
        .await
        .unwrap();
    s.create_dr_event(&event("e2", "a", 2000, 3000))
        .await
        .unwrap();

    assert!(s.dr_acks("e1").await.unwrap().is_empty());
    s.record_dr_acks("e1", "a", &[]).await.unwrap();
    s.record_dr_acks(
        "e1",
        "a",
        &[
            ack("10.0.0.9:4028", Some(1010), None),
            ack("10.0.0.1:4028", Some(1005), None),
            MinerAck {
                error: Some("connection refused".into()),
                ..ack("10.0.0.5:4028", None, None)
            },
        ],
    )
    .await
    .unwrap();
    // Later: two confirmations arrive, one miner is resent unchanged.
    s.record_dr_acks(
        "e1",
        "a",
        &[
            ack("10.0.0.1:4028", Some(1005), Some(1200)),
            ack("10.0.0.9:4028", Some(1010), Some(1300)),
        ],
    )
    .await
    .unwrap();
    s.record_dr_acks("e2", "a", &[ack("10.0.0.1:4028", Some(2001), None)])
        .await
        .unwrap();

    assert_eq!(
        s.dr_acks("e1").await.unwrap(),
        [
            ack("10.0.0.1:4028", Some(1005), Some(1200)),
            MinerAck {
                error: Some("connection refused".into()),
                ..ack("10.0.0.5:4028", None, None)
            },
            ack("10.0.0.9:4028", Some(1010), Some(1300)),
        ]
    );
    assert_eq!(
        s.dr_acks("e2").await.unwrap(),
        [ack("10.0.0.1:4028", Some(2001), None)]
    );
}

// === inputs that must be refused ===

/// One store call, so a table can name it.
enum Op {
    Sample(&'static str, PowerSample),
    Samples(&'static str),
    LastSample(&'static str),
    Create(NewDrEvent),
    List(&'static str),
    Get(&'static str),
    Cancel(&'static str, i64),
    Acks(&'static str, &'static str, Vec<MinerAck>),
    ReadAcks(&'static str),
}

#[derive(Debug)]
enum Expect {
    Ok,
    NotFound(&'static str),
    /// The message contains each of these.
    Conflict(&'static [&'static str]),
    Invalid(&'static str),
}

async fn apply(s: &SqliteStore, op: &Op) -> Result<(), StoreError> {
    match op {
        Op::Sample(site, p) => s.record_power_sample(site, p).await,
        Op::Samples(site) => s.power_samples(site, 0, i64::MAX).await.map(drop),
        Op::LastSample(site) => s.last_power_sample(site).await.map(drop),
        Op::Create(e) => s.create_dr_event(e).await.map(drop),
        Op::List(site) => s.list_dr_events(Some(site)).await.map(drop),
        Op::Get(id) => s.get_dr_event(id).await.map(drop),
        Op::Cancel(id, at) => s.cancel_dr_event(id, *at).await.map(drop),
        Op::Acks(id, site, acks) => s.record_dr_acks(id, site, acks).await,
        Op::ReadAcks(id) => s.dr_acks(id).await.map(drop),
    }
}

/// Everything the table's calls could change, to show a refused call changed nothing.
async fn snapshot(s: &SqliteStore) -> impl PartialEq + std::fmt::Debug {
    let mut acks = Vec::new();
    for e in s.list_dr_events(None).await.unwrap() {
        acks.push(s.dr_acks(&e.id).await.unwrap());
    }
    (
        s.list_dr_events(None).await.unwrap(),
        s.power_samples("a", i64::MIN, i64::MAX).await.unwrap(),
        s.power_samples("b", i64::MIN, i64::MAX).await.unwrap(),
        acks,
    )
}

#[tokio::test]
async fn broken_inputs_are_refused_and_change_nothing() {
    let nan_kw = PowerSample {
        meter_kw: Some(f64::NAN),
        ..sample(1, 0.0)
    };
    let nan_kwh = PowerSample {
        meter_kwh: Some(f64::NAN),
        ..sample(1, 0.0)
    };
    let inf_miners = PowerSample {
        miners: MinerCounts {
            kw: f64::INFINITY,
            ..MinerCounts::default()
        },
        ..sample(1, 0.0)
    };
    let nan_ths = PowerSample {
        miners: MinerCounts {
            ths: f64::NAN,
            ..MinerCounts::default()
        },
        ..sample(1, 0.0)
    };
    let with = |f: fn(&mut NewDrEvent)| {
        let mut e = event("new", "a", 10_000, 11_000);
        f(&mut e);
        e
    };
    // Seeded below: e1 on a over [1000, 2000) live, ec on a over [5000, 6000) cancelled.
    let e1_window: &[&str] = &["\"e1\"", "1970-01-01T00:00:01Z", "1970-01-01T00:00:02Z"];
    let cases: Vec<(&str, Op, Expect)> = vec![
        // samples
        (
            "sample of an unknown site",
            Op::Sample("nowhere", sample(1, 1.0)),
            Expect::NotFound("site"),
        ),
        (
            "NaN meter kW",
            Op::Sample("a", nan_kw),
            Expect::Invalid("meter_kw"),
        ),
        (
            "NaN meter kWh",
            Op::Sample("a", nan_kwh),
            Expect::Invalid("meter_kwh"),
        ),
        (
            "infinite miners kW",
            Op::Sample("a", inf_miners),
            Expect::Invalid("miners kw"),
        ),
        (
            "NaN hashrate",
            Op::Sample("a", nan_ths),
            Expect::Invalid("miners ths"),
        ),
        (
            "samples of an unknown site",
            Op::Samples("nowhere"),
            Expect::NotFound("site"),
        ),
        (
            "last sample of an unknown site",
            Op::LastSample("nowhere"),
            Expect::NotFound("site"),
        ),
        // events
        (
            "event of an unknown site",
            Op::Create(event("new", "nowhere", 1000, 2000)),
            Expect::NotFound("site"),
        ),
        (
            "same window",
            Op::Create(event("new", "a", 1000, 2000)),
            Expect::Conflict(e1_window),
        ),
        (
            "overlaps its end",
            Op::Create(event("new", "a", 1500, 2500)),
            Expect::Conflict(e1_window),
        ),
        (
            "overlaps its start",
            Op::Create(event("new", "a", 500, 1001)),
            Expect::Conflict(e1_window),
        ),
        (
            "inside it",
            Op::Create(event("new", "a", 1200, 1300)),
            Expect::Conflict(e1_window),
        ),
        (
            "around it",
            Op::Create(event("new", "a", 0, 9000)),
            Expect::Conflict(e1_window),
        ),
        (
            "same window, other site",
            Op::Create(event("new", "b", 1000, 2000)),
            Expect::Ok,
        ),
        (
            "starts as it ends",
            Op::Create(event("new", "a", 2000, 3000)),
            Expect::Ok,
        ),
        (
            "ends as it starts",
            Op::Create(event("new", "a", 0, 1000)),
            Expect::Ok,
        ),
        (
            "over a cancelled event",
            Op::Create(event("new", "a", 5000, 6000)),
            Expect::Ok,
        ),
        (
            "taken id",
            Op::Create(event("e1", "b", 8000, 9000)),
            Expect::Conflict(&["\"e1\"", "already exists"]),
        ),
        (
            "ends as it starts, empty",
            Op::Create(event("new", "a", 3000, 3000)),
            Expect::Invalid("end after it starts"),
        ),
        (
            "ends before it starts",
            Op::Create(event("new", "a", 3000, 2999)),
            Expect::Invalid("end after it starts"),
        ),
        (
            "NaN target",
            Op::Create(with(|e| e.target_kw = f64::NAN)),
            Expect::Invalid("target_kw"),
        ),
        (
            "infinite target",
            Op::Create(with(|e| e.target_kw = f64::NEG_INFINITY)),
            Expect::Invalid("target_kw"),
        ),
        (
            "NaN percent",
            Op::Create(with(|e| e.reduce_by_pct = Some(f64::NAN))),
            Expect::Invalid("reduce_by_pct"),
        ),
        (
            "infinite baseline",
            Op::Create(with(|e| e.baseline_kw = Some(f64::INFINITY))),
            Expect::Invalid("baseline_kw"),
        ),
        (
            "events of an unknown site",
            Op::List("nowhere"),
            Expect::NotFound("site"),
        ),
        (
            "unknown event",
            Op::Get("nope"),
            Expect::NotFound("dr event"),
        ),
        // cancelling
        (
            "cancel an unknown event",
            Op::Cancel("nope", 1500),
            Expect::NotFound("dr event"),
        ),
        (
            "cancel twice",
            Op::Cancel("ec", 4500),
            Expect::Conflict(&["\"ec\"", "cancelled at 1970-01-01T00:00:04Z"]),
        ),
        (
            "cancel as it ends",
            Op::Cancel("e1", 2000),
            Expect::Conflict(&["\"e1\"", "ended at 1970-01-01T00:00:02Z"]),
        ),
        (
            "cancel after it ended",
            Op::Cancel("e1", 9000),
            Expect::Conflict(&["\"e1\"", "ended"]),
        ),
        (
            "cancel just before it ends",
            Op::Cancel("e1", 1999),
            Expect::Ok,
        ),
        // acks
        (
            "acks of an unknown event",
            Op::Acks("nope", "a", vec![ack("m:1", Some(1), None)]),
            Expect::NotFound("dr event"),
        ),
        (
            "acks of another site's event",
            Op::Acks("e1", "b", vec![ack("m:1", Some(1), None)]),
            Expect::NotFound("dr event"),
        ),
        (
            "acks of an unknown site",
            Op::Acks("e1", "nowhere", vec![]),
            Expect::NotFound("dr event"),
        ),
        (
            "an ack naming no miner",
            Op::Acks(
                "e1",
                "a",
                vec![ack("m:1", Some(1), None), ack(" ", Some(1), None)],
            ),
            Expect::Invalid("names no miner"),
        ),
        (
            "acks of a cancelled event",
            Op::Acks("ec", "a", vec![ack("m:1", Some(1), None)]),
            Expect::Ok,
        ),
        (
            "read acks of an unknown event",
            Op::ReadAcks("nope"),
            Expect::NotFound("dr event"),
        ),
    ];

    for (name, op, expect) in &cases {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path()).await;
        seed(&s).await;
        s.record_power_sample("a", &sample(1, 1.0)).await.unwrap();
        s.create_dr_event(&event("e1", "a", 1000, 2000))
            .await
            .unwrap();
        s.create_dr_event(&event("ec", "a", 5000, 6000))
            .await
            .unwrap();
        s.cancel_dr_event("ec", 4000).await.unwrap();
        s.record_dr_acks("e1", "a", &[ack("m:0", Some(1001), None)])
            .await
            .unwrap();
        let before = snapshot(&s).await;

        let got = apply(&s, op).await;
        let matched = match (expect, &got) {
            (Expect::Ok, Ok(())) => true,
            (Expect::NotFound(kind), Err(StoreError::NotFound { kind: k, .. })) => k == kind,
            (Expect::Conflict(parts), Err(StoreError::Conflict(m))) => {
                parts.iter().all(|p| m.contains(p))
            }
            (Expect::Invalid(part), Err(StoreError::Invalid(m))) => m.contains(part),
            _ => false,
        };
        assert!(matched, "{name}: expected {expect:?}, got {got:?}");
        if got.is_err() {
            assert_eq!(snapshot(&s).await, before, "{name}: a refused call wrote");
        } else {
            assert_ne!(
                snapshot(&s).await,
                before,
                "{name}: an accepted write changed nothing"
            );
        }
    }
}

// === restarts ===

#[tokio::test]
async fn reopening_the_file_keeps_events_samples_and_acks() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
    seed(&s).await;
    s.record_power_sample("a", &sample(1000, 250.0))
        .await
        .unwrap();
    s.record_power_sample("a", &sample(2000, 120.0))
        .await
        .unwrap();
    s.create_dr_event(&event("e1", "a", 1500, 9000))
        .await
        .unwrap();
    s.create_dr_event(&event("e2", "b", 1500, 9000))
        .await
        .unwrap();
    s.cancel_dr_event("e2", 1600).await.unwrap();
    s.record_dr_acks("e1", "a", &[ack("10.0.0.1:4028", Some(1510), Some(1700))])
        .await
        .unwrap();
    let before = (
        s.list_dr_events(None).await.unwrap(),
        s.power_samples("a", 0, i64::MAX).await.unwrap(),
        s.dr_acks("e1").await.unwrap(),
    );
    assert_eq!(before.0.len(), 2);
    s.close().await;
    drop(s);

    let s = open(dir.path()).await;
    let after = (
        s.list_dr_events(None).await.unwrap(),
        s.power_samples("a", 0, i64::MAX).await.unwrap(),
        s.dr_acks("e1").await.unwrap(),
    );
    assert_eq!(after, before);
    assert_eq!(ids(&s.open_dr_events(2000).await.unwrap()), ["e1"]);
    // The rules hold across the restart too.
    assert!(matches!(
        s.create_dr_event(&event("e3", "a", 8000, 9500)).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.cancel_dr_event("e2", 1700).await,
        Err(StoreError::Conflict(_))
    ));
}
