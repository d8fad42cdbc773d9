//! Dedicated deployments' money: their versioned price per replica-hour, and the replica time
//! they held, accrued per hour. Kept apart from token billing (`billing.rs`) because it is
//! billed for time held, used or not.

use sqlx::{FromRow, SqlitePool};
use wattmesh_proto::billing::DedicatedPrice;

use super::billing::check_price;
use super::fleet::exists;
use super::{begin_write, from_i64, now, parse_decimal, to_i64};
use crate::StoreError;
use crate::records::{NewDedicatedPrice, ReplicaSeconds};

#[derive(FromRow)]
struct DedicatedPriceRow {
    version: i64,
    deployment: String,
    per_replica_hour: String,
    currency: String,
    effective_from: String,
    effective_from_ms: i64,
}

impl TryFrom<DedicatedPriceRow> for DedicatedPrice {
    type Error = StoreError;
    fn try_from(r: DedicatedPriceRow) -> Result<Self, StoreError> {
        Ok(DedicatedPrice {
            version: from_i64("dedicated price version", r.version)?,
            per_replica_hour: parse_decimal("per_replica_hour", &r.per_replica_hour)?,
            deployment: r.deployment,
            currency: r.currency,
            effective_from: r.effective_from,
            effective_from_ms: r.effective_from_ms,
        })
    }
}

pub(super) async fn add_dedicated_price(
    pool: &SqlitePool,
    price: &NewDedicatedPrice,
) -> Result<DedicatedPrice, StoreError> {
    check_price(
        "a price per replica-hour",
        &[price.per_replica_hour],
        &price.currency,
    )?;
    let mut tx = begin_write(pool).await?;
    let dedicated: Option<(Option<String>,)> =
        sqlx::query_as("SELECT dedicated_to FROM deployments WHERE name = ?")
            .bind(&price.deployment)
            .fetch_optional(&mut *tx)
            .await?;
    match dedicated {
        None => return Err(StoreError::not_found("deployment", &price.deployment)),
        Some((None,)) => {
            return Err(StoreError::Invalid(format!(
                "deployment {:?} is not dedicated to a tenant: it is billed per token",
                price.deployment
            )));
        }
        Some((Some(_),)) => {}
    }
    let done = sqlx::query(
        "INSERT INTO dedicated_prices (deployment, per_replica_hour, currency, effective_from, \
         effective_from_ms, created_at) VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(&price.deployment)
    .bind(price.per_replica_hour.to_string())
    .bind(&price.currency)
    .bind(&price.effective_from)
    .bind(price.effective_from_ms)
    .bind(now())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(DedicatedPrice {
        version: from_i64("dedicated price version", done.last_insert_rowid())?,
        deployment: price.deployment.clone(),
        per_replica_hour: price.per_replica_hour,
        currency: price.currency.clone(),
        effective_from: price.effective_from.clone(),
        effective_from_ms: price.effective_from_ms,
    })
}

pub(super) async fn list_dedicated_prices(
    pool: &SqlitePool,
) -> Result<Vec<DedicatedPrice>, StoreError> {
    let rows: Vec<DedicatedPriceRow> = sqlx::query_as(
        "SELECT version, deployment, per_replica_hour, currency, effective_from, \
         effective_from_ms FROM dedicated_prices ORDER BY version",
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(DedicatedPrice::try_from).collect()
}

pub(super) async fn accrue_replica_seconds(
    pool: &SqlitePool,
    accrued: &[ReplicaSeconds],
) -> Result<(), StoreError> {
    if accrued.is_empty() {
        return Ok(());
    }
    let mut tx = begin_write(pool).await?;
    for a in accrued {
        sqlx::query(
            "INSERT INTO replica_seconds (deployment, tenant, hour_start_ms, seconds) \
             VALUES (?, ?, ?, ?) ON CONFLICT (deployment, hour_start_ms) \
             DO UPDATE SET seconds = seconds + excluded.seconds",
        )
        .bind(&a.deployment)
        .bind(&a.tenant)
        .bind(a.hour_start_ms)
        .bind(to_i64("seconds", a.seconds)?)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

pub(super) async fn replica_seconds(
    pool: &SqlitePool,
    tenant: &str,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<ReplicaSeconds>, StoreError> {
    let mut conn = pool.acquire().await?;
    if !exists(&mut conn, "SELECT 1 FROM tenants WHERE name = ?", tenant).await? {
        return Err(StoreError::not_found("tenant", tenant));
    }
    let rows: Vec<(String, String, i64, i64)> = sqlx::query_as(
        "SELECT deployment, tenant, hour_start_ms, seconds FROM replica_seconds \
         WHERE tenant = ? AND hour_start_ms >= ? AND hour_start_ms < ? \
         ORDER BY deployment, hour_start_ms",
    )
    .bind(tenant)
    .bind(from_ms)
    .bind(to_ms)
    .fetch_all(&mut *conn)
    .await?;
    rows.into_iter()
        .map(|(deployment, tenant, hour_start_ms, seconds)| {
            Ok(ReplicaSeconds {
                deployment,
                tenant,
                hour_start_ms,
                seconds: from_i64("replica seconds", seconds)?,
            })
        })
        .collect()
}
