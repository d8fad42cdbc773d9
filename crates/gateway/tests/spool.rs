//! The usage spool and its shipper, against real files and a real (tiny) control plane on a
//! loopback socket: durability, group commit, crash recovery, and at-least-once delivery.

// Helpers outside `#[test]` fns panic on purpose too: this is a test crate.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rust_decimal::Decimal;
use wattmesh_gateway::spool::{Spool, SpoolError, SpoolOptions};
use wattmesh_proto::usage::{Outcome, UsageEvent};

/// How long a condition may take before the test fails instead of hanging.
const DEADLINE: Duration = Duration::from_secs(20);

fn event(i: u64) -> UsageEvent {
    UsageEvent {
        id: format!("ev-{i:05}"),
        request_id: format!("req-{i}"),
        tenant: format!("tenant-{}", i % 3),
        key_id: "key-1".into(),
        model: "chat-m".into(),
        deployment: "d1".into(),
        replica: "r1".into(),
        site: "s1".into(),
        region: "eu".into(),
        priority: "normal".into(),
        prompt_tokens: 10 + i,
        completion_tokens: 20,
        started_at_ms: 1_700_000_000_000 + i as i64,
        ttft_ms: Some(12),
        duration_ms: 250,
        status: 200,
        outcome: Outcome::Completed,
    }
}

/// CRC-32 (IEEE), as the spool's records carry it.
fn crc32fast_hash(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn cents(n: i64) -> Decimal {
    Decimal::new(n, 2)
}

fn spend(i: u64) -> Option<(String, Decimal)> {
    Some((format!("tenant-{}", i % 3), cents(1)))
}

/// Polls `check` until it holds, failing the test after [`DEADLINE`].
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let give_up = tokio::time::Instant::now() + DEADLINE;
    while !check().await {
        assert!(tokio::time::Instant::now() < give_up, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What a crash leaves: the spool directory's files as they are on disk now, copied while the
/// spool still has them open (its lock file is left behind, as a dead process leaves it free).
fn crash_copy(spool: &Path, to_dir: &Path) -> PathBuf {
    let copy = to_dir.join("crashed");
    std::fs::create_dir(&copy).unwrap();
    for entry in std::fs::read_dir(spool).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "LOCK" {
            std::fs::copy(entry.path(), copy.join(entry.file_name())).unwrap();
        }
    }
    copy
}

/// The spool's segment files, oldest first.
fn segments(spool: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(spool)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    found.sort();
    found
}

/// The segment being written: the last one with records (a spare, made ahead, may follow).
fn current_segment(spool: &Path) -> PathBuf {
    segments(spool)
        .into_iter()
        .rev()
        .find(|p| written_len(p) > 0)
        .unwrap()
}

/// Where the last whole record of `segment` ends: the first zero header after records.
fn written_len(segment: &Path) -> usize {
    let bytes = std::fs::read(segment).unwrap();
    let mut at = 0;
    while at + 13 <= bytes.len() && bytes[at..at + 4] == *b"WMU1" {
        at += 13 + u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
    }
    at
}

mod spool {
    use super::*;

    #[tokio::test]
    async fn concurrent_appends_are_durable_in_order_with_fewer_commits() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&dir.path().join("spool")).await.unwrap();

        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let spool = spool.clone();
                tokio::spawn(async move { (i, spool.append(event(i), spend(i)).await.unwrap()) })
            })
            .collect();
        let mut seq_of = HashMap::new();
        for task in tasks {
            let (i, seq) = task.await.unwrap();
            seq_of.insert(format!("ev-{i:05}"), seq);
        }

        assert!(
            spool.commits() < 100,
            "group commit: {} commits for 200 appends",
            spool.commits()
        );
        assert_eq!(spool.depth(), 200);
        let stored = spool.oldest(1000).await.unwrap();
        assert_eq!(stored.len(), 200);
        let seqs: Vec<u64> = stored.iter().map(|(seq, _)| *seq).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "oldest is in seq order"
        );
        for (seq, event) in &stored {
            assert_eq!(seq_of[&event.id], *seq, "append's seq names its event");
        }

        let spent = spool.spent().await.unwrap();
        let expected: HashMap<String, Decimal> = [
            ("tenant-0".to_string(), cents(67)),
            ("tenant-1".to_string(), cents(67)),
            ("tenant-2".to_string(), cents(66)),
        ]
        .into();
        assert_eq!(spent, expected);
    }

    #[tokio::test]
    async fn reopening_keeps_unacked_events_and_spend_and_seqs_keep_growing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool");
        let spool = Spool::open(&path).await.unwrap();
        assert_eq!(spool.oldest_started_at_ms(), None);
        for i in 0..5 {
            assert_eq!(spool.append(event(i), spend(i)).await.unwrap(), i + 1);
        }
        assert_eq!(spool.oldest_started_at_ms(), Some(event(0).started_at_ms));
        assert_eq!(spool.ack(2).await.unwrap(), 2);
        assert_eq!(spool.depth(), 3);
        assert_eq!(spool.oldest_started_at_ms(), Some(event(2).started_at_ms));
        drop(spool);

        let spool = Spool::open(&path).await.unwrap();
        assert_eq!(spool.depth(), 3);
        assert_eq!(spool.oldest_started_at_ms(), Some(event(2).started_at_ms));
        let left: Vec<(u64, UsageEvent)> = spool.oldest(10).await.unwrap();
        assert_eq!(left, vec![(3, event(2)), (4, event(3)), (5, event(4))]);
        let spent = spool.spent().await.unwrap();
        assert_eq!(spent["tenant-0"], cents(2));
        assert_eq!(spent["tenant-1"], cents(2));
        assert_eq!(spent["tenant-2"], cents(1));

        // Acking everything, even across a restart, never lets a seq be used again.
        assert_eq!(spool.ack(5).await.unwrap(), 3);
        assert_eq!((spool.depth(), spool.oldest_started_at_ms()), (0, None));
        spool.shutdown().await;
        let spool = Spool::open(&path).await.unwrap();
        assert_eq!(spool.depth(), 0);
        assert_eq!(spool.append(event(9), None).await.unwrap(), 6);
        assert_eq!(spool.spent().await.unwrap()["tenant-0"], cents(2));
    }

    #[tokio::test]
    async fn an_acked_event_is_gone_and_acking_again_is_harmless() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&dir.path().join("spool")).await.unwrap();
        for i in 0..3 {
            spool.append(event(i), None).await.unwrap();
        }
        assert_eq!(spool.ack(1).await.unwrap(), 1);
        assert_eq!(spool.ack(1).await.unwrap(), 0);
        let ids: Vec<String> = spool
            .oldest(10)
            .await
            .unwrap()
            .into_iter()
            .map(|(_, e)| e.id)
            .collect();
        assert_eq!(ids, ["ev-00001", "ev-00002"]);
        assert_eq!(spool.oldest(1).await.unwrap().len(), 1, "limit is kept");
    }

    /// What the gateway does when a client goes away: the event is spooled from a `Drop`.
    struct Metered {
        spool: Spool,
        event: Option<UsageEvent>,
    }

    impl Drop for Metered {
        fn drop(&mut self) {
            if let Some(event) = self.event.take() {
                self.spool
                    .append_detached(event, Some(("tenant-x".into(), cents(5))));
            }
        }
    }

    #[tokio::test]
    async fn append_detached_from_a_drop_lands() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&dir.path().join("spool")).await.unwrap();
        drop(Metered {
            spool: spool.clone(),
            event: Some(event(7)),
        });
        eventually("the detached event is committed", || async {
            spool.depth() == 1
        })
        .await;
        assert_eq!(spool.oldest(10).await.unwrap(), vec![(1, event(7))]);
        assert_eq!(spool.spent().await.unwrap()["tenant-x"], cents(5));
    }

    /// A burst of detached appends while the runtime is busy, some from outside any runtime:
    /// none waits for the disk and none is lost.
    #[tokio::test]
    async fn a_burst_of_detached_appends_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&dir.path().join("spool")).await.unwrap();
        // On this single-threaded runtime no waiter runs while this loop does.
        for i in 0..5000 {
            spool.append_detached(event(i), spend(i));
        }
        let outside = spool.clone();
        std::thread::spawn(move || {
            for i in 5000..5010 {
                outside.append_detached(event(i), spend(i));
            }
        })
        .join()
        .unwrap();
        eventually("all 5010 detached events are committed", || async {
            spool.depth() == 5010
        })
        .await;
        let ids: BTreeSet<String> = spool
            .oldest(10_000)
            .await
            .unwrap()
            .into_iter()
            .map(|(_, e)| e.id)
            .collect();
        assert_eq!(ids, (0..5010).map(|i| event(i).id).collect());
        let total: Decimal = spool.spent().await.unwrap().values().sum();
        assert_eq!(total, cents(5010));
    }

    #[tokio::test]
    async fn an_append_that_returned_survives_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool");
        let spool = Spool::open(&path).await.unwrap();
        spool.append(event(1), spend(1)).await.unwrap();

        let after = tempfile::tempdir().unwrap();
        let crashed = Spool::open(&crash_copy(&path, after.path())).await.unwrap();
        assert_eq!(crashed.oldest(10).await.unwrap(), vec![(1, event(1))]);
        assert_eq!(crashed.spent().await.unwrap()["tenant-1"], cents(1));
        drop(spool);
    }

    /// A crash in the middle of a group's write leaves a torn record; recovery keeps every
    /// record before it, and writing goes on past it in a new segment.
    #[tokio::test]
    async fn a_segment_cut_mid_record_recovers_the_records_before_the_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool");
        let spool = Spool::open(&path).await.unwrap();
        for i in 0..10 {
            spool.append(event(i), spend(i)).await.unwrap();
        }
        let segment = current_segment(&path);
        let after_10 = written_len(&segment);
        for i in 10..20 {
            spool.append(event(i), spend(i)).await.unwrap();
        }
        let after = tempfile::tempdir().unwrap();
        let copy = crash_copy(&path, after.path());
        drop(spool);

        // Cut the eleventh record in half, and make sure what follows the cut still looks like
        // records (as pages written out of order by a crash would): recovery must stop anyway.
        let torn = copy.join(segment.file_name().unwrap());
        let mut bytes = std::fs::read(&torn).unwrap();
        assert!(
            written_len(&torn) > after_10 + 100,
            "the later records are there"
        );
        bytes[after_10 + 40] ^= 0xff;
        std::fs::write(&torn, &bytes).unwrap();

        let recovered = Spool::open(&copy).await.unwrap();
        let events = recovered.oldest(100).await.unwrap();
        assert_eq!(
            events,
            (0..10).map(|i| (i + 1, event(i))).collect::<Vec<_>>(),
            "exactly the ten records before the cut"
        );
        assert_eq!(recovered.depth(), 10);
        let total: Decimal = recovered.spent().await.unwrap().values().sum();
        assert_eq!(total, cents(10), "spend agrees with the events kept");
        // And it goes on: the next seq follows the last one kept, and a restart reads the torn
        // segment the same way, with the new records after it.
        assert_eq!(recovered.append(event(99), None).await.unwrap(), 11);
        recovered.shutdown().await;
        let again = Spool::open(&copy).await.unwrap();
        let ids: Vec<String> = again
            .oldest(100)
            .await
            .unwrap()
            .into_iter()
            .map(|(_, e)| e.id)
            .collect();
        let mut want: Vec<String> = (0..10).map(|i| event(i).id).collect();
        want.push(event(99).id);
        assert_eq!(ids, want);
    }

    /// A file cut short inside a record (a filesystem without preallocation, or a copy cut
    /// short) is a torn tail too.
    #[tokio::test]
    async fn a_segment_file_cut_short_recovers_the_records_before_the_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool");
        let spool = Spool::open(&path).await.unwrap();
        for i in 0..5 {
            spool.append(event(i), spend(i)).await.unwrap();
        }
        let after = tempfile::tempdir().unwrap();
        let copy = crash_copy(&path, after.path());
        drop(spool);
        let segment = current_segment(&copy);
        let len = written_len(&segment);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&segment)
            .unwrap()
            .set_len(len as u64 - 10)
            .unwrap();
        let recovered = Spool::open(&copy).await.unwrap();
        assert_eq!(recovered.depth(), 4);
        let total: Decimal = recovered.spent().await.unwrap().values().sum();
        assert_eq!(total, cents(4));
    }

    /// Segments roll over as they fill, each starting with a checkpoint; shipped ones are
    /// deleted, and a spool whose early segments are gone still knows its spend and seqs.
    #[tokio::test]
    async fn segments_roll_over_and_shipped_ones_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool");
        let options = SpoolOptions {
            segment_bytes: 4096,
        };
        let spool = Spool::open_with(&path, options).await.unwrap();
        for i in 0..100 {
            spool.append(event(i), spend(i)).await.unwrap();
        }
        assert!(
            segments(&path).len() > 5,
            "{} segments",
            segments(&path).len()
        );
        let stored = spool.oldest(1000).await.unwrap();
        assert_eq!(stored.len(), 100);
        assert!(
            stored
                .iter()
                .enumerate()
                .all(|(i, (seq, e))| *seq == i as u64 + 1 && e.id == event(i as u64).id)
        );

        // Ship in batches, as the shipper does.
        let mut shipped = 0;
        while shipped < 90 {
            let batch = spool.oldest(7).await.unwrap();
            assert_eq!(
                batch[0].0,
                shipped + 1,
                "each read starts after the last ack"
            );
            let last = batch.last().unwrap().0.min(90);
            spool.ack(last).await.unwrap();
            shipped = last;
        }
        assert_eq!(spool.depth(), 10);
        assert_eq!(spool.oldest_started_at_ms(), Some(event(90).started_at_ms));
        let left = segments(&path).len();
        assert!(left <= 4, "shipped segments are deleted: {left} left");
        spool.shutdown().await;

        let spool = Spool::open_with(&path, options).await.unwrap();
        assert_eq!(spool.depth(), 10);
        let left: Vec<u64> = spool
            .oldest(100)
            .await
            .unwrap()
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(left, (91..=100).collect::<Vec<_>>());
        let spent = spool.spent().await.unwrap();
        assert_eq!(
            spent.values().sum::<Decimal>(),
            cents(100),
            "spend of deleted segments is kept"
        );
        assert_eq!(spool.append(event(100), None).await.unwrap(), 101);
    }

    #[tokio::test]
    async fn a_file_in_place_of_the_spool_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.db");
        std::fs::write(&path, "an older gateway's SQLite spool\n").unwrap();
        let err = Spool::open(&path).await.unwrap_err();
        assert!(matches!(&err, SpoolError::Open { path: p, .. } if *p == path));
        let message = err.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("not a directory"), "{message}");
    }

    #[tokio::test]
    async fn a_second_gateway_on_the_same_spool_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool");
        let first = Spool::open(&path).await.unwrap();
        let err = Spool::open(&path).await.unwrap_err();
        assert!(matches!(&err, SpoolError::Locked { .. }), "{err}");
        assert!(err.to_string().contains("another gateway"), "{err}");
        first.shutdown().await;
        Spool::open(&path)
            .await
            .expect("free again once the first has closed");
    }

    /// Damage that is not a torn tail: the files are left alone for an operator, and the
    /// gateway says why it does not start.
    #[tokio::test]
    async fn unreadable_segments_are_clear_errors_and_left_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool");
        let spool = Spool::open(&path).await.unwrap();
        spool.append(event(1), spend(1)).await.unwrap();
        spool.shutdown().await;
        let segment = current_segment(&path);
        let end = written_len(&segment);
        let pristine = std::fs::read(&segment).unwrap();

        // A record of a kind from a newer gateway, with a valid checksum.
        let mut newer = pristine.clone();
        let payload = b"future";
        let mut crc = crc32fast_hash(&[&[9u8][..], payload].concat());
        let mut frame = b"WMU1".to_vec();
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        frame.extend_from_slice(&crc.to_le_bytes());
        frame.push(9);
        frame.extend_from_slice(payload);
        newer[end..end + frame.len()].copy_from_slice(&frame);
        std::fs::write(&segment, &newer).unwrap();
        let err = Spool::open(&path).await.unwrap_err();
        assert!(matches!(&err, SpoolError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("newer gateway"), "{err}");
        assert_eq!(std::fs::read(&segment).unwrap(), newer, "left in place");

        // An intact checksum over a checkpoint that is not JSON.
        let mut bad = pristine.clone();
        let payload = b"not json";
        crc = crc32fast_hash(&[&[1u8][..], payload].concat());
        let mut frame = b"WMU1".to_vec();
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        frame.extend_from_slice(&crc.to_le_bytes());
        frame.push(1);
        frame.extend_from_slice(payload);
        bad[end..end + frame.len()].copy_from_slice(&frame);
        std::fs::write(&segment, &bad).unwrap();
        let err = Spool::open(&path).await.unwrap_err();
        assert!(matches!(&err, SpoolError::Corrupt { .. }), "{err}");
    }

    #[tokio::test]
    async fn a_missing_directory_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no-such-dir").join("spool");
        let err = Spool::open(&path).await.unwrap_err();
        assert!(matches!(&err, SpoolError::Open { path: p, .. } if *p == path));
    }

    #[tokio::test]
    async fn shutdown_writes_what_was_queued_then_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool");
        let spool = Spool::open(&path).await.unwrap();
        for i in 0..50 {
            spool.append_detached(event(i), spend(i));
        }
        let other = spool.clone();
        spool.shutdown().await;
        assert!(matches!(
            other.append(event(99), None).await,
            Err(SpoolError::Closed)
        ));
        assert!(matches!(other.ack(1).await, Err(SpoolError::Closed)));
        other.append_detached(event(100), None); // logged, no panic
        drop(other);

        let spool = Spool::open(&path).await.unwrap();
        assert_eq!(spool.depth(), 50);
        let total: Decimal = spool.spent().await.unwrap().values().sum();
        assert_eq!(total, cents(50));
    }
}

mod shipper {
    use std::sync::Mutex;

    use axum::Json;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::{IntoResponse, Response};
    use tokio_util::sync::CancellationToken;
    use wattmesh_gateway::shipper::{ShipperStats, run_shipper, run_shipper_with_stats};
    use wattmesh_proto::usage::{IngestReceipt, UsageBatch};

    use super::*;

    const TOKEN: &str = "gw-token";

    /// How the fake control plane answers each POST, in turn; `Accept` once the script ends.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Answer {
        Accept,
        /// 503 without looking at the batch.
        Unavailable,
        /// 400: the batch is refused.
        Refuse,
        /// Stores the batch, then answers 500: the answer is lost, the batch will come again.
        StoreThenFail,
    }

    #[derive(Default)]
    struct Ingest {
        script: Vec<Answer>,
        posts: usize,
        /// Every id received in a stored batch, duplicates included, in order.
        received: Vec<String>,
        stored: BTreeSet<String>,
    }

    type Shared = Arc<Mutex<Ingest>>;

    async fn ingest(
        State(state): State<Shared>,
        headers: HeaderMap,
        Json(batch): Json<UsageBatch>,
    ) -> Response {
        let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
        if auth != Some(&format!("Bearer {TOKEN}")) {
            return StatusCode::UNAUTHORIZED.into_response();
        }
        let mut state = state.lock().unwrap();
        let answer = state
            .script
            .get(state.posts)
            .copied()
            .unwrap_or(Answer::Accept);
        state.posts += 1;
        match answer {
            Answer::Unavailable => return StatusCode::SERVICE_UNAVAILABLE.into_response(),
            Answer::Refuse => {
                return (StatusCode::BAD_REQUEST, "event ev-00000: unknown model").into_response();
            }
            Answer::Accept | Answer::StoreThenFail => {}
        }
        let mut receipt = IngestReceipt {
            accepted: 0,
            duplicates: 0,
        };
        for event in batch.events {
            state.received.push(event.id.clone());
            if state.stored.insert(event.id) {
                receipt.accepted += 1;
            } else {
                receipt.duplicates += 1;
            }
        }
        if answer == Answer::StoreThenFail {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
        Json(receipt).into_response()
    }

    /// A control plane on 127.0.0.1:0 answering by `script`; returns its URL.
    async fn control_plane(script: Vec<Answer>) -> (String, Shared) {
        let state: Shared = Arc::new(Mutex::new(Ingest {
            script,
            ..Ingest::default()
        }));
        let app = axum::Router::new()
            .route("/api/v1/usage/batches", axum::routing::post(ingest))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (url, state)
    }

    struct Running {
        spool: Spool,
        stats: Arc<ShipperStats>,
        shutdown: CancellationToken,
        task: tokio::task::JoinHandle<()>,
        _dir: tempfile::TempDir,
    }

    async fn start(url: &str, events: u64) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&dir.path().join("spool")).await.unwrap();
        for i in 0..events {
            spool.append(event(i), spend(i)).await.unwrap();
        }
        let stats = Arc::new(ShipperStats::default());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run_shipper_with_stats(
            spool.clone(),
            reqwest::Client::new(),
            format!("{url}/"),
            TOKEN.into(),
            stats.clone(),
            shutdown.clone(),
        ));
        Running {
            spool,
            stats,
            shutdown,
            task,
            _dir: dir,
        }
    }

    fn all_ids(n: u64) -> BTreeSet<String> {
        (0..n).map(|i| event(i).id).collect()
    }

    #[tokio::test]
    async fn shipper_rides_out_an_outage_and_loses_nothing() {
        let (url, ingest) = control_plane(vec![Answer::Unavailable, Answer::Unavailable]).await;
        let run = start(&url, 1200).await;

        eventually("the spool is shipped empty", || async {
            run.spool.depth() == 0
        })
        .await;
        // The shipper counts a batch once its ack has returned, a moment after the spool shows
        // it acked: stop it before reading its counters.
        run.shutdown.cancel();
        tokio::time::timeout(DEADLINE, run.task)
            .await
            .unwrap()
            .unwrap();
        {
            let ingest = ingest.lock().unwrap();
            assert_eq!(ingest.stored, all_ids(1200));
            assert_eq!(ingest.received.len(), 1200, "nothing was sent twice");
            assert_eq!(ingest.posts, 2 + 3, "two refusals, then 500 + 500 + 200");
        }
        assert_eq!(run.stats.failures(), 2);
        assert_eq!(run.stats.consecutive_failures(), 0);
        assert_eq!(
            (run.stats.batches_shipped(), run.stats.events_shipped()),
            (3, 1200)
        );
        assert!(run.stats.last_error_at_ms().is_some());
        assert!(run.spool.oldest(1).await.unwrap().is_empty());
    }

    /// Lost answers make the shipper send batches again: duplicates arrive, but every event
    /// arrives, including the ones appended while it ships.
    #[tokio::test]
    async fn shipper_delivers_every_event_at_least_once() {
        let (url, ingest) = control_plane(vec![
            Answer::StoreThenFail,
            Answer::Accept,
            Answer::Unavailable,
            Answer::StoreThenFail,
            Answer::StoreThenFail,
        ])
        .await;
        let run = start(&url, 700).await;
        for i in 700..1000 {
            run.spool.append(event(i), spend(i)).await.unwrap();
        }

        eventually("every event is stored", || async {
            run.spool.depth() == 0 && ingest.lock().unwrap().stored.len() == 1000
        })
        .await;
        // Stopped before its counters are read (see above).
        run.shutdown.cancel();
        tokio::time::timeout(DEADLINE, run.task)
            .await
            .unwrap()
            .unwrap();
        {
            let ingest = ingest.lock().unwrap();
            assert_eq!(ingest.stored, all_ids(1000), "none lost");
            let received: BTreeSet<String> = ingest.received.iter().cloned().collect();
            assert_eq!(received, all_ids(1000));
            assert!(ingest.received.len() > 1000, "lost answers caused replays");
            // Receipts that came back report replays; the lost ones could not.
            let replays = ingest.received.len() as u64 - 1000;
            assert!((1..=replays).contains(&run.stats.duplicates()));
        }
    }

    /// A batch the control plane refuses is not dropped: it stays spooled and is retried, and
    /// goes through once the control plane takes it.
    #[tokio::test]
    async fn shipper_keeps_a_refused_batch() {
        let (url, ingest) = control_plane(vec![Answer::Refuse; 3]).await;
        let run = start(&url, 10).await;

        // Failures are counted once the shipper has read the answer.
        eventually("three refusals", || async { run.stats.failures() >= 3 }).await;
        assert_eq!(ingest.lock().unwrap().posts, 3);
        eventually("then it is shipped", || async { run.spool.depth() == 0 }).await;
        assert_eq!(ingest.lock().unwrap().stored, all_ids(10));
        run.shutdown.cancel();
        tokio::time::timeout(DEADLINE, run.task)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn shipper_wakes_on_append() {
        let (url, ingest) = control_plane(Vec::new()).await;
        let run = start(&url, 0).await;
        // Let it find the spool empty and go to sleep on the notify.
        eventually("idle", || async { run.spool.depth() == 0 }).await;
        let started = tokio::time::Instant::now();
        run.spool.append(event(1), None).await.unwrap();
        eventually("shipped", || async {
            ingest.lock().unwrap().stored.len() == 1
        })
        .await;
        assert!(
            started.elapsed() < Duration::from_millis(900),
            "woken by the append, not the 1 s poll: {:?}",
            started.elapsed()
        );
        run.shutdown.cancel();
        tokio::time::timeout(DEADLINE, run.task)
            .await
            .unwrap()
            .unwrap();
    }

    /// At shutdown the shipper makes one last attempt before returning.
    #[tokio::test]
    async fn shipper_flushes_at_shutdown() {
        let (url, ingest) = control_plane(Vec::new()).await;
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&dir.path().join("spool")).await.unwrap();
        for i in 0..600 {
            spool.append(event(i), None).await.unwrap();
        }
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        run_shipper(
            spool.clone(),
            reqwest::Client::new(),
            url,
            TOKEN.into(),
            shutdown,
        )
        .await;
        assert_eq!(spool.depth(), 0);
        assert_eq!(ingest.lock().unwrap().stored, all_ids(600));
    }

    /// With the control plane gone, shutdown still returns promptly and keeps the events.
    #[tokio::test]
    async fn shipper_shutdown_with_no_control_plane_keeps_events() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener); // nothing listens there now
        let run = start(&url, 5).await;
        eventually("a failure", || async { run.stats.failures() > 0 }).await;
        run.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), run.task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(run.spool.depth(), 5);
    }
}
