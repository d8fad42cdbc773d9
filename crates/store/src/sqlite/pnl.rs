//! The P&L's own inputs: Bitcoin market snapshots (versioned, never edited) and the terms each
//! demand-response event pays on. Everything else the P&L reads (power samples, usage, events)
//! lives with its own module.

use rust_decimal::Decimal;
use sqlx::{FromRow, SqlitePool};

use super::fleet::exists;
use super::{begin_write, from_i64, now, parse_decimal};
use crate::StoreError;
use crate::records::{DrTermsRecord, MarketRecord, NewMarketSnapshot};

#[derive(FromRow)]
struct MarketRow {
    version: i64,
    btc_usd: String,
    difficulty: f64,
    subsidy_btc: f64,
    fees_btc_per_block: f64,
    effective_from: String,
    effective_from_ms: i64,
}

impl TryFrom<MarketRow> for MarketRecord {
    type Error = StoreError;
    fn try_from(r: MarketRow) -> Result<Self, StoreError> {
        Ok(MarketRecord {
            version: from_i64("market version", r.version)?,
            btc_usd: parse_decimal("btc_usd", &r.btc_usd)?,
            difficulty: r.difficulty,
            subsidy_btc: r.subsidy_btc,
            fees_btc_per_block: r.fees_btc_per_block,
            effective_from: r.effective_from,
            effective_from_ms: r.effective_from_ms,
        })
    }
}

/// Refuses what the mining model cannot use: a difficulty that is not a positive number
/// (hashprice divides by it), a negative or non-finite subsidy or fee (SQLite would store a
/// NaN as NULL), a BTC price that is not positive.
fn check_market(m: &NewMarketSnapshot) -> Result<(), StoreError> {
    if !(m.difficulty.is_finite() && m.difficulty > 0.0) {
        return Err(StoreError::Invalid(format!(
            "difficulty must be a positive number, not {}",
            m.difficulty
        )));
    }
    for (what, v) in [
        ("subsidy_btc", m.subsidy_btc),
        ("fees_btc_per_block", m.fees_btc_per_block),
    ] {
        if !(v.is_finite() && v >= 0.0) {
            return Err(StoreError::Invalid(format!(
                "{what} must be a number of BTC, zero or more, not {v}"
            )));
        }
    }
    if m.btc_usd <= Decimal::ZERO {
        return Err(StoreError::Invalid(format!(
            "btc_usd must be more than 0, not {}",
            m.btc_usd
        )));
    }
    Ok(())
}

pub(super) async fn add_market_snapshot(
    pool: &SqlitePool,
    m: &NewMarketSnapshot,
) -> Result<MarketRecord, StoreError> {
    check_market(m)?;
    let done = sqlx::query(
        "INSERT INTO market_snapshots (btc_usd, difficulty, subsidy_btc, fees_btc_per_block, \
         effective_from, effective_from_ms, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(m.btc_usd.to_string())
    .bind(m.difficulty)
    .bind(m.subsidy_btc)
    .bind(m.fees_btc_per_block)
    .bind(&m.effective_from)
    .bind(m.effective_from_ms)
    .bind(now())
    .execute(pool)
    .await?;
    Ok(MarketRecord {
        version: from_i64("market version", done.last_insert_rowid())?,
        btc_usd: m.btc_usd,
        difficulty: m.difficulty,
        subsidy_btc: m.subsidy_btc,
        fees_btc_per_block: m.fees_btc_per_block,
        effective_from: m.effective_from.clone(),
        effective_from_ms: m.effective_from_ms,
    })
}

pub(super) async fn list_market_snapshots(
    pool: &SqlitePool,
) -> Result<Vec<MarketRecord>, StoreError> {
    // By time in force, then version: two snapshots of one instant keep the later one last.
    let rows: Vec<MarketRow> = sqlx::query_as(
        "SELECT version, btc_usd, difficulty, subsidy_btc, fees_btc_per_block, effective_from, \
         effective_from_ms FROM market_snapshots ORDER BY effective_from_ms, version",
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(MarketRecord::try_from).collect()
}

pub(super) async fn set_dr_terms(
    pool: &SqlitePool,
    terms: &DrTermsRecord,
) -> Result<DrTermsRecord, StoreError> {
    for (what, v) in [
        ("pay_usd_per_mwh", terms.pay_usd_per_mwh),
        ("peak_charge_usd_per_kw", terms.peak_charge_usd_per_kw),
    ] {
        if v.is_some_and(|v| v < Decimal::ZERO) {
            return Err(StoreError::Invalid(format!(
                "{what} must be zero or more, not {}",
                v.unwrap_or_default()
            )));
        }
    }
    let mut tx = begin_write(pool).await?;
    if !exists(
        &mut tx,
        "SELECT 1 FROM dr_events WHERE id = ?",
        &terms.event_id,
    )
    .await?
    {
        return Err(StoreError::not_found("DR event", &terms.event_id));
    }
    sqlx::query(
        "INSERT INTO dr_terms (event_id, pay_usd_per_mwh, peak_charge_usd_per_kw) \
         VALUES (?, ?, ?) ON CONFLICT (event_id) DO UPDATE SET \
         pay_usd_per_mwh = excluded.pay_usd_per_mwh, \
         peak_charge_usd_per_kw = excluded.peak_charge_usd_per_kw",
    )
    .bind(&terms.event_id)
    .bind(terms.pay_usd_per_mwh.map(|d| d.to_string()))
    .bind(terms.peak_charge_usd_per_kw.map(|d| d.to_string()))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(terms.clone())
}

pub(super) async fn dr_terms(
    pool: &SqlitePool,
    site: Option<&str>,
) -> Result<Vec<DrTermsRecord>, StoreError> {
    let rows: Vec<(String, Option<String>, Option<String>)> =
        match site {
            Some(site) => sqlx::query_as(
                "SELECT t.event_id, t.pay_usd_per_mwh, t.peak_charge_usd_per_kw FROM dr_terms t \
                 JOIN dr_events e ON e.id = t.event_id WHERE e.site = ? ORDER BY t.event_id",
            )
            .bind(site)
            .fetch_all(pool)
            .await?,
            None => {
                sqlx::query_as(
                    "SELECT event_id, pay_usd_per_mwh, peak_charge_usd_per_kw FROM dr_terms \
                 ORDER BY event_id",
                )
                .fetch_all(pool)
                .await?
            }
        };
    rows.into_iter()
        .map(|(event_id, pay, peak)| {
            Ok(DrTermsRecord {
                event_id,
                pay_usd_per_mwh: pay
                    .map(|p| parse_decimal("pay_usd_per_mwh", &p))
                    .transpose()?,
                peak_charge_usd_per_kw: peak
                    .map(|p| parse_decimal("peak_charge_usd_per_kw", &p))
                    .transpose()?,
            })
        })
        .collect()
}
