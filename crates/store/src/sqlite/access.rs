//! Who may call: tenants (plan, contact, limits, balance) and their API keys (allow-list,
//! expiry, class, limits, revocation), gateways, site agents, the control plane's own tokens —
//! all credentials stored as SHA-256 hashes — and the versions watchers long-poll on.
//!
//! Limits and allow-lists are stored as JSON text: one shape for tenants and keys, and a
//! column that a later limit kind does not have to migrate.

use std::collections::BTreeMap;

use sqlx::{FromRow, SqlitePool};
use wattmesh_proto::api::{BillingPlan, KeyPriority, Limits, TenantSpec};

use super::fleet::exists;
use super::{begin_write, conflict_on_duplicate, from_i64, now, parse_decimal, to_i64};
use crate::StoreError;
use crate::records::{ApiKeyRecord, GatewayRecord, NewApiKey, TenantRecord, validate_name};

/// Longest free-text field (a tenant's contact, a key's label, who revoked a key): enough for
/// any e-mail address, short enough that a listing stays readable.
const MAX_TEXT_LEN: usize = 256;

fn check_text(what: &str, text: Option<&str>) -> Result<(), StoreError> {
    match text {
        Some(t) if t.len() > MAX_TEXT_LEN => Err(StoreError::Invalid(format!(
            "{what} is at most {MAX_TEXT_LEN} bytes"
        ))),
        _ => Ok(()),
    }
}

fn check_limits(limits: &Limits) -> Result<(), StoreError> {
    limits.validate().map_err(StoreError::Invalid)
}

fn limits_to_json(limits: &Limits) -> Result<String, StoreError> {
    serde_json::to_string(limits)
        .map_err(|e| StoreError::Invalid(format!("limits do not serialize: {e}")))
}

fn limits_from_json(s: &str) -> Result<Limits, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Invalid(format!("stored limits {s:?}: {e}")))
}

#[derive(FromRow)]
struct TenantRow {
    name: String,
    plan: String,
    contact: Option<String>,
    limits: String,
    balance: String,
    created_at: String,
}

impl TryFrom<TenantRow> for TenantRecord {
    type Error = StoreError;
    fn try_from(r: TenantRow) -> Result<Self, StoreError> {
        Ok(TenantRecord {
            plan: BillingPlan::parse(&r.plan)
                .ok_or_else(|| StoreError::Invalid(format!("stored plan {:?}", r.plan)))?,
            limits: limits_from_json(&r.limits)?,
            balance: parse_decimal("balance", &r.balance)?,
            name: r.name,
            contact: r.contact,
            created_at: r.created_at,
        })
    }
}

const TENANT_COLUMNS: &str = "SELECT name, plan, contact, limits, balance, created_at FROM tenants";

#[derive(FromRow)]
struct ApiKeyRow {
    id: String,
    tenant: String,
    name: Option<String>,
    prefix: String,
    secret_sha256: String,
    created_at: String,
    models: Option<String>,
    expires_at: Option<String>,
    expires_at_ms: Option<i64>,
    priority: String,
    limits: String,
    revoked_at: Option<String>,
    revoked_by: Option<String>,
    last_used_ms: Option<i64>,
}

impl TryFrom<ApiKeyRow> for ApiKeyRecord {
    type Error = StoreError;
    fn try_from(r: ApiKeyRow) -> Result<Self, StoreError> {
        let models = r
            .models
            .map(|m| {
                serde_json::from_str::<Vec<String>>(&m)
                    .map_err(|e| StoreError::Invalid(format!("stored models {m:?}: {e}")))
            })
            .transpose()?;
        Ok(ApiKeyRecord {
            models,
            priority: KeyPriority::parse(&r.priority)
                .ok_or_else(|| StoreError::Invalid(format!("stored priority {:?}", r.priority)))?,
            limits: limits_from_json(&r.limits)?,
            id: r.id,
            tenant: r.tenant,
            name: r.name,
            prefix: r.prefix,
            secret_sha256: r.secret_sha256,
            created_at: r.created_at,
            expires_at: r.expires_at,
            expires_at_ms: r.expires_at_ms,
            revoked_at: r.revoked_at,
            revoked_by: r.revoked_by,
            last_used_ms: r.last_used_ms,
        })
    }
}

const KEY_COLUMNS: &str = "SELECT id, tenant, name, prefix, secret_sha256, created_at, models, \
                           expires_at, expires_at_ms, priority, limits, revoked_at, revoked_by, \
                           last_used_ms FROM api_keys";

#[derive(FromRow)]
struct GatewayRow {
    name: String,
    created_at: String,
    rotated_at: Option<String>,
}

impl From<GatewayRow> for GatewayRecord {
    fn from(r: GatewayRow) -> Self {
        GatewayRecord {
            name: r.name,
            created_at: r.created_at,
            rotated_at: r.rotated_at,
        }
    }
}

const GATEWAY_COLUMNS: &str = "SELECT name, created_at, rotated_at FROM gateways";

// --- tenants ---

pub(super) async fn create_tenant(
    pool: &SqlitePool,
    spec: &TenantSpec,
) -> Result<TenantRecord, StoreError> {
    validate_name("tenant", &spec.name)?;
    check_text("a tenant's contact", spec.contact.as_deref())?;
    check_limits(&spec.limits)?;
    sqlx::query(
        "INSERT INTO tenants (name, plan, contact, limits, balance, created_at) \
         VALUES (?, ?, ?, ?, '0', ?)",
    )
    .bind(&spec.name)
    .bind(spec.plan.as_str())
    .bind(&spec.contact)
    .bind(limits_to_json(&spec.limits)?)
    .bind(now())
    .execute(pool)
    .await
    .map_err(|e| conflict_on_duplicate(e, "tenant", &spec.name))?;
    get_tenant(pool, &spec.name).await
}

pub(super) async fn list_tenants(pool: &SqlitePool) -> Result<Vec<TenantRecord>, StoreError> {
    let rows: Vec<TenantRow> = sqlx::query_as(&format!("{TENANT_COLUMNS} ORDER BY name"))
        .fetch_all(pool)
        .await?;
    rows.into_iter().map(TenantRecord::try_from).collect()
}

pub(super) async fn get_tenant(pool: &SqlitePool, name: &str) -> Result<TenantRecord, StoreError> {
    let row: Option<TenantRow> = sqlx::query_as(&format!("{TENANT_COLUMNS} WHERE name = ?"))
        .bind(name)
        .fetch_optional(pool)
        .await?;
    row.ok_or_else(|| StoreError::not_found("tenant", name))?
        .try_into()
}

pub(super) async fn set_tenant_limits(
    pool: &SqlitePool,
    name: &str,
    limits: &Limits,
) -> Result<TenantRecord, StoreError> {
    check_limits(limits)?;
    let done = sqlx::query("UPDATE tenants SET limits = ? WHERE name = ?")
        .bind(limits_to_json(limits)?)
        .bind(name)
        .execute(pool)
        .await?;
    if done.rows_affected() == 0 {
        return Err(StoreError::not_found("tenant", name));
    }
    get_tenant(pool, name).await
}

// --- API keys ---

pub(super) async fn create_api_key(
    pool: &SqlitePool,
    key: &NewApiKey,
) -> Result<ApiKeyRecord, StoreError> {
    check_text("a key's name", key.name.as_deref())?;
    check_limits(&key.limits)?;
    // An empty allow-list would refuse every request: refused as a mistake, like a limit of 0.
    if key.models.as_ref().is_some_and(Vec::is_empty) {
        return Err(StoreError::Invalid(
            "a key's models list needs at least one model (leave it out for every model)".into(),
        ));
    }
    let models = key
        .models
        .as_ref()
        .map(|m| {
            serde_json::to_string(m)
                .map_err(|e| StoreError::Invalid(format!("models do not serialize: {e}")))
        })
        .transpose()?;
    let mut tx = begin_write(pool).await?;
    if !exists(&mut tx, "SELECT 1 FROM tenants WHERE name = ?", &key.tenant).await? {
        return Err(StoreError::not_found("tenant", &key.tenant));
    }
    // Checked here, in the same transaction as the insert, so a typo in the allow-list fails
    // loudly instead of making a key that can never call the model meant.
    for model in key.models.iter().flatten() {
        if !exists(&mut tx, "SELECT 1 FROM models WHERE name = ?", model).await? {
            return Err(StoreError::not_found("model", model));
        }
    }
    let (expires_at, expires_at_ms) = match &key.expires_at {
        Some((text, ms)) => (Some(text.as_str()), Some(*ms)),
        None => (None, None),
    };
    sqlx::query(
        "INSERT INTO api_keys (id, tenant, name, prefix, secret_sha256, created_at, revoked, \
         models, expires_at, expires_at_ms, priority, limits) \
         VALUES (?, ?, ?, ?, ?, ?, FALSE, ?, ?, ?, ?, ?)",
    )
    .bind(&key.id)
    .bind(&key.tenant)
    .bind(&key.name)
    .bind(&key.prefix)
    .bind(&key.secret_sha256)
    .bind(now())
    .bind(models)
    .bind(expires_at)
    .bind(expires_at_ms)
    .bind(key.priority.as_str())
    .bind(limits_to_json(&key.limits)?)
    .execute(&mut *tx)
    .await
    .map_err(|e| conflict_on_duplicate(e, "api key", &key.id))?;
    tx.commit().await?;
    get_api_key(pool, &key.id).await
}

async fn get_api_key(pool: &SqlitePool, id: &str) -> Result<ApiKeyRecord, StoreError> {
    let row: Option<ApiKeyRow> = sqlx::query_as(&format!("{KEY_COLUMNS} WHERE id = ?"))
        .bind(id)
        .fetch_optional(pool)
        .await?;
    row.ok_or_else(|| StoreError::not_found("api key", id))?
        .try_into()
}

pub(super) async fn list_api_keys(pool: &SqlitePool) -> Result<Vec<ApiKeyRecord>, StoreError> {
    let rows: Vec<ApiKeyRow> = sqlx::query_as(&format!("{KEY_COLUMNS} ORDER BY created_at, id"))
        .fetch_all(pool)
        .await?;
    rows.into_iter().map(ApiKeyRecord::try_from).collect()
}

pub(super) async fn revoke_api_key(
    pool: &SqlitePool,
    id: &str,
    by: &str,
) -> Result<ApiKeyRecord, StoreError> {
    check_text("who revoked a key", Some(by))?;
    let mut tx = begin_write(pool).await?;
    let row: Option<(Option<String>,)> =
        sqlx::query_as("SELECT revoked_at FROM api_keys WHERE id = ?")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    match row {
        None => return Err(StoreError::not_found("api key", id)),
        // The first revocation's time and author are what the audit trail keeps.
        Some((Some(at),)) => {
            return Err(StoreError::Conflict(format!(
                "api key {id:?} was revoked at {at}"
            )));
        }
        Some((None,)) => {}
    }
    // `revoked` is 0001's flag; kept in step so the two columns never disagree.
    sqlx::query("UPDATE api_keys SET revoked = TRUE, revoked_at = ?, revoked_by = ? WHERE id = ?")
        .bind(now())
        .bind(by)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    get_api_key(pool, id).await
}

// --- gateways ---

pub(super) async fn create_gateway(
    pool: &SqlitePool,
    name: &str,
    token_sha256: &str,
) -> Result<GatewayRecord, StoreError> {
    validate_name("gateway", name)?;
    sqlx::query("INSERT INTO gateways (name, token_sha256, created_at) VALUES (?, ?, ?)")
        .bind(name)
        .bind(token_sha256)
        .bind(now())
        .execute(pool)
        .await
        .map_err(|e| conflict_on_duplicate(e, "gateway", name))?;
    get_gateway(pool, name).await
}

pub(super) async fn rotate_gateway(
    pool: &SqlitePool,
    name: &str,
    token_sha256: &str,
) -> Result<GatewayRecord, StoreError> {
    // One row holds one hash, so replacing it is what makes the old token stop working.
    let done = sqlx::query("UPDATE gateways SET token_sha256 = ?, rotated_at = ? WHERE name = ?")
        .bind(token_sha256)
        .bind(now())
        .bind(name)
        .execute(pool)
        .await
        .map_err(|e| conflict_on_duplicate(e, "gateway token of", name))?;
    if done.rows_affected() == 0 {
        return Err(StoreError::not_found("gateway", name));
    }
    get_gateway(pool, name).await
}

async fn get_gateway(pool: &SqlitePool, name: &str) -> Result<GatewayRecord, StoreError> {
    let row: Option<GatewayRow> = sqlx::query_as(&format!("{GATEWAY_COLUMNS} WHERE name = ?"))
        .bind(name)
        .fetch_optional(pool)
        .await?;
    Ok(row
        .ok_or_else(|| StoreError::not_found("gateway", name))?
        .into())
}

pub(super) async fn list_gateways(pool: &SqlitePool) -> Result<Vec<GatewayRecord>, StoreError> {
    let rows: Vec<GatewayRow> = sqlx::query_as(&format!("{GATEWAY_COLUMNS} ORDER BY name"))
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().map(GatewayRecord::from).collect())
}

pub(super) async fn gateway_by_token(
    pool: &SqlitePool,
    token_sha256: &str,
) -> Result<Option<String>, StoreError> {
    let row: Option<(String,)> = sqlx::query_as("SELECT name FROM gateways WHERE token_sha256 = ?")
        .bind(token_sha256)
        .fetch_optional(pool)
        .await?;
    Ok(row.map(|(name,)| name))
}

// --- agents ---

pub(super) async fn agent_site(
    pool: &SqlitePool,
    token_sha256: &str,
) -> Result<Option<String>, StoreError> {
    let row: Option<(String,)> = sqlx::query_as("SELECT site FROM agents WHERE token_sha256 = ?")
        .bind(token_sha256)
        .fetch_optional(pool)
        .await?;
    Ok(row.map(|(site,)| site))
}

// --- secrets ---

pub(super) async fn secret(pool: &SqlitePool, name: &str) -> Result<Option<String>, StoreError> {
    let row: Option<(String,)> = sqlx::query_as("SELECT sha256 FROM secrets WHERE name = ?")
        .bind(name)
        .fetch_optional(pool)
        .await?;
    Ok(row.map(|(h,)| h))
}

pub(super) async fn insert_secret(
    pool: &SqlitePool,
    name: &str,
    sha256: &str,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO secrets (name, sha256, created_at) VALUES (?, ?, ?)")
        .bind(name)
        .bind(sha256)
        .bind(now())
        .execute(pool)
        .await
        .map_err(|e| conflict_on_duplicate(e, "secret", name))?;
    Ok(())
}

// --- versions ---

pub(super) async fn versions(pool: &SqlitePool) -> Result<BTreeMap<String, u64>, StoreError> {
    let rows: Vec<(String, i64)> = sqlx::query_as("SELECT scope, version FROM versions")
        .fetch_all(pool)
        .await?;
    rows.into_iter()
        .map(|(scope, v)| Ok((scope, from_i64("version", v)?)))
        .collect()
}

pub(super) async fn set_version(
    pool: &SqlitePool,
    scope: &str,
    version: u64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO versions (scope, version) VALUES (?, ?) \
         ON CONFLICT (scope) DO UPDATE SET version = excluded.version",
    )
    .bind(scope)
    .bind(to_i64("version", version)?)
    .execute(pool)
    .await?;
    Ok(())
}
