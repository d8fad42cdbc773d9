//! The usage spool: a crash-safe queue of [`UsageEvent`]s in a local SQLite file, between the
//! request that produced an event and the [shipper](crate::shipper) that delivers it.
//!
//! Why it exists: billed tokens must equal served tokens (DESIGN.md, "Usage is counted exactly
//! once") while the control plane may be unreachable for hours (static stability). So every
//! finished request is made durable here, locally, and shipped later, at least once; the control
//! plane's ingest is idempotent by event id, which turns at-least-once into exactly-once.
//!
//! Design:
//! - **One writer task** owns the write connection (STYLE.md "state owned by one task"). A
//!   [`Spool`] is a cheap handle: a bounded channel to the writer, plus a small read pool (WAL
//!   lets readers run beside the writer).
//! - **Group commit.** The writer takes one command, drains whatever else is already queued (up
//!   to [`MAX_GROUP`]), writes them all in one transaction and commits once, then answers every
//!   waiter. N concurrent requests cost one fsync, not N.
//! - **`synchronous = FULL` in WAL mode**: a commit returns only after the WAL is fsynced, so
//!   [`Spool::append`] returning `Ok` means the event survives a SIGKILL or a power cut. The
//!   gateway appends before it sends the answer's last byte. (`NORMAL` would be faster but may
//!   lose the last commits on power loss, and those are exactly events a client was billed for.)
//! - **Spend totals** (`spent`, per tenant, decimal stored as text and summed in Rust) are
//!   updated in the same transaction as the event that spent them, so they cannot disagree
//!   after a crash; the gateway reads them at start to know how much of its credit lease it
//!   has used.
//! - Acks (deletes of shipped events) go through the same writer, so the file has one writer
//!   and never sees `SQLITE_BUSY` from itself.
//!
//! Sequence numbers come from `AUTOINCREMENT`: they only grow, across restarts and after every
//! event was acked, so "ack through seq N" can never delete an event appended after the batch
//! that ended at N was read.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use rust_decimal::Decimal;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, Row};
use tokio::sync::{Notify, mpsc, oneshot};
use wattmesh_proto::usage::UsageEvent;

/// Most commands written in one transaction.
pub const MAX_GROUP: usize = 512;

/// Commands queued for the writer before `append` waits for room.
const CHANNEL_CAPACITY: usize = 4096;

/// Stands for "no event" in [`Inner::oldest_started_at_ms`].
const NO_EVENT: i64 = i64::MIN;

const SCHEMA: [&str; 2] = [
    "CREATE TABLE IF NOT EXISTS events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL,
        started_at_ms INTEGER NOT NULL,
        body TEXT NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS spent (
        tenant TEXT PRIMARY KEY,
        amount TEXT NOT NULL
    )",
];

/// What can go wrong with the spool.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The file could not be opened as a spool: missing directory, no permission, or not a
    /// SQLite database at all.
    #[error("cannot open usage spool {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: sqlx::Error,
    },
    /// A write (append or ack) failed; nothing of its transaction was kept. Shared by every
    /// waiter of the failed group commit, hence the `Arc`.
    #[error("usage spool write failed: {0}")]
    Write(#[source] Arc<sqlx::Error>),
    /// A read failed.
    #[error("usage spool read failed: {0}")]
    Read(#[source] sqlx::Error),
    /// A stored row could not be understood (disk corruption, or an event written by a newer
    /// gateway). The row is left in place for an operator.
    #[error("usage spool row {what} is unreadable: {reason}")]
    Corrupt { what: String, reason: String },
    /// The spool was shut down; nothing more can be written.
    #[error("usage spool is closed")]
    Closed,
}

/// A handle on the spool; clones share one file and one writer task. The writer ends when the
/// last handle is dropped (after writing everything queued) or at [`Spool::shutdown`].
#[derive(Debug, Clone)]
pub struct Spool {
    tx: mpsc::Sender<Command>,
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    read: SqlitePool,
    /// Events committed and not acked.
    depth: AtomicU64,
    /// Transactions committed by the writer (appends and acks), for tests and metrics.
    commits: AtomicU64,
    /// `started_at_ms` of the event with the smallest seq, or [`NO_EVENT`].
    oldest_started_at_ms: AtomicI64,
    /// Poked after every commit that added events.
    appended: Notify,
}

#[derive(Debug)]
enum Command {
    Append {
        event: Box<UsageEvent>,
        spend: Option<(String, Decimal)>,
        /// `None` for [`Spool::append_detached`].
        reply: Option<oneshot::Sender<Result<u64, SpoolError>>>,
    },
    Ack {
        through_seq: u64,
        reply: oneshot::Sender<Result<u64, SpoolError>>,
    },
    /// Answered once everything queued before it is committed; the writer then closes the
    /// file and ends.
    Close { reply: oneshot::Sender<()> },
}

// === impl Spool ===

impl Spool {
    /// Opens (or creates) the spool at `path` and starts its writer task. Must be called inside
    /// a Tokio runtime.
    pub async fn open(path: &Path) -> Result<Spool, SpoolError> {
        let open_err = |source| SpoolError::Open {
            path: path.to_path_buf(),
            source,
        };
        check_wal_tail(path);

        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(std::time::Duration::from_secs(10));

        // The writer's connection first: it creates the file and the tables, and the first
        // statement is what finds a file that is not a database.
        let mut conn = options.clone().connect().await.map_err(open_err)?;
        // Not `raw_sql`: its generic future is not `Send` for a borrowed connection.
        for table in SCHEMA {
            sqlx::query(table)
                .execute(&mut conn)
                .await
                .map_err(open_err)?;
        }
        let depth: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events")
            .fetch_one(&mut conn)
            .await
            .map_err(open_err)?;
        let oldest = oldest_started_at(&mut conn).await.map_err(open_err)?;

        let read = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(options.pragma("query_only", "ON"))
            .await
            .map_err(open_err)?;

        if depth > 0 {
            tracing::info!(path = %path.display(), events = depth, "usage spool holds unshipped events");
        }

        let inner = Arc::new(Inner {
            path: path.to_path_buf(),
            read,
            depth: AtomicU64::new(u64::try_from(depth).unwrap_or(0)),
            commits: AtomicU64::new(0),
            oldest_started_at_ms: AtomicI64::new(oldest.unwrap_or(NO_EVENT)),
            appended: Notify::new(),
        });
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        tokio::spawn(run_writer(conn, rx, inner.clone()));
        Ok(Spool { tx, inner })
    }

    /// Makes `event` durable, adding `spend` (tenant, amount) to that tenant's total in the same
    /// transaction. `Ok(seq)` means it is on disk. Concurrent calls share one commit.
    pub async fn append(
        &self,
        event: UsageEvent,
        spend: Option<(String, Decimal)>,
    ) -> Result<u64, SpoolError> {
        let (reply, answer) = oneshot::channel();
        let command = Command::Append {
            event: Box::new(event),
            spend,
            reply: Some(reply),
        };
        self.tx
            .send(command)
            .await
            .map_err(|_| SpoolError::Closed)?;
        answer.await.map_err(|_| SpoolError::Closed)?
    }

    /// Queues `event` without waiting for it to be durable: for a `Drop` (the client went away)
    /// where nothing can be awaited. Never blocks and never panics. When the queue is full the
    /// event is handed to a task (or, outside a runtime, a thread) that waits for room, so it is
    /// not lost; a failed write is logged, since no one is left to tell.
    pub fn append_detached(&self, event: UsageEvent, spend: Option<(String, Decimal)>) {
        let command = Command::Append {
            event: Box::new(event),
            spend,
            reply: None,
        };
        let command = match self.tx.try_send(command) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Closed(command)) => {
                lost(&command);
                return;
            }
            Err(mpsc::error::TrySendError::Full(command)) => command,
        };
        let tx = self.tx.clone();
        // The semaphore behind a bounded channel is fair, so these waiting sends still go in
        // before a later `shutdown`'s close command.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Err(mpsc::error::SendError(command)) = tx.send(command).await {
                    lost(&command);
                }
            });
        } else {
            let spawned = std::thread::Builder::new()
                .name("spool-append".into())
                .spawn(move || {
                    if let Err(mpsc::error::SendError(command)) = tx.blocking_send(command) {
                        lost(&command);
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a thread to spool a usage event; it is lost");
            }
        }
    }

    /// Deletes every event with `seq <= through_seq` (shipped). Returns how many went.
    pub async fn ack(&self, through_seq: u64) -> Result<u64, SpoolError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Command::Ack { through_seq, reply })
            .await
            .map_err(|_| SpoolError::Closed)?;
        answer.await.map_err(|_| SpoolError::Closed)?
    }

    /// Up to `limit` unacked events, smallest seq first.
    pub async fn oldest(&self, limit: usize) -> Result<Vec<(u64, UsageEvent)>, SpoolError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = sqlx::query("SELECT seq, body FROM events ORDER BY seq LIMIT ?")
            .bind(limit)
            .fetch_all(&self.inner.read)
            .await
            .map_err(SpoolError::Read)?;
        rows.iter()
            .map(|row| {
                let seq: i64 = row.try_get("seq").map_err(SpoolError::Read)?;
                let body: String = row.try_get("body").map_err(SpoolError::Read)?;
                let event = serde_json::from_str(&body).map_err(|e| SpoolError::Corrupt {
                    what: format!("event seq {seq}"),
                    reason: e.to_string(),
                })?;
                Ok((u64::try_from(seq).unwrap_or(0), event))
            })
            .collect()
    }

    /// Durable spend totals per tenant, everything ever appended (acks do not lower them).
    pub async fn spent(&self) -> Result<HashMap<String, Decimal>, SpoolError> {
        let rows = sqlx::query("SELECT tenant, amount FROM spent")
            .fetch_all(&self.inner.read)
            .await
            .map_err(SpoolError::Read)?;
        rows.iter()
            .map(|row| {
                let tenant: String = row.try_get("tenant").map_err(SpoolError::Read)?;
                let amount: String = row.try_get("amount").map_err(SpoolError::Read)?;
                let amount = Decimal::from_str(&amount).map_err(|e| SpoolError::Corrupt {
                    what: format!("spent for tenant {tenant:?}"),
                    reason: e.to_string(),
                })?;
                Ok((tenant, amount))
            })
            .collect()
    }

    /// Events committed and not acked yet.
    pub fn depth(&self) -> u64 {
        self.inner.depth.load(Ordering::Relaxed)
    }

    /// `started_at_ms` of the oldest unacked event (smallest seq), `None` when empty: "now"
    /// minus this is the shipping lag.
    pub fn oldest_started_at_ms(&self) -> Option<i64> {
        match self.inner.oldest_started_at_ms.load(Ordering::Relaxed) {
            NO_EVENT => None,
            ms => Some(ms),
        }
    }

    /// Transactions the writer has committed since open (appends and acks). Fewer than appends
    /// when group commit is doing its job.
    pub fn commits(&self) -> u64 {
        self.inner.commits.load(Ordering::Relaxed)
    }

    /// Completes after some commit added events (or at once, if one did since the last wait).
    /// The shipper sleeps on this.
    pub async fn appended(&self) {
        self.inner.appended.notified().await;
    }

    /// The spool's file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Writes everything queued so far (detached appends included), closes the file and stops
    /// the writer. Later writes through any clone fail with [`SpoolError::Closed`] (detached
    /// ones are logged as lost), so call it last: after the server has drained its requests
    /// and the shipper has made its final attempt.
    pub async fn close(&self) {
        let (reply, answer) = oneshot::channel();
        if self.tx.send(Command::Close { reply }).await.is_ok() {
            let _ = answer.await;
        }
        self.inner.read.close().await;
    }

    /// [`Spool::close`], consuming this handle.
    pub async fn shutdown(self) {
        self.close().await;
    }
}

/// Logs a detached append that cannot be written (a waited-for one gets `Closed` instead).
fn lost(command: &Command) {
    if let Command::Append {
        event, reply: None, ..
    } = command
    {
        tracing::error!(
            event = %event.id,
            tenant = %event.tenant,
            "usage spool is closed; a usage event is lost"
        );
    }
}

async fn oldest_started_at(conn: &mut SqliteConnection) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT started_at_ms FROM events ORDER BY seq LIMIT 1")
        .fetch_optional(conn)
        .await
}

/// Looks at the WAL a crash left behind before SQLite opens it: a tail that is not a whole
/// number of frames means the last write was cut short. SQLite recovers by itself (it replays
/// the WAL up to the last intact commit), so this only says so in the log: any event lost that
/// way had not been acknowledged to anyone.
fn check_wal_tail(path: &Path) {
    use std::io::Read;

    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let wal = PathBuf::from(wal);
    let Ok(mut file) = std::fs::File::open(&wal) else {
        return; // no WAL: the last close was clean, or the spool is new
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut header = Vec::with_capacity(WAL_HEADER as usize);
    if file
        .by_ref()
        .take(WAL_HEADER)
        .read_to_end(&mut header)
        .is_err()
    {
        return;
    }
    match wal_tail(len, &header) {
        WalTail::Whole => {}
        WalTail::PartialFrame => tracing::warn!(
            wal = %wal.display(),
            len,
            "usage spool WAL ends in a partial frame (a write was cut short); \
             recovering the commits before it"
        ),
        WalTail::BadHeader => tracing::warn!(
            wal = %wal.display(),
            len,
            "usage spool WAL has no valid header (a write was cut short); SQLite ignores it"
        ),
    }
}

const WAL_HEADER: u64 = 32;
const WAL_FRAME_HEADER: u64 = 24;

/// The shape of a WAL file, from its length and first bytes.
#[derive(Debug, PartialEq, Eq)]
enum WalTail {
    /// Empty, or a header and whole frames.
    Whole,
    /// The last frame is cut.
    PartialFrame,
    /// Too short for a header, or a header without a page size.
    BadHeader,
}

fn wal_tail(len: u64, header: &[u8]) -> WalTail {
    if len == 0 {
        return WalTail::Whole;
    }
    // Bytes 8..12 hold the page size, big-endian: a power of two from 512 to 65536.
    let page_size = header
        .get(8..12)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(|b| u64::from(u32::from_be_bytes(b)))
        .filter(|size| size.is_power_of_two() && (512..=65536).contains(size));
    match page_size {
        None => WalTail::BadHeader,
        Some(_) if len < WAL_HEADER => WalTail::BadHeader,
        Some(page) if !(len - WAL_HEADER).is_multiple_of(WAL_FRAME_HEADER + page) => {
            WalTail::PartialFrame
        }
        Some(_) => WalTail::Whole,
    }
}

// === impl writer ===

async fn run_writer(
    mut conn: SqliteConnection,
    mut rx: mpsc::Receiver<Command>,
    inner: Arc<Inner>,
) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    loop {
        let Some(first) = rx.recv().await else {
            break;
        };
        group.push(first);
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(command) => group.push(command),
                Err(_) => break,
            }
        }
        // A close ends the group: what came before it is written, what came after is refused
        // (its waiters see `Closed` when the channel drops).
        let close = group
            .iter()
            .position(|c| matches!(c, Command::Close { .. }))
            .map(|at| group.split_off(at));
        if !group.is_empty() {
            write_group(&mut conn, &inner, &mut group).await;
        }
        if let Some(closing) = close {
            rx.close();
            if let Err(e) = conn.close().await {
                tracing::warn!(error = %e, "closing the usage spool");
            }
            for command in closing {
                match command {
                    Command::Close { reply } => {
                        let _ = reply.send(());
                    }
                    other => lost(&other),
                }
            }
            // Detached appends that got into the queue after the close.
            while let Ok(command) = rx.try_recv() {
                lost(&command);
            }
            return;
        }
    }
    // Every handle is gone. Dropping the connection closes the file cleanly.
    drop(conn);
}

/// Writes `group` in one transaction, then answers each waiter.
async fn write_group(conn: &mut SqliteConnection, inner: &Inner, group: &mut Vec<Command>) {
    match write_transaction(conn, group).await {
        Ok(written) => {
            inner.commits.fetch_add(1, Ordering::Relaxed);
            inner
                .oldest_started_at_ms
                .store(written.oldest.unwrap_or(NO_EVENT), Ordering::Relaxed);
            // Depth: add before subtracting so a concurrent reader never sees it wrap.
            inner.depth.fetch_add(written.appended, Ordering::Relaxed);
            let _ = inner
                .depth
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| {
                    Some(d.saturating_sub(written.acked))
                });
            if written.appended > 0 {
                inner.appended.notify_one();
            }
            for (command, result) in group.drain(..).zip(written.results) {
                match command {
                    Command::Append {
                        reply: Some(reply), ..
                    }
                    | Command::Ack { reply, .. } => {
                        let _ = reply.send(Ok(result));
                    }
                    Command::Append { reply: None, .. } | Command::Close { .. } => {}
                }
            }
        }
        Err(e) => {
            tracing::error!(error = %e, commands = group.len(), "usage spool write failed");
            let e = Arc::new(e);
            for command in group.drain(..) {
                match command {
                    Command::Append {
                        reply: Some(reply), ..
                    }
                    | Command::Ack { reply, .. } => {
                        let _ = reply.send(Err(SpoolError::Write(e.clone())));
                    }
                    Command::Append {
                        reply: None, event, ..
                    } => tracing::error!(
                        event = %event.id,
                        tenant = %event.tenant,
                        "a usage event from a finished request could not be spooled; it is lost"
                    ),
                    Command::Close { .. } => {}
                }
            }
        }
    }
}

struct Written {
    /// One per command: the seq of an append, the rows deleted by an ack.
    results: Vec<u64>,
    appended: u64,
    acked: u64,
    oldest: Option<i64>,
}

async fn write_transaction(
    conn: &mut SqliteConnection,
    group: &[Command],
) -> Result<Written, sqlx::Error> {
    let mut tx = conn.begin().await?;
    let mut results = Vec::with_capacity(group.len());
    let (mut appended, mut acked) = (0, 0);
    let mut spend: HashMap<&str, Decimal> = HashMap::new();
    for command in group {
        match command {
            Command::Append {
                event,
                spend: spent,
                ..
            } => {
                let body =
                    serde_json::to_string(event).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
                let seq: i64 = sqlx::query_scalar(
                    "INSERT INTO events (id, started_at_ms, body) VALUES (?, ?, ?) RETURNING seq",
                )
                .bind(&event.id)
                .bind(event.started_at_ms)
                .bind(body)
                .fetch_one(&mut *tx)
                .await?;
                results.push(u64::try_from(seq).unwrap_or(0));
                appended += 1;
                if let Some((tenant, amount)) = spent {
                    let total = spend.entry(tenant.as_str()).or_default();
                    *total = total.saturating_add(*amount);
                }
            }
            Command::Ack { through_seq, .. } => {
                let through = i64::try_from(*through_seq).unwrap_or(i64::MAX);
                let done = sqlx::query("DELETE FROM events WHERE seq <= ?")
                    .bind(through)
                    .execute(&mut *tx)
                    .await?;
                results.push(done.rows_affected());
                acked += done.rows_affected();
            }
            Command::Close { .. } => results.push(0),
        }
    }
    for (tenant, amount) in spend {
        let before: Option<String> =
            sqlx::query_scalar("SELECT amount FROM spent WHERE tenant = ?")
                .bind(tenant)
                .fetch_optional(&mut *tx)
                .await?;
        let before = match before {
            Some(text) => Decimal::from_str(&text).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
            None => Decimal::ZERO,
        };
        // Saturating: a total near 8e28 is nonsense, but the event must still be kept.
        sqlx::query(
            "INSERT INTO spent (tenant, amount) VALUES (?, ?) \
             ON CONFLICT (tenant) DO UPDATE SET amount = excluded.amount",
        )
        .bind(tenant)
        .bind(before.saturating_add(amount).to_string())
        .execute(&mut *tx)
        .await?;
    }
    let oldest = oldest_started_at(&mut tx).await?;
    // The fsync: with `synchronous = FULL` this returns once the WAL is on disk.
    tx.commit().await?;
    Ok(Written {
        results,
        appended,
        acked,
        oldest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_tails() {
        let header = |page: u32| {
            let mut h = vec![0u8; 32];
            h[8..12].copy_from_slice(&page.to_be_bytes());
            h
        };
        let frame = 24 + 4096;
        let cases: &[(&str, u64, Vec<u8>, WalTail)] = &[
            ("empty", 0, Vec::new(), WalTail::Whole),
            ("header only", 32, header(4096), WalTail::Whole),
            ("three frames", 32 + 3 * frame, header(4096), WalTail::Whole),
            (
                "half a frame more",
                32 + 3 * frame + frame / 2,
                header(4096),
                WalTail::PartialFrame,
            ),
            (
                "cut header",
                20,
                header(4096)[..20].to_vec(),
                WalTail::BadHeader,
            ),
            ("no page size", 32 + frame, header(1000), WalTail::BadHeader),
            (
                "64 KiB pages",
                32 + 2 * (24 + 65536),
                header(65536),
                WalTail::Whole,
            ),
        ];
        for (name, len, bytes, want) in cases {
            assert_eq!(wal_tail(*len, bytes), *want, "{name}");
        }
    }
}
