//! Sites' power samples, demand-response events and how each event's miners answered.
//!
//! Two rules live here rather than in the control plane, because only a transaction can keep
//! them under concurrent requests: a site never has two live (not cancelled) events over the
//! same instant, so its agent is never told two targets at once; and a sample is stored once
//! per (site, instant), so a retried heartbeat changes nothing. Numbers that are not finite
//! are refused at the door: SQLite would store a NaN as NULL, and a meter reading that reads
//! back as "no reading" would misjudge an event.

use sqlx::{FromRow, SqliteConnection, SqlitePool};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use wattmesh_proto::energy::{MinerAck, MinerCounts, PowerSample};

use super::fleet::exists;
use super::{begin_write, conflict_on_duplicate};
use crate::StoreError;
use crate::records::{DrEventRecord, NewDrEvent};

// === rows ===

#[derive(FromRow)]
struct SampleRow {
    at_ms: i64,
    meter_kw: Option<f64>,
    meter_kwh: Option<f64>,
    meter_error: Option<String>,
    miners_total: i64,
    miners_hashing: i64,
    miners_asleep: i64,
    miners_unreachable: i64,
    miners_kw: f64,
    miners_ths: f64,
}

impl TryFrom<SampleRow> for PowerSample {
    type Error = StoreError;
    fn try_from(r: SampleRow) -> Result<Self, StoreError> {
        Ok(PowerSample {
            at_ms: r.at_ms,
            meter_kw: r.meter_kw,
            meter_kwh: r.meter_kwh,
            meter_error: r.meter_error,
            miners: MinerCounts {
                total: count("miners_total", r.miners_total)?,
                hashing: count("miners_hashing", r.miners_hashing)?,
                asleep: count("miners_asleep", r.miners_asleep)?,
                unreachable: count("miners_unreachable", r.miners_unreachable)?,
                kw: r.miners_kw,
                ths: r.miners_ths,
            },
        })
    }
}

const SAMPLE_COLUMNS: &str = "SELECT at_ms, meter_kw, meter_kwh, meter_error, miners_total, \
                              miners_hashing, miners_asleep, miners_unreachable, miners_kw, \
                              miners_ths FROM power_samples";

/// A miner count as stored; one that does not fit a `u32` is a corrupt row.
fn count(what: &str, v: i64) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| StoreError::Invalid(format!("stored {what} {v} is out of range")))
}

#[derive(FromRow)]
struct DrEventRow {
    id: String,
    site: String,
    target_kw: f64,
    reduce_by_pct: Option<f64>,
    baseline_kw: Option<f64>,
    shed_inference: bool,
    starts_at_ms: i64,
    ends_at_ms: i64,
    note: Option<String>,
    created_at_ms: i64,
    created_by: String,
    cancelled_at_ms: Option<i64>,
}

impl From<DrEventRow> for DrEventRecord {
    fn from(r: DrEventRow) -> Self {
        DrEventRecord {
            id: r.id,
            site: r.site,
            target_kw: r.target_kw,
            reduce_by_pct: r.reduce_by_pct,
            baseline_kw: r.baseline_kw,
            shed_inference: r.shed_inference,
            starts_at_ms: r.starts_at_ms,
            ends_at_ms: r.ends_at_ms,
            note: r.note,
            created_at_ms: r.created_at_ms,
            created_by: r.created_by,
            cancelled_at_ms: r.cancelled_at_ms,
        }
    }
}

const EVENT_COLUMNS: &str = "SELECT id, site, target_kw, reduce_by_pct, baseline_kw, \
                             shed_inference, starts_at_ms, ends_at_ms, note, created_at_ms, \
                             created_by, cancelled_at_ms FROM dr_events";

#[derive(FromRow)]
struct AckRow {
    miner: String,
    acknowledged_ms: Option<i64>,
    confirmed_ms: Option<i64>,
    error: Option<String>,
}

impl From<AckRow> for MinerAck {
    fn from(r: AckRow) -> Self {
        MinerAck {
            miner: r.miner,
            acknowledged_ms: r.acknowledged_ms,
            confirmed_ms: r.confirmed_ms,
            error: r.error,
        }
    }
}

// === checks ===

/// Refuses NaN and infinities: SQLite binds a NaN as NULL, so it would come back as a
/// missing reading (or fail a NOT NULL column) instead of the number that was sent.
fn finite(what: &str, v: f64) -> Result<(), StoreError> {
    if v.is_finite() {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "{what} must be a finite number, not {v}"
        )))
    }
}

fn finite_opt(what: &str, v: Option<f64>) -> Result<(), StoreError> {
    v.map_or(Ok(()), |v| finite(what, v))
}

fn check_sample(sample: &PowerSample) -> Result<(), StoreError> {
    finite_opt("a power sample's meter_kw", sample.meter_kw)?;
    finite_opt("a power sample's meter_kwh", sample.meter_kwh)?;
    finite("a power sample's miners kw", sample.miners.kw)?;
    finite("a power sample's miners ths", sample.miners.ths)
}

fn check_event(e: &NewDrEvent) -> Result<(), StoreError> {
    finite("a DR event's target_kw", e.target_kw)?;
    finite_opt("a DR event's reduce_by_pct", e.reduce_by_pct)?;
    finite_opt("a DR event's baseline_kw", e.baseline_kw)?;
    if e.ends_at_ms <= e.starts_at_ms {
        return Err(StoreError::Invalid(format!(
            "a DR event must end after it starts (starts {}, ends {})",
            show_ms(e.starts_at_ms),
            show_ms(e.ends_at_ms)
        )));
    }
    Ok(())
}

/// Unix ms as RFC 3339 for messages an operator reads, with the raw number for one that is
/// out of the calendar's range.
fn show_ms(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("unix ms {ms}"))
}

async fn site_exists(conn: &mut SqliteConnection, site: &str) -> Result<bool, StoreError> {
    exists(conn, "SELECT 1 FROM sites WHERE name = ?", site).await
}

// === power samples ===

pub(super) async fn record_power_samples(
    pool: &SqlitePool,
    site: &str,
    samples: &[PowerSample],
) -> Result<(), StoreError> {
    for sample in samples {
        check_sample(sample)?;
    }
    let mut tx = begin_write(pool).await?;
    // Checked first so an unknown site is `NotFound`, not a foreign-key failure; the key
    // stays the backstop.
    if !site_exists(&mut tx, site).await? {
        return Err(StoreError::not_found("site", site));
    }
    for sample in samples {
        // DO NOTHING: the first sample of an instant is kept, so a retried heartbeat is a no-op.
        sqlx::query(
            "INSERT INTO power_samples (site, at_ms, meter_kw, meter_kwh, meter_error, \
             miners_total, miners_hashing, miners_asleep, miners_unreachable, miners_kw, \
             miners_ths) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (site, at_ms) DO NOTHING",
        )
        .bind(site)
        .bind(sample.at_ms)
        .bind(sample.meter_kw)
        .bind(sample.meter_kwh)
        .bind(&sample.meter_error)
        .bind(i64::from(sample.miners.total))
        .bind(i64::from(sample.miners.hashing))
        .bind(i64::from(sample.miners.asleep))
        .bind(i64::from(sample.miners.unreachable))
        .bind(sample.miners.kw)
        .bind(sample.miners.ths)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

pub(super) async fn power_samples(
    pool: &SqlitePool,
    site: &str,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<PowerSample>, StoreError> {
    let mut conn = pool.acquire().await?;
    if !site_exists(&mut conn, site).await? {
        return Err(StoreError::not_found("site", site));
    }
    let rows: Vec<SampleRow> = sqlx::query_as(&format!(
        "{SAMPLE_COLUMNS} WHERE site = ? AND at_ms >= ? AND at_ms < ? ORDER BY at_ms"
    ))
    .bind(site)
    .bind(from_ms)
    .bind(to_ms)
    .fetch_all(&mut *conn)
    .await?;
    rows.into_iter().map(PowerSample::try_from).collect()
}

pub(super) async fn last_power_sample(
    pool: &SqlitePool,
    site: &str,
) -> Result<Option<PowerSample>, StoreError> {
    let mut conn = pool.acquire().await?;
    if !site_exists(&mut conn, site).await? {
        return Err(StoreError::not_found("site", site));
    }
    let row: Option<SampleRow> = sqlx::query_as(&format!(
        "{SAMPLE_COLUMNS} WHERE site = ? ORDER BY at_ms DESC LIMIT 1"
    ))
    .bind(site)
    .fetch_optional(&mut *conn)
    .await?;
    row.map(PowerSample::try_from).transpose()
}

// === demand-response events ===

pub(super) async fn create_dr_event(
    pool: &SqlitePool,
    event: &NewDrEvent,
) -> Result<DrEventRecord, StoreError> {
    check_event(event)?;
    // One write transaction for the checks and the insert: two operators scheduling over the
    // same hour at once get one event and one `Conflict`, never two events.
    let mut tx = begin_write(pool).await?;
    if !site_exists(&mut tx, &event.site).await? {
        return Err(StoreError::not_found("site", &event.site));
    }
    // Half-open windows [start, end) overlap when each starts before the other ends; one
    // ending exactly when the next starts does not. Cancelled events hold no time.
    let other: Option<(String, i64, i64)> = sqlx::query_as(
        "SELECT id, starts_at_ms, ends_at_ms FROM dr_events \
         WHERE site = ? AND cancelled_at_ms IS NULL AND starts_at_ms < ? AND ends_at_ms > ? \
         ORDER BY starts_at_ms, id LIMIT 1",
    )
    .bind(&event.site)
    .bind(event.ends_at_ms)
    .bind(event.starts_at_ms)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some((id, starts, ends)) = other {
        return Err(StoreError::Conflict(format!(
            "site {:?} already has DR event {id:?} from {} to {}; cancel it or choose another \
             time",
            event.site,
            show_ms(starts),
            show_ms(ends)
        )));
    }
    sqlx::query(
        "INSERT INTO dr_events (id, site, target_kw, reduce_by_pct, baseline_kw, \
         shed_inference, starts_at_ms, ends_at_ms, note, created_at_ms, created_by) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&event.id)
    .bind(&event.site)
    .bind(event.target_kw)
    .bind(event.reduce_by_pct)
    .bind(event.baseline_kw)
    .bind(event.shed_inference)
    .bind(event.starts_at_ms)
    .bind(event.ends_at_ms)
    .bind(&event.note)
    .bind(event.created_at_ms)
    .bind(&event.created_by)
    .execute(&mut *tx)
    .await
    .map_err(|e| conflict_on_duplicate(e, "dr event", &event.id))?;
    tx.commit().await?;
    Ok(DrEventRecord {
        id: event.id.clone(),
        site: event.site.clone(),
        target_kw: event.target_kw,
        reduce_by_pct: event.reduce_by_pct,
        baseline_kw: event.baseline_kw,
        shed_inference: event.shed_inference,
        starts_at_ms: event.starts_at_ms,
        ends_at_ms: event.ends_at_ms,
        note: event.note.clone(),
        created_at_ms: event.created_at_ms,
        created_by: event.created_by.clone(),
        cancelled_at_ms: None,
    })
}

pub(super) async fn list_dr_events(
    pool: &SqlitePool,
    site: Option<&str>,
) -> Result<Vec<DrEventRecord>, StoreError> {
    let rows: Vec<DrEventRow> = match site {
        None => {
            sqlx::query_as(&format!("{EVENT_COLUMNS} ORDER BY starts_at_ms, id"))
                .fetch_all(pool)
                .await?
        }
        Some(site) => {
            let mut conn = pool.acquire().await?;
            if !site_exists(&mut conn, site).await? {
                return Err(StoreError::not_found("site", site));
            }
            sqlx::query_as(&format!(
                "{EVENT_COLUMNS} WHERE site = ? ORDER BY starts_at_ms, id"
            ))
            .bind(site)
            .fetch_all(&mut *conn)
            .await?
        }
    };
    Ok(rows.into_iter().map(DrEventRecord::from).collect())
}

pub(super) async fn get_dr_event(pool: &SqlitePool, id: &str) -> Result<DrEventRecord, StoreError> {
    let mut conn = pool.acquire().await?;
    event_row(&mut conn, id).await.map(DrEventRecord::from)
}

async fn event_row(conn: &mut SqliteConnection, id: &str) -> Result<DrEventRow, StoreError> {
    let row: Option<DrEventRow> = sqlx::query_as(&format!("{EVENT_COLUMNS} WHERE id = ?"))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    row.ok_or_else(|| StoreError::not_found("dr event", id))
}

pub(super) async fn cancel_dr_event(
    pool: &SqlitePool,
    id: &str,
    at_ms: i64,
) -> Result<DrEventRecord, StoreError> {
    let mut tx = begin_write(pool).await?;
    let mut event = event_row(&mut tx, id).await?;
    // The first cancellation's time is the record; a second would rewrite history.
    if let Some(at) = event.cancelled_at_ms {
        return Err(StoreError::Conflict(format!(
            "DR event {id:?} was cancelled at {}",
            show_ms(at)
        )));
    }
    if event.ends_at_ms <= at_ms {
        return Err(StoreError::Conflict(format!(
            "DR event {id:?} is over: it ended at {}",
            show_ms(event.ends_at_ms)
        )));
    }
    sqlx::query("UPDATE dr_events SET cancelled_at_ms = ? WHERE id = ?")
        .bind(at_ms)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    event.cancelled_at_ms = Some(at_ms);
    Ok(event.into())
}

pub(super) async fn open_dr_events(
    pool: &SqlitePool,
    now_ms: i64,
) -> Result<Vec<DrEventRecord>, StoreError> {
    let rows: Vec<DrEventRow> = sqlx::query_as(&format!(
        "{EVENT_COLUMNS} WHERE cancelled_at_ms IS NULL AND ends_at_ms > ? \
         ORDER BY starts_at_ms, id"
    ))
    .bind(now_ms)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(DrEventRecord::from).collect())
}

// === miners' acknowledgements ===

pub(super) async fn record_dr_acks(
    pool: &SqlitePool,
    event_id: &str,
    site: &str,
    acks: &[MinerAck],
) -> Result<(), StoreError> {
    if let Some(bad) = acks.iter().find(|a| a.miner.trim().is_empty()) {
        return Err(StoreError::Invalid(format!(
            "a miner's answer names no miner: {bad:?}"
        )));
    }
    let mut tx = begin_write(pool).await?;
    // Another site's event reads as missing: an agent learns nothing of other sites.
    let owned: Option<(i64,)> = sqlx::query_as("SELECT 1 FROM dr_events WHERE id = ? AND site = ?")
        .bind(event_id)
        .bind(site)
        .fetch_optional(&mut *tx)
        .await?;
    if owned.is_none() {
        return Err(StoreError::not_found("dr event", event_id));
    }
    for ack in acks {
        sqlx::query(
            "INSERT INTO dr_acks (event_id, miner, acknowledged_ms, confirmed_ms, error) \
             VALUES (?, ?, ?, ?, ?) ON CONFLICT (event_id, miner) DO UPDATE SET \
             acknowledged_ms = excluded.acknowledged_ms, confirmed_ms = excluded.confirmed_ms, \
             error = excluded.error",
        )
        .bind(event_id)
        .bind(&ack.miner)
        .bind(ack.acknowledged_ms)
        .bind(ack.confirmed_ms)
        .bind(&ack.error)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

pub(super) async fn dr_acks(
    pool: &SqlitePool,
    event_id: &str,
) -> Result<Vec<MinerAck>, StoreError> {
    let mut conn = pool.acquire().await?;
    if !exists(&mut conn, "SELECT 1 FROM dr_events WHERE id = ?", event_id).await? {
        return Err(StoreError::not_found("dr event", event_id));
    }
    let rows: Vec<AckRow> = sqlx::query_as(
        "SELECT miner, acknowledged_ms, confirmed_ms, error FROM dr_acks \
         WHERE event_id = ? ORDER BY miner",
    )
    .bind(event_id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().map(MinerAck::from).collect())
}
