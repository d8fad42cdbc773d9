//! Models, deployments and replicas: what the operator wants to run and where the reconciler
//! placed it.

use std::str::FromStr;

use sqlx::{FromRow, SqlitePool};
use wattmesh_domain::ModelKind;
use wattmesh_proto::api::{DeploymentSpec, Model};

use super::fleet::exists;
use super::{begin_write, conflict_on_duplicate, from_i64, now, to_i64};
use crate::StoreError;
use crate::records::{
    DeploymentRecord, NewReplica, ReplicaRecord, replica_state_from_str, validate_name,
};

#[derive(FromRow)]
struct ModelRow {
    name: String,
    kind: String,
    artifact: String,
    memory_bytes: i64,
    context_tokens: i64,
}

impl TryFrom<ModelRow> for Model {
    type Error = StoreError;
    fn try_from(r: ModelRow) -> Result<Self, StoreError> {
        Ok(Model {
            kind: parse_kind(&r.kind)?,
            memory_bytes: from_i64("memory_bytes", r.memory_bytes)?,
            context_tokens: u32::try_from(r.context_tokens).map_err(|_| {
                StoreError::Invalid(format!("stored context_tokens {}", r.context_tokens))
            })?,
            name: r.name,
            artifact: r.artifact,
        })
    }
}

#[derive(FromRow)]
struct DeploymentRow {
    name: String,
    model: String,
    replicas: i64,
    memory_bytes: i64,
    dedicated_to: Option<String>,
}

impl TryFrom<DeploymentRow> for DeploymentRecord {
    type Error = StoreError;
    fn try_from(r: DeploymentRow) -> Result<Self, StoreError> {
        let replicas = u32::try_from(r.replicas)
            .map_err(|_| StoreError::Invalid(format!("stored replicas {}", r.replicas)))?;
        Ok(DeploymentRecord {
            replicas,
            memory_bytes: from_i64("memory_bytes", r.memory_bytes)?,
            name: r.name,
            model: r.model,
            dedicated_to: r.dedicated_to,
        })
    }
}

#[derive(FromRow)]
struct ReplicaRow {
    id: String,
    deployment: String,
    model: String,
    kind: String,
    artifact: String,
    node: String,
    site: String,
    region: String,
    state: String,
    endpoint: Option<String>,
    message: Option<String>,
}

impl TryFrom<ReplicaRow> for ReplicaRecord {
    type Error = StoreError;
    fn try_from(r: ReplicaRow) -> Result<Self, StoreError> {
        Ok(ReplicaRecord {
            kind: parse_kind(&r.kind)?,
            state: replica_state_from_str(&r.state)?,
            id: r.id,
            deployment: r.deployment,
            model: r.model,
            artifact: r.artifact,
            node: r.node,
            site: r.site,
            region: r.region,
            endpoint: r.endpoint,
            message: r.message,
        })
    }
}

fn parse_kind(s: &str) -> Result<ModelKind, StoreError> {
    ModelKind::from_str(s).map_err(StoreError::Invalid)
}

const MODEL_COLUMNS: &str = "SELECT name, kind, artifact, memory_bytes, context_tokens FROM models";
const DEPLOYMENT_COLUMNS: &str = "SELECT d.name, d.model, d.replicas, m.memory_bytes, \
                                  d.dedicated_to \
                                  FROM deployments d JOIN models m ON m.name = d.model";
const REPLICA_COLUMNS: &str = "SELECT r.id, r.deployment, d.model, m.kind, m.artifact, r.node, \
                               n.site, s.region, r.state, r.endpoint, r.message \
                               FROM replicas r \
                               JOIN deployments d ON d.name = r.deployment \
                               JOIN models m ON m.name = d.model \
                               JOIN nodes n ON n.name = r.node \
                               JOIN sites s ON s.name = n.site";

// --- models ---

pub(super) async fn create_model(pool: &SqlitePool, model: &Model) -> Result<Model, StoreError> {
    validate_name("model", &model.name)?;
    if model.artifact.is_empty() {
        return Err(StoreError::Invalid("a model needs an artifact".into()));
    }
    // No request fits in a context of 0 tokens: refused as a typo, like a limit of 0.
    if model.context_tokens == 0 {
        return Err(StoreError::Invalid(
            "a model's context_tokens must be at least 1".into(),
        ));
    }
    sqlx::query(
        "INSERT INTO models (name, kind, artifact, memory_bytes, context_tokens, created_at) \
         VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(&model.name)
    .bind(model.kind.as_str())
    .bind(&model.artifact)
    .bind(to_i64("memory_bytes", model.memory_bytes)?)
    .bind(i64::from(model.context_tokens))
    .bind(now())
    .execute(pool)
    .await
    .map_err(|e| conflict_on_duplicate(e, "model", &model.name))?;
    Ok(model.clone())
}

pub(super) async fn list_models(pool: &SqlitePool) -> Result<Vec<Model>, StoreError> {
    let rows: Vec<ModelRow> = sqlx::query_as(&format!("{MODEL_COLUMNS} ORDER BY name"))
        .fetch_all(pool)
        .await?;
    rows.into_iter().map(Model::try_from).collect()
}

// --- deployments ---

pub(super) async fn create_deployment(
    pool: &SqlitePool,
    spec: &DeploymentSpec,
) -> Result<DeploymentRecord, StoreError> {
    validate_name("deployment", &spec.name)?;
    let mut tx = begin_write(pool).await?;
    if !exists(&mut tx, "SELECT 1 FROM models WHERE name = ?", &spec.model).await? {
        return Err(StoreError::not_found("model", &spec.model));
    }
    if let Some(tenant) = &spec.dedicated_to
        && !exists(&mut tx, "SELECT 1 FROM tenants WHERE name = ?", tenant).await?
    {
        return Err(StoreError::not_found("tenant", tenant));
    }
    sqlx::query(
        "INSERT INTO deployments (name, model, replicas, dedicated_to, created_at) \
         VALUES (?, ?, ?, ?, ?)",
    )
    .bind(&spec.name)
    .bind(&spec.model)
    .bind(i64::from(spec.replicas))
    .bind(&spec.dedicated_to)
    .bind(now())
    .execute(&mut *tx)
    .await
    .map_err(|e| conflict_on_duplicate(e, "deployment", &spec.name))?;
    tx.commit().await?;
    get_deployment(pool, &spec.name).await
}

pub(super) async fn list_deployments(
    pool: &SqlitePool,
) -> Result<Vec<DeploymentRecord>, StoreError> {
    let rows: Vec<DeploymentRow> = sqlx::query_as(&format!("{DEPLOYMENT_COLUMNS} ORDER BY d.name"))
        .fetch_all(pool)
        .await?;
    rows.into_iter().map(DeploymentRecord::try_from).collect()
}

pub(super) async fn get_deployment(
    pool: &SqlitePool,
    name: &str,
) -> Result<DeploymentRecord, StoreError> {
    let row: Option<DeploymentRow> =
        sqlx::query_as(&format!("{DEPLOYMENT_COLUMNS} WHERE d.name = ?"))
            .bind(name)
            .fetch_optional(pool)
            .await?;
    row.ok_or_else(|| StoreError::not_found("deployment", name))?
        .try_into()
}

pub(super) async fn scale_deployment(
    pool: &SqlitePool,
    name: &str,
    replicas: u32,
) -> Result<DeploymentRecord, StoreError> {
    let done = sqlx::query("UPDATE deployments SET replicas = ? WHERE name = ?")
        .bind(i64::from(replicas))
        .bind(name)
        .execute(pool)
        .await?;
    if done.rows_affected() == 0 {
        return Err(StoreError::not_found("deployment", name));
    }
    get_deployment(pool, name).await
}

pub(super) async fn delete_deployment(pool: &SqlitePool, name: &str) -> Result<(), StoreError> {
    // Replicas go with it (ON DELETE CASCADE).
    let done = sqlx::query("DELETE FROM deployments WHERE name = ?")
        .bind(name)
        .execute(pool)
        .await?;
    if done.rows_affected() == 0 {
        return Err(StoreError::not_found("deployment", name));
    }
    Ok(())
}

// --- replicas ---

pub(super) async fn list_replicas(pool: &SqlitePool) -> Result<Vec<ReplicaRecord>, StoreError> {
    let rows: Vec<ReplicaRow> =
        sqlx::query_as(&format!("{REPLICA_COLUMNS} ORDER BY r.deployment, r.node"))
            .fetch_all(pool)
            .await?;
    rows.into_iter().map(ReplicaRecord::try_from).collect()
}

pub(super) async fn forget_replica_reports(pool: &SqlitePool) -> Result<(), StoreError> {
    sqlx::query("UPDATE replicas SET state = 'pending', endpoint = NULL, message = NULL")
        .execute(pool)
        .await?;
    Ok(())
}

pub(super) async fn apply_placements(
    pool: &SqlitePool,
    add: &[NewReplica],
    remove: &[String],
) -> Result<(), StoreError> {
    if add.is_empty() && remove.is_empty() {
        return Ok(());
    }
    let at = now();
    let mut tx = begin_write(pool).await?;
    for id in remove {
        sqlx::query("DELETE FROM replicas WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    for r in add {
        sqlx::query(
            "INSERT INTO replicas (id, deployment, node, state, created_at) \
             VALUES (?, ?, ?, 'pending', ?)",
        )
        .bind(&r.id)
        .bind(&r.deployment)
        .bind(&r.node)
        .bind(&at)
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            conflict_on_duplicate(e, "replica", &format!("{} on {}", r.deployment, r.node))
        })?;
    }
    tx.commit().await?;
    Ok(())
}
