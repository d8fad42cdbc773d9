//! The usage shipper: the one task that moves events from the [`Spool`] to the control plane's
//! `POST /api/v1/usage/batches`, oldest first, in batches of up to [`BATCH_SIZE`].
//!
//! Delivery is **at least once**: a batch is acked (deleted from the spool) only after the
//! control plane answered 2xx, so a crash or a lost answer between the two sends the batch again.
//! The control plane's ingest is idempotent by event id, so a replay adds nothing twice:
//! together, usage is counted exactly once.
//!
//! Failures keep the events and back off (250 ms doubling to 5 s, reset on success); an outage is
//! logged once when it starts and once when it ends, not per try. A 4xx other than 401/403/429
//! means the control plane refuses the batch as malformed: that is logged as an error with the
//! response text, and the batch is **not** dropped: it stays at the head of the spool, retried
//! with back-off, for an operator to look at (and blocks the events behind it, which
//! [`Spool::depth`] and [`Spool::oldest_started_at_ms`] make visible as a growing shipping lag).
//! Dropping it would lose billed usage silently, which is worse than a stuck, loud queue. A
//! spooled row that cannot be read back ([`SpoolError::Corrupt`]) is handled the same way.
//!
//! On shutdown the shipper makes one last attempt, bounded by [`FINAL_FLUSH`], to ship what is
//! spooled; whatever is left stays on disk for the next start.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;
use wattmesh_proto::usage::{IngestReceipt, UsageBatch};

use crate::spool::{Spool, SpoolError};

/// Most events in one batch.
pub const BATCH_SIZE: usize = 500;
/// First wait after a failure; it doubles per failure up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_millis(250);
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// With nothing to ship, how long to wait for an append before looking again anyway.
pub const IDLE_POLL: Duration = Duration::from_secs(1);
/// How long the last attempt at shutdown may take.
pub const FINAL_FLUSH: Duration = Duration::from_secs(3);
/// One POST's limit; the client the gateway shares has no overall timeout (streams).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Response text kept in an error.
const ERROR_TEXT_MAX: usize = 1024;

/// Shipping health, for metrics. Shared with the running shipper; all counters since start.
#[derive(Debug, Default)]
pub struct ShipperStats {
    batches_shipped: AtomicU64,
    events_shipped: AtomicU64,
    /// Events the control plane said it had already (replays).
    duplicates: AtomicU64,
    failures: AtomicU64,
    consecutive_failures: AtomicU64,
    /// Unix ms, 0 for never.
    last_error_at_ms: AtomicI64,
    last_success_at_ms: AtomicI64,
}

impl ShipperStats {
    pub fn batches_shipped(&self) -> u64 {
        self.batches_shipped.load(Ordering::Relaxed)
    }

    pub fn events_shipped(&self) -> u64 {
        self.events_shipped.load(Ordering::Relaxed)
    }

    pub fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }

    /// Failed attempts in all.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Failed attempts since the last success; 0 when healthy.
    pub fn consecutive_failures(&self) -> u64 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }

    pub fn last_error_at_ms(&self) -> Option<i64> {
        Some(self.last_error_at_ms.load(Ordering::Relaxed)).filter(|&ms| ms != 0)
    }

    pub fn last_success_at_ms(&self) -> Option<i64> {
        Some(self.last_success_at_ms.load(Ordering::Relaxed)).filter(|&ms| ms != 0)
    }

    fn shipped(&self, events: u64, receipt: IngestReceipt) {
        self.batches_shipped.fetch_add(1, Ordering::Relaxed);
        self.events_shipped.fetch_add(events, Ordering::Relaxed);
        self.duplicates
            .fetch_add(receipt.duplicates, Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.last_success_at_ms.store(now_ms(), Ordering::Relaxed);
    }

    fn failed(&self) -> u64 {
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.last_error_at_ms.store(now_ms(), Ordering::Relaxed);
        self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// Why a batch did not get through.
#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("control plane unreachable: {0}")]
    Transport(#[source] reqwest::Error),
    /// A status worth retrying as is: 5xx, 401/403 (token not yet known or being rotated), 429.
    #[error("control plane answered {status}: {text}")]
    Status { status: u16, text: String },
    /// Any other 4xx: the control plane refuses this batch. Kept and retried; see module docs.
    #[error("control plane refused the batch ({status}): {text}")]
    Rejected { status: u16, text: String },
    /// 2xx with a body that is not an [`IngestReceipt`]: not counted as delivered.
    #[error("control plane answered 2xx with an unreadable receipt: {0}")]
    Receipt(#[source] reqwest::Error),
}

impl ShipError {
    /// A coarse kind, so a change of cause during an outage is logged again.
    fn kind(&self) -> &'static str {
        match self {
            ShipError::Spool(_) => "spool",
            ShipError::Transport(_) => "transport",
            ShipError::Status { .. } => "status",
            ShipError::Rejected { .. } => "rejected",
            ShipError::Receipt(_) => "receipt",
        }
    }
}

/// Ships the spool to `{control_url}/api/v1/usage/batches` with bearer `token` until
/// `shutdown`, then makes one bounded last attempt and returns. See
/// [`run_shipper_with_stats`] to watch it.
pub async fn run_shipper(
    spool: Spool,
    http: reqwest::Client,
    control_url: String,
    token: String,
    shutdown: CancellationToken,
) {
    let stats = Arc::default();
    run_shipper_with_stats(spool, http, control_url, token, stats, shutdown).await;
}

/// [`run_shipper`], counting into `stats` (for metrics and tests).
pub async fn run_shipper_with_stats(
    spool: Spool,
    http: reqwest::Client,
    control_url: String,
    token: String,
    stats: Arc<ShipperStats>,
    shutdown: CancellationToken,
) {
    let link = Link {
        url: format!("{}/api/v1/usage/batches", control_url.trim_end_matches('/')),
        http,
        token,
    };
    let mut backoff = BACKOFF_MIN;
    // The kind of the failure being logged as an outage, if one is going on.
    let mut outage: Option<&'static str> = None;
    while !shutdown.is_cancelled() {
        match ship_one(&spool, &link, &stats).await {
            Ok(Some(_)) => {
                if outage.take().is_some() {
                    tracing::info!("usage shipping recovered");
                }
                backoff = BACKOFF_MIN;
                // More may be waiting: go again at once.
            }
            Ok(None) => {
                tokio::select! {
                    () = spool.appended() => {}
                    () = tokio::time::sleep(IDLE_POLL) => {}
                    () = shutdown.cancelled() => {}
                }
            }
            Err(e) => {
                let failures = stats.failed();
                if outage != Some(e.kind()) {
                    outage = Some(e.kind());
                    log_failure(&e, &spool, failures);
                } else {
                    tracing::debug!(error = %e, failures, "usage shipping still failing");
                }
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shutdown.cancelled() => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
    final_flush(&spool, &link, &stats).await;
}

/// Ships until the spool is empty, the first failure, or [`FINAL_FLUSH`] is up.
async fn final_flush(spool: &Spool, link: &Link, stats: &ShipperStats) {
    let flush = async {
        loop {
            match ship_one(spool, link, stats).await {
                Ok(Some(_)) => continue,
                Ok(None) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    };
    match tokio::time::timeout(FINAL_FLUSH, flush).await {
        Ok(Ok(())) => tracing::debug!("usage spool shipped empty at shutdown"),
        Ok(Err(e)) => {
            stats.failed();
            tracing::warn!(error = %e, left = spool.depth(), "usage left in the spool at shutdown; it ships at next start");
        }
        Err(_) => tracing::warn!(
            left = spool.depth(),
            "usage left in the spool at shutdown (time up); it ships at next start"
        ),
    }
}

fn log_failure(e: &ShipError, spool: &Spool, failures: u64) {
    let depth = spool.depth();
    match e {
        ShipError::Rejected { .. } | ShipError::Receipt(_) | ShipError::Spool(_) => {
            tracing::error!(
                error = %e,
                depth,
                path = %spool.path().display(),
                "usage batch not shipped; it stays in the spool and is retried (operator: inspect the oldest events)"
            );
        }
        ShipError::Transport(_) | ShipError::Status { .. } => tracing::warn!(
            error = %e,
            depth,
            failures,
            "usage shipping failing; events stay spooled and are retried"
        ),
    }
}

struct Link {
    url: String,
    http: reqwest::Client,
    token: String,
}

/// Ships the oldest batch: `Ok(None)` when there was nothing to ship.
async fn ship_one(
    spool: &Spool,
    link: &Link,
    stats: &ShipperStats,
) -> Result<Option<IngestReceipt>, ShipError> {
    let batch = spool.oldest(BATCH_SIZE).await?;
    let Some(&(last_seq, _)) = batch.last() else {
        return Ok(None);
    };
    let count = batch.len() as u64;
    let body = UsageBatch {
        events: batch.into_iter().map(|(_, event)| event).collect(),
    };
    let receipt = post(link, &body).await?;
    // If the ack fails the batch is sent again later: a duplicate, which ingest skips.
    spool.ack(last_seq).await?;
    stats.shipped(count, receipt);
    Ok(Some(receipt))
}

async fn post(link: &Link, batch: &UsageBatch) -> Result<IngestReceipt, ShipError> {
    let response = link
        .http
        .post(&link.url)
        .bearer_auth(&link.token)
        .timeout(REQUEST_TIMEOUT)
        .json(batch)
        .send()
        .await
        .map_err(ShipError::Transport)?;
    let status = response.status();
    if status.is_success() {
        return response.json().await.map_err(ShipError::Receipt);
    }
    let mut text = response.text().await.unwrap_or_default();
    if text.len() > ERROR_TEXT_MAX {
        let mut end = ERROR_TEXT_MAX;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    let code = status.as_u16();
    let retry_as_is = status.is_server_error() || matches!(code, 401 | 403 | 429);
    if status.is_client_error() && !retry_as_is {
        Err(ShipError::Rejected { status: code, text })
    } else {
        Err(ShipError::Status { status: code, text })
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
