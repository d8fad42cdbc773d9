//! Tenants and their API keys. A key's secret is generated here, returned once, and only its
//! SHA-256 is stored; creating or revoking one moves the gateway config's version.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use wattmesh_proto::api::{ApiError, ApiKey, ApiKeyCreated, ApiKeySpec, Tenant};
use wattmesh_store::NewApiKey;

use super::JsonList;
use crate::ControlError;
use crate::extract::Body;
use crate::secrets::{new_api_key, sha256_hex};
use crate::service::AppState;
use crate::views;

#[utoipa::path(post, path = "/api/v1/tenants", tag = "access", request_body = Tenant,
    responses((status = 201, body = Tenant), (status = 409, body = ApiError)))]
pub(crate) async fn create_tenant(
    State(s): State<AppState>,
    Body(tenant): Body<Tenant>,
) -> Result<(StatusCode, Json<Tenant>), ControlError> {
    Ok((
        StatusCode::CREATED,
        Json(s.store.create_tenant(&tenant.name).await?),
    ))
}

#[utoipa::path(get, path = "/api/v1/tenants", tag = "access",
    responses((status = 200, body = Vec<Tenant>)))]
pub(crate) async fn list_tenants(
    State(s): State<AppState>,
) -> Result<JsonList<Tenant>, ControlError> {
    Ok(Json(s.store.list_tenants().await?))
}

#[utoipa::path(post, path = "/api/v1/keys", tag = "access", request_body = ApiKeySpec,
    responses((status = 201, body = ApiKeyCreated, description = "The only time the secret is shown"),
        (status = 404, body = ApiError, description = "Unknown tenant")))]
pub(crate) async fn create_key(
    State(s): State<AppState>,
    Body(spec): Body<ApiKeySpec>,
) -> Result<(StatusCode, Json<ApiKeyCreated>), ControlError> {
    let (secret, prefix) = new_api_key();
    let key = NewApiKey {
        id: format!("key-{}", uuid::Uuid::new_v4().simple()),
        tenant: spec.tenant,
        name: spec.name,
        prefix,
        secret_sha256: sha256_hex(&secret),
    };
    let stored = s.store.create_api_key(&key).await?;
    s.reconciler.nudge().await;
    Ok((
        StatusCode::CREATED,
        Json(ApiKeyCreated {
            key: views::api_key(&stored),
            secret,
        }),
    ))
}

#[utoipa::path(get, path = "/api/v1/keys", tag = "access",
    responses((status = 200, body = Vec<ApiKey>, description = "Keys not revoked, without secrets")))]
pub(crate) async fn list_keys(State(s): State<AppState>) -> Result<JsonList<ApiKey>, ControlError> {
    let keys = s.store.list_api_keys().await?;
    Ok(Json(
        keys.iter()
            .filter(|k| !k.revoked)
            .map(views::api_key)
            .collect(),
    ))
}

#[utoipa::path(delete, path = "/api/v1/keys/{id}", tag = "access",
    params(("id" = String, Path, description = "Key id")),
    responses((status = 204), (status = 404, body = ApiError)))]
pub(crate) async fn revoke_key(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ControlError> {
    s.store.revoke_api_key(&id).await?;
    s.reconciler.nudge().await;
    Ok(StatusCode::NO_CONTENT)
}
