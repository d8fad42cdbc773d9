//! Regions, sites and nodes: the fleet's capacity, created by the operator or by agents as
//! they register, and kept fresh by heartbeats.

use std::str::FromStr;

use rust_decimal::Decimal;
use sqlx::{FromRow, SqlitePool};
use wattmesh_proto::agent::NodeReport;
use wattmesh_proto::api::{NodeSpec, Region, SiteSpec};

use super::{begin_write, conflict_on_duplicate, from_i64, now, to_i64};
use crate::StoreError;
use crate::records::{AgentRegistration, NodeRecord, SiteHeartbeat, SiteRecord, validate_name};

#[derive(FromRow)]
struct SiteRow {
    name: String,
    region: String,
    power_price: String,
    last_heartbeat: Option<String>,
}

impl TryFrom<SiteRow> for SiteRecord {
    type Error = StoreError;
    fn try_from(r: SiteRow) -> Result<Self, StoreError> {
        Ok(SiteRecord {
            power_price_usd_per_mwh: parse_price(&r.power_price)?,
            name: r.name,
            region: r.region,
            last_heartbeat: r.last_heartbeat,
        })
    }
}

#[derive(FromRow)]
struct NodeRow {
    name: String,
    site: String,
    region: String,
    memory_bytes: i64,
    power_price: String,
}

impl TryFrom<NodeRow> for NodeRecord {
    type Error = StoreError;
    fn try_from(r: NodeRow) -> Result<Self, StoreError> {
        Ok(NodeRecord {
            memory_bytes: from_i64("memory_bytes", r.memory_bytes)?,
            power_price_usd_per_mwh: parse_price(&r.power_price)?,
            name: r.name,
            site: r.site,
            region: r.region,
        })
    }
}

fn parse_price(s: &str) -> Result<Decimal, StoreError> {
    Decimal::from_str(s).map_err(|_| StoreError::Invalid(format!("stored power price {s:?}")))
}

const SITE_COLUMNS: &str = "SELECT name, region, power_price, last_heartbeat FROM sites";
const NODE_COLUMNS: &str = "SELECT n.name, n.site, s.region, n.memory_bytes, s.power_price \
                            FROM nodes n JOIN sites s ON s.name = n.site";

// --- regions ---

pub(super) async fn create_region(pool: &SqlitePool, name: &str) -> Result<Region, StoreError> {
    validate_name("region", name)?;
    sqlx::query("INSERT INTO regions (name, created_at) VALUES (?, ?)")
        .bind(name)
        .bind(now())
        .execute(pool)
        .await
        .map_err(|e| conflict_on_duplicate(e, "region", name))?;
    Ok(Region {
        name: name.to_owned(),
    })
}

pub(super) async fn list_regions(pool: &SqlitePool) -> Result<Vec<Region>, StoreError> {
    let names: Vec<(String,)> = sqlx::query_as("SELECT name FROM regions ORDER BY name")
        .fetch_all(pool)
        .await?;
    Ok(names.into_iter().map(|(name,)| Region { name }).collect())
}

pub(super) async fn delete_region(pool: &SqlitePool, name: &str) -> Result<(), StoreError> {
    let mut tx = begin_write(pool).await?;
    let sites: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM sites WHERE region = ?")
        .bind(name)
        .fetch_one(&mut *tx)
        .await?;
    if sites.0 > 0 {
        return Err(StoreError::Conflict(format!(
            "region {name:?} still has {} site(s); move or remove them first",
            sites.0
        )));
    }
    let done = sqlx::query("DELETE FROM regions WHERE name = ?")
        .bind(name)
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(StoreError::not_found("region", name));
    }
    tx.commit().await?;
    Ok(())
}

// --- sites ---

pub(super) async fn create_site(
    pool: &SqlitePool,
    site: &SiteSpec,
) -> Result<SiteRecord, StoreError> {
    validate_name("site", &site.name)?;
    let mut tx = begin_write(pool).await?;
    // Checked first so the caller learns which reference is missing; the foreign key stays
    // the backstop.
    if !exists(
        &mut tx,
        "SELECT 1 FROM regions WHERE name = ?",
        &site.region,
    )
    .await?
    {
        return Err(StoreError::not_found("region", &site.region));
    }
    sqlx::query("INSERT INTO sites (name, region, power_price, created_at) VALUES (?, ?, ?, ?)")
        .bind(&site.name)
        .bind(&site.region)
        .bind(site.power_price_usd_per_mwh.to_string())
        .bind(now())
        .execute(&mut *tx)
        .await
        .map_err(|e| conflict_on_duplicate(e, "site", &site.name))?;
    tx.commit().await?;
    get_site(pool, &site.name).await
}

pub(super) async fn list_sites(pool: &SqlitePool) -> Result<Vec<SiteRecord>, StoreError> {
    let rows: Vec<SiteRow> = sqlx::query_as(&format!("{SITE_COLUMNS} ORDER BY name"))
        .fetch_all(pool)
        .await?;
    rows.into_iter().map(SiteRecord::try_from).collect()
}

pub(super) async fn get_site(pool: &SqlitePool, name: &str) -> Result<SiteRecord, StoreError> {
    let row: Option<SiteRow> = sqlx::query_as(&format!("{SITE_COLUMNS} WHERE name = ?"))
        .bind(name)
        .fetch_optional(pool)
        .await?;
    row.ok_or_else(|| StoreError::not_found("site", name))?
        .try_into()
}

// --- nodes ---

pub(super) async fn create_node(
    pool: &SqlitePool,
    node: &NodeSpec,
) -> Result<NodeRecord, StoreError> {
    validate_name("node", &node.name)?;
    let memory = to_i64("memory_bytes", node.memory_bytes)?;
    let mut tx = begin_write(pool).await?;
    if !exists(&mut tx, "SELECT 1 FROM sites WHERE name = ?", &node.site).await? {
        return Err(StoreError::not_found("site", &node.site));
    }
    sqlx::query("INSERT INTO nodes (name, site, memory_bytes, created_at) VALUES (?, ?, ?, ?)")
        .bind(&node.name)
        .bind(&node.site)
        .bind(memory)
        .bind(now())
        .execute(&mut *tx)
        .await
        .map_err(|e| conflict_on_duplicate(e, "node", &node.name))?;
    tx.commit().await?;
    let row: NodeRow = sqlx::query_as(&format!("{NODE_COLUMNS} WHERE n.name = ?"))
        .bind(&node.name)
        .fetch_one(pool)
        .await?;
    row.try_into()
}

pub(super) async fn list_nodes(pool: &SqlitePool) -> Result<Vec<NodeRecord>, StoreError> {
    let rows: Vec<NodeRow> = sqlx::query_as(&format!("{NODE_COLUMNS} ORDER BY n.name"))
        .fetch_all(pool)
        .await?;
    rows.into_iter().map(NodeRecord::try_from).collect()
}

// --- agents ---

pub(super) async fn register_agent(
    pool: &SqlitePool,
    reg: &AgentRegistration,
) -> Result<(), StoreError> {
    validate_name("region", &reg.region)?;
    validate_name("site", &reg.site)?;
    for n in &reg.nodes {
        validate_name("node", &n.name)?;
        to_i64("memory_bytes", n.memory_bytes)?;
    }
    let at = now();
    let mut tx = begin_write(pool).await?;
    sqlx::query(
        "INSERT INTO regions (name, created_at) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
    )
    .bind(&reg.region)
    .bind(&at)
    .execute(&mut *tx)
    .await?;
    let known: Option<(String,)> = sqlx::query_as("SELECT region FROM sites WHERE name = ?")
        .bind(&reg.site)
        .fetch_optional(&mut *tx)
        .await?;
    match known {
        Some((region,)) if region != reg.region => {
            return Err(StoreError::Conflict(format!(
                "site {:?} is in region {region:?}, not {:?}",
                reg.site, reg.region
            )));
        }
        Some(_) => {
            if let Some(price) = reg.power_price_usd_per_mwh {
                sqlx::query("UPDATE sites SET power_price = ? WHERE name = ?")
                    .bind(price.to_string())
                    .bind(&reg.site)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        None => {
            let price = reg.power_price_usd_per_mwh.unwrap_or(Decimal::ZERO);
            sqlx::query(
                "INSERT INTO sites (name, region, power_price, created_at) VALUES (?, ?, ?, ?)",
            )
            .bind(&reg.site)
            .bind(&reg.region)
            .bind(price.to_string())
            .bind(&at)
            .execute(&mut *tx)
            .await?;
        }
    }
    for node in &reg.nodes {
        if !upsert_node(&mut tx, &reg.site, node, &at).await? {
            return Err(StoreError::Conflict(format!(
                "node {:?} belongs to another site",
                node.name
            )));
        }
    }
    sqlx::query(
        "INSERT INTO agents (site, token_sha256, created_at) VALUES (?, ?, ?) \
         ON CONFLICT (site) DO UPDATE SET token_sha256 = excluded.token_sha256, \
         created_at = excluded.created_at",
    )
    .bind(&reg.site)
    .bind(&reg.token_sha256)
    .bind(&at)
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE sites SET last_heartbeat = ? WHERE name = ?")
        .bind(&at)
        .bind(&reg.site)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn record_heartbeat(
    pool: &SqlitePool,
    hb: SiteHeartbeat<'_>,
) -> Result<bool, StoreError> {
    let at = now();
    let mut tx = begin_write(pool).await?;
    let updated = sqlx::query("UPDATE sites SET last_heartbeat = ? WHERE name = ?")
        .bind(&at)
        .bind(hb.site)
        .execute(&mut *tx)
        .await?;
    if updated.rows_affected() == 0 {
        return Err(StoreError::not_found("site", hb.site));
    }
    let mut changed = false;
    for node in hb.nodes {
        if validate_name("node", &node.name).is_err() || to_i64("", node.memory_bytes).is_err() {
            tracing::warn!(site = hb.site, node = %node.name, "heartbeat names an invalid node; skipped");
            continue;
        }
        let before = node_memory(&mut tx, &node.name).await?;
        if !upsert_node(&mut tx, hb.site, node, &at).await? {
            tracing::warn!(site = hb.site, node = %node.name, "heartbeat names another site's node; skipped");
            continue;
        }
        changed |= before != Some(node.memory_bytes);
    }
    for report in hb.replicas {
        // Only replicas on this site's nodes, and only real changes, so an unchanged
        // heartbeat writes nothing the watchers would have to look at.
        let done = sqlx::query(
            "UPDATE replicas SET state = ?, endpoint = ?, message = ? \
             WHERE id = ? AND node IN (SELECT name FROM nodes WHERE site = ?) \
             AND (state IS NOT ? OR endpoint IS NOT ? OR message IS NOT ?)",
        )
        .bind(report.state.as_str())
        .bind(&report.endpoint)
        .bind(&report.message)
        .bind(&report.id)
        .bind(hb.site)
        .bind(report.state.as_str())
        .bind(&report.endpoint)
        .bind(&report.message)
        .execute(&mut *tx)
        .await?;
        changed |= done.rows_affected() > 0;
    }
    tx.commit().await?;
    Ok(changed)
}

/// Inserts the node on `site` or updates its memory; false when the name is another site's.
async fn upsert_node(
    tx: &mut sqlx::SqliteConnection,
    site: &str,
    node: &NodeReport,
    at: &str,
) -> Result<bool, StoreError> {
    let owner: Option<(String,)> = sqlx::query_as("SELECT site FROM nodes WHERE name = ?")
        .bind(&node.name)
        .fetch_optional(&mut *tx)
        .await?;
    let memory = to_i64("memory_bytes", node.memory_bytes)?;
    match owner {
        Some((owner,)) if owner != site => Ok(false),
        Some(_) => {
            sqlx::query("UPDATE nodes SET memory_bytes = ? WHERE name = ?")
                .bind(memory)
                .bind(&node.name)
                .execute(&mut *tx)
                .await?;
            Ok(true)
        }
        None => {
            sqlx::query(
                "INSERT INTO nodes (name, site, memory_bytes, created_at) VALUES (?, ?, ?, ?)",
            )
            .bind(&node.name)
            .bind(site)
            .bind(memory)
            .bind(at)
            .execute(&mut *tx)
            .await?;
            Ok(true)
        }
    }
}

async fn node_memory(
    tx: &mut sqlx::SqliteConnection,
    name: &str,
) -> Result<Option<u64>, StoreError> {
    let row: Option<(i64,)> = sqlx::query_as("SELECT memory_bytes FROM nodes WHERE name = ?")
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
    row.map(|(m,)| from_i64("memory_bytes", m)).transpose()
}

pub(super) async fn exists(
    tx: &mut sqlx::SqliteConnection,
    sql: &str,
    key: &str,
) -> Result<bool, StoreError> {
    let row: Option<(i64,)> = sqlx::query_as(sql)
        .bind(key)
        .fetch_optional(&mut *tx)
        .await?;
    Ok(row.is_some())
}
