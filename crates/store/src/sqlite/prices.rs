//! Sites' imported electricity prices: one row per interval. An import is one transaction that
//! first removes every point it overlaps, so a corrected file replaces the old figures instead
//! of sitting beside them.

use sqlx::{FromRow, SqlitePool};

use super::begin_write;
use super::fleet::exists;
use crate::StoreError;
use crate::records::SitePricePoint;

#[derive(FromRow)]
struct Row {
    starts_at_ms: i64,
    interval_s: i64,
    usd_per_mwh: f64,
}

pub(super) async fn import_site_prices(
    pool: &SqlitePool,
    site: &str,
    points: &[SitePricePoint],
) -> Result<u64, StoreError> {
    for p in points {
        if !p.usd_per_mwh.is_finite() || p.interval_s <= 0 {
            return Err(StoreError::Invalid(format!(
                "price at {} ms: {} USD/MWh over {} s is not a price",
                p.starts_at_ms, p.usd_per_mwh, p.interval_s
            )));
        }
    }
    let (Some(first), Some(end)) = (
        points.iter().map(|p| p.starts_at_ms).min(),
        points
            .iter()
            .map(|p| {
                p.starts_at_ms
                    .saturating_add(p.interval_s.saturating_mul(1000))
            })
            .max(),
    ) else {
        return Err(StoreError::Invalid("no prices to import".into()));
    };
    let mut tx = begin_write(pool).await?;
    if !exists(&mut tx, "SELECT 1 FROM sites WHERE name = ?", site).await? {
        return Err(StoreError::not_found("site", site));
    }
    let removed = sqlx::query(
        "DELETE FROM site_prices WHERE site = ? AND starts_at_ms < ? \
         AND starts_at_ms + interval_s * 1000 > ?",
    )
    .bind(site)
    .bind(end)
    .bind(first)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    for p in points {
        sqlx::query(
            "INSERT INTO site_prices (site, starts_at_ms, interval_s, usd_per_mwh) \
             VALUES (?, ?, ?, ?)",
        )
        .bind(site)
        .bind(p.starts_at_ms)
        .bind(p.interval_s)
        .bind(p.usd_per_mwh)
        .execute(&mut *tx)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                StoreError::Invalid(format!("two prices start at {} ms", p.starts_at_ms))
            }
            _ => StoreError::Db(e),
        })?;
    }
    tx.commit().await?;
    Ok(removed)
}

pub(super) async fn site_prices(
    pool: &SqlitePool,
    site: &str,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<SitePricePoint>, StoreError> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT starts_at_ms, interval_s, usd_per_mwh FROM site_prices \
         WHERE site = ? AND starts_at_ms < ? AND starts_at_ms + interval_s * 1000 > ? \
         ORDER BY starts_at_ms",
    )
    .bind(site)
    .bind(to_ms)
    .bind(from_ms)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| SitePricePoint {
            starts_at_ms: r.starts_at_ms,
            interval_s: r.interval_s,
            usd_per_mwh: r.usd_per_mwh,
        })
        .collect())
}
