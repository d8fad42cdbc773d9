//! Who may call: tenants and their API keys, site agents, the control plane's own tokens —
//! all stored as SHA-256 hashes — and the versions watchers long-poll on.

use std::collections::BTreeMap;

use sqlx::{FromRow, SqlitePool};
use wattmesh_proto::api::Tenant;

use super::fleet::exists;
use super::{begin_write, conflict_on_duplicate, from_i64, now, to_i64};
use crate::StoreError;
use crate::records::{ApiKeyRecord, NewApiKey, validate_name};

#[derive(FromRow)]
struct ApiKeyRow {
    id: String,
    tenant: String,
    name: Option<String>,
    prefix: String,
    secret_sha256: String,
    created_at: String,
    revoked: bool,
}

impl From<ApiKeyRow> for ApiKeyRecord {
    fn from(r: ApiKeyRow) -> Self {
        ApiKeyRecord {
            id: r.id,
            tenant: r.tenant,
            name: r.name,
            prefix: r.prefix,
            secret_sha256: r.secret_sha256,
            created_at: r.created_at,
            revoked: r.revoked,
        }
    }
}

const KEY_COLUMNS: &str =
    "SELECT id, tenant, name, prefix, secret_sha256, created_at, revoked FROM api_keys";

// --- tenants ---

pub(super) async fn create_tenant(pool: &SqlitePool, name: &str) -> Result<Tenant, StoreError> {
    validate_name("tenant", name)?;
    sqlx::query("INSERT INTO tenants (name, created_at) VALUES (?, ?)")
        .bind(name)
        .bind(now())
        .execute(pool)
        .await
        .map_err(|e| conflict_on_duplicate(e, "tenant", name))?;
    Ok(Tenant {
        name: name.to_owned(),
    })
}

pub(super) async fn list_tenants(pool: &SqlitePool) -> Result<Vec<Tenant>, StoreError> {
    let names: Vec<(String,)> = sqlx::query_as("SELECT name FROM tenants ORDER BY name")
        .fetch_all(pool)
        .await?;
    Ok(names.into_iter().map(|(name,)| Tenant { name }).collect())
}

// --- API keys ---

pub(super) async fn create_api_key(
    pool: &SqlitePool,
    key: &NewApiKey,
) -> Result<ApiKeyRecord, StoreError> {
    if key.name.as_ref().is_some_and(|n| n.len() > 256) {
        return Err(StoreError::Invalid(
            "a key's name is at most 256 bytes".into(),
        ));
    }
    let mut tx = begin_write(pool).await?;
    if !exists(&mut tx, "SELECT 1 FROM tenants WHERE name = ?", &key.tenant).await? {
        return Err(StoreError::not_found("tenant", &key.tenant));
    }
    sqlx::query(
        "INSERT INTO api_keys (id, tenant, name, prefix, secret_sha256, created_at, revoked) \
         VALUES (?, ?, ?, ?, ?, ?, FALSE)",
    )
    .bind(&key.id)
    .bind(&key.tenant)
    .bind(&key.name)
    .bind(&key.prefix)
    .bind(&key.secret_sha256)
    .bind(now())
    .execute(&mut *tx)
    .await
    .map_err(|e| conflict_on_duplicate(e, "api key", &key.id))?;
    tx.commit().await?;
    let row: ApiKeyRow = sqlx::query_as(&format!("{KEY_COLUMNS} WHERE id = ?"))
        .bind(&key.id)
        .fetch_one(pool)
        .await?;
    Ok(row.into())
}

pub(super) async fn list_api_keys(pool: &SqlitePool) -> Result<Vec<ApiKeyRecord>, StoreError> {
    let rows: Vec<ApiKeyRow> = sqlx::query_as(&format!("{KEY_COLUMNS} ORDER BY created_at, id"))
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().map(ApiKeyRecord::from).collect())
}

pub(super) async fn revoke_api_key(pool: &SqlitePool, id: &str) -> Result<(), StoreError> {
    let done = sqlx::query("UPDATE api_keys SET revoked = TRUE WHERE id = ?")
        .bind(id)
        .execute(pool)
        .await?;
    if done.rows_affected() == 0 {
        return Err(StoreError::not_found("api key", id));
    }
    Ok(())
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
