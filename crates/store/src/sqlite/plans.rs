//! The live power plan: sites' power models and the plans made for them, with their agents'
//! reports. The JSON columns hold types other crates define; a stored value that no longer
//! parses is an error naming the row, never a silently dropped plan.

use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::{FromRow, SqlitePool};
use wattmesh_domain::planner::SiteSpec;
use wattmesh_proto::plan::PlanReport;

use super::fleet::exists;
use super::{begin_write, conflict_on_duplicate};
use crate::StoreError;
use crate::records::{PowerModelRecord, PowerPlanRecord};

fn to_json(what: &str, value: &impl Serialize) -> Result<String, StoreError> {
    serde_json::to_string(value)
        .map_err(|e| StoreError::Invalid(format!("{what} cannot be stored: {e}")))
}

fn from_json<T: DeserializeOwned>(what: &str, key: &str, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Invalid(format!("stored {what} of {key:?} does not parse: {e}")))
}

#[derive(FromRow)]
struct ModelRow {
    site: String,
    spec_json: String,
    updated_at_ms: i64,
}

impl TryFrom<ModelRow> for PowerModelRecord {
    type Error = StoreError;
    fn try_from(r: ModelRow) -> Result<Self, StoreError> {
        Ok(PowerModelRecord {
            spec: from_json("power model", &r.site, &r.spec_json)?,
            site: r.site,
            updated_at_ms: r.updated_at_ms,
        })
    }
}

#[derive(FromRow)]
struct PlanRow {
    id: String,
    site: String,
    starts_at_ms: i64,
    ends_at_ms: i64,
    created_at_ms: i64,
    interval_json: String,
    directive_json: String,
    report_json: Option<String>,
}

impl TryFrom<PlanRow> for PowerPlanRecord {
    type Error = StoreError;
    fn try_from(r: PlanRow) -> Result<Self, StoreError> {
        Ok(PowerPlanRecord {
            interval: from_json("plan interval", &r.id, &r.interval_json)?,
            directive: from_json("plan directive", &r.id, &r.directive_json)?,
            report: r
                .report_json
                .as_deref()
                .map(|text| from_json("plan report", &r.id, text))
                .transpose()?,
            id: r.id,
            site: r.site,
            starts_at_ms: r.starts_at_ms,
            ends_at_ms: r.ends_at_ms,
            created_at_ms: r.created_at_ms,
        })
    }
}

const PLAN_COLUMNS: &str = "id, site, starts_at_ms, ends_at_ms, created_at_ms, interval_json, \
                            directive_json, report_json";

pub(super) async fn set_power_model(
    pool: &SqlitePool,
    site: &str,
    spec: &SiteSpec,
    at_ms: i64,
) -> Result<PowerModelRecord, StoreError> {
    let json = to_json("the power model", spec)?;
    let mut tx = begin_write(pool).await?;
    if !exists(&mut tx, "SELECT 1 FROM sites WHERE name = ?", site).await? {
        return Err(StoreError::not_found("site", site));
    }
    sqlx::query(
        "INSERT INTO site_power_models (site, spec_json, updated_at_ms) VALUES (?, ?, ?) \
         ON CONFLICT (site) DO UPDATE SET spec_json = excluded.spec_json, \
         updated_at_ms = excluded.updated_at_ms",
    )
    .bind(site)
    .bind(&json)
    .bind(at_ms)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(PowerModelRecord {
        site: site.to_owned(),
        spec: spec.clone(),
        updated_at_ms: at_ms,
    })
}

pub(super) async fn power_model(
    pool: &SqlitePool,
    site: &str,
) -> Result<PowerModelRecord, StoreError> {
    let row: Option<ModelRow> = sqlx::query_as(
        "SELECT site, spec_json, updated_at_ms FROM site_power_models WHERE site = ?",
    )
    .bind(site)
    .fetch_optional(pool)
    .await?;
    match row {
        Some(row) => row.try_into(),
        None => Err(StoreError::not_found("power model of site", site)),
    }
}

pub(super) async fn list_power_models(
    pool: &SqlitePool,
) -> Result<Vec<PowerModelRecord>, StoreError> {
    let rows: Vec<ModelRow> = sqlx::query_as(
        "SELECT site, spec_json, updated_at_ms FROM site_power_models ORDER BY site",
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(TryInto::try_into).collect()
}

pub(super) async fn add_power_plan(
    pool: &SqlitePool,
    plan: &PowerPlanRecord,
) -> Result<(), StoreError> {
    if plan.ends_at_ms <= plan.starts_at_ms {
        return Err(StoreError::Invalid(format!(
            "plan {:?} ends ({}) before it starts ({})",
            plan.id, plan.ends_at_ms, plan.starts_at_ms
        )));
    }
    let interval = to_json("the plan's interval", &plan.interval)?;
    let directive = to_json("the plan's directive", &plan.directive)?;
    let report = plan
        .report
        .as_ref()
        .map(|r| to_json("the plan's report", r))
        .transpose()?;
    let mut tx = begin_write(pool).await?;
    if !exists(&mut tx, "SELECT 1 FROM sites WHERE name = ?", &plan.site).await? {
        return Err(StoreError::not_found("site", &plan.site));
    }
    sqlx::query(&format!(
        "INSERT INTO power_plans ({PLAN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    ))
    .bind(&plan.id)
    .bind(&plan.site)
    .bind(plan.starts_at_ms)
    .bind(plan.ends_at_ms)
    .bind(plan.created_at_ms)
    .bind(&interval)
    .bind(&directive)
    .bind(&report)
    .execute(&mut *tx)
    .await
    .map_err(|e| conflict_on_duplicate(e, "plan", &plan.id))?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn report_power_plan(
    pool: &SqlitePool,
    id: &str,
    site: &str,
    report: &PlanReport,
) -> Result<(), StoreError> {
    let json = to_json("the plan's report", report)?;
    let done = sqlx::query("UPDATE power_plans SET report_json = ? WHERE id = ? AND site = ?")
        .bind(&json)
        .bind(id)
        .bind(site)
        .execute(pool)
        .await?;
    if done.rows_affected() == 0 {
        return Err(StoreError::not_found("plan", id));
    }
    Ok(())
}

pub(super) async fn power_plans(
    pool: &SqlitePool,
    site: &str,
    limit: u32,
) -> Result<Vec<PowerPlanRecord>, StoreError> {
    let rows: Vec<PlanRow> = sqlx::query_as(&format!(
        "SELECT {PLAN_COLUMNS} FROM power_plans WHERE site = ? \
         ORDER BY created_at_ms DESC, rowid DESC LIMIT ?"
    ))
    .bind(site)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(TryInto::try_into).collect()
}

pub(super) async fn current_power_plans(
    pool: &SqlitePool,
    now_ms: i64,
) -> Result<Vec<PowerPlanRecord>, StoreError> {
    // The newest row (by creation, then insertion) per site among those in force now.
    let rows: Vec<PlanRow> = sqlx::query_as(&format!(
        "SELECT {PLAN_COLUMNS} FROM power_plans p WHERE starts_at_ms <= ?1 AND ?1 < ends_at_ms \
         AND p.rowid = (SELECT q.rowid FROM power_plans q WHERE q.site = p.site \
           AND q.starts_at_ms <= ?1 AND ?1 < q.ends_at_ms \
           ORDER BY q.created_at_ms DESC, q.rowid DESC LIMIT 1) \
         ORDER BY site"
    ))
    .bind(now_ms)
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(TryInto::try_into).collect()
}
