//! Who may call: tenants and their API keys, and gateway credentials. Secrets are generated
//! here, returned once, and only their SHA-256 is stored; every change that a gateway must
//! enforce (a key, a revocation, a limit) republishes the gateway config before answering.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use wattmesh_proto::api::{
    ApiError, ApiKey, ApiKeyCreated, ApiKeySpec, Gateway, GatewayCreated, GatewaySpec, Limits,
    LimitsPatch, Tenant, TenantSpec,
};
use wattmesh_store::{ApiKeyRecord, NewApiKey};

use super::JsonList;
use crate::ControlError;
use crate::clock::{now_ms, parse_time};
use crate::extract::{Body, Operator};
use crate::secrets::{new_api_key, new_gateway_token, sha256_hex};
use crate::service::AppState;
use crate::views;

// --- tenants ---

#[utoipa::path(post, path = "/api/v1/tenants", tag = "access", request_body = TenantSpec,
    responses((status = 201, body = Tenant), (status = 400, body = ApiError), (status = 409, body = ApiError)))]
pub(crate) async fn create_tenant(
    State(s): State<AppState>,
    Body(spec): Body<TenantSpec>,
) -> Result<(StatusCode, Json<Tenant>), ControlError> {
    let tenant = s.store.create_tenant(&spec).await?;
    s.reconciler.nudge().await;
    Ok((StatusCode::CREATED, Json(views::tenant(&tenant))))
}

#[utoipa::path(get, path = "/api/v1/tenants", tag = "access",
    responses((status = 200, body = Vec<Tenant>)))]
pub(crate) async fn list_tenants(
    State(s): State<AppState>,
) -> Result<JsonList<Tenant>, ControlError> {
    let tenants = s.store.list_tenants().await?;
    Ok(Json(tenants.iter().map(views::tenant).collect()))
}

#[utoipa::path(get, path = "/api/v1/tenants/{name}", tag = "access",
    params(("name" = String, Path)),
    responses((status = 200, body = Tenant), (status = 404, body = ApiError)))]
pub(crate) async fn get_tenant(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Tenant>, ControlError> {
    Ok(Json(views::tenant(&s.store.get_tenant(&name).await?)))
}

#[utoipa::path(put, path = "/api/v1/tenants/{name}/limits", tag = "access",
    params(("name" = String, Path)), request_body = Limits,
    responses((status = 200, body = Tenant), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
pub(crate) async fn set_tenant_limits(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Body(limits): Body<LimitsPatch>,
) -> Result<Json<Tenant>, ControlError> {
    let tenant = s.store.set_tenant_limits(&name, &limits).await?;
    s.reconciler.nudge().await;
    Ok(Json(views::tenant(&tenant)))
}

// --- API keys ---

#[utoipa::path(post, path = "/api/v1/keys", tag = "access", request_body = ApiKeySpec,
    responses((status = 201, body = ApiKeyCreated, description = "The only time the secret is shown"),
        (status = 400, body = ApiError),
        (status = 404, body = ApiError, description = "Unknown tenant or model")))]
pub(crate) async fn create_key(
    State(s): State<AppState>,
    Body(spec): Body<ApiKeySpec>,
) -> Result<(StatusCode, Json<ApiKeyCreated>), ControlError> {
    let expires_at = match spec.expires_at {
        Some(text) => {
            let ms = parse_time("expires_at", &text)?;
            if ms <= now_ms() {
                return Err(ControlError::BadRequest(format!(
                    "expires_at {text} is in the past"
                )));
            }
            Some((text, ms))
        }
        None => None,
    };
    if spec.models.as_ref().is_some_and(Vec::is_empty) {
        return Err(ControlError::BadRequest(
            "models: an empty allow-list would refuse every request; leave it out for every \
             model"
                .into(),
        ));
    }
    let (secret, prefix) = new_api_key();
    let key = NewApiKey {
        id: format!("key-{}", uuid::Uuid::new_v4().simple()),
        tenant: spec.tenant,
        name: spec.name,
        prefix,
        secret_sha256: sha256_hex(&secret),
        models: spec.models,
        expires_at,
        priority: spec.priority,
        limits: spec.limits,
    };
    let stored = s.store.create_api_key(&key).await?;
    s.reconciler.nudge().await;
    Ok((
        StatusCode::CREATED,
        Json(ApiKeyCreated {
            key: views::api_key(&stored, now_ms()),
            secret,
        }),
    ))
}

#[utoipa::path(get, path = "/api/v1/keys", tag = "access",
    responses((status = 200, body = Vec<ApiKey>, description = "Every key, revoked and expired ones included, without secrets")))]
pub(crate) async fn list_keys(State(s): State<AppState>) -> Result<JsonList<ApiKey>, ControlError> {
    let keys = s.store.list_api_keys().await?;
    let now = now_ms();
    Ok(Json(keys.iter().map(|k| views::api_key(k, now)).collect()))
}

#[utoipa::path(delete, path = "/api/v1/keys/{id}", tag = "access",
    params(("id" = String, Path, description = "The key's id, or the start of its id or of its prefix, as `keys list` shows them")),
    responses((status = 200, body = ApiKey, description = "The revoked key"),
        (status = 404, body = ApiError), (status = 409, body = ApiError, description = "Already revoked, or the prefix names several keys")))]
pub(crate) async fn revoke_key(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Operator(by): Operator,
) -> Result<Json<ApiKey>, ControlError> {
    let keys = s.store.list_api_keys().await?;
    let id = resolve_key(&keys, &id)?;
    let revoked = s.store.revoke_api_key(&id, &by).await?;
    s.reconciler.nudge().await;
    Ok(Json(views::api_key(&revoked, now_ms())))
}

/// The one key named by its id, or by a start of its id or visible prefix long enough to be
/// unambiguous.
fn resolve_key(keys: &[ApiKeyRecord], given: &str) -> Result<String, ControlError> {
    if let Some(k) = keys.iter().find(|k| k.id == given) {
        return Ok(k.id.clone());
    }
    // Short starts ("sk-", "key-") match every key; they name nothing.
    const MIN_PREFIX: usize = 8;
    if given.len() < MIN_PREFIX {
        return Err(ControlError::NotFound(format!(
            "no API key with id {given:?} (a prefix must be at least {MIN_PREFIX} characters)"
        )));
    }
    let matches: Vec<&ApiKeyRecord> = keys
        .iter()
        .filter(|k| k.id.starts_with(given) || k.prefix.starts_with(given))
        .collect();
    match matches.as_slice() {
        [] => Err(ControlError::NotFound(format!(
            "no API key with id or prefix {given:?}"
        ))),
        [one] => Ok(one.id.clone()),
        many => Err(ControlError::Conflict(format!(
            "{given:?} names {} keys ({}); give more of it",
            many.len(),
            many.iter()
                .map(|k| k.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

// --- gateways ---

#[utoipa::path(post, path = "/api/v1/gateways", tag = "access", request_body = GatewaySpec,
    responses((status = 201, body = GatewayCreated, description = "The only time the token is shown"),
        (status = 409, body = ApiError)))]
pub(crate) async fn create_gateway(
    State(s): State<AppState>,
    Body(spec): Body<GatewaySpec>,
) -> Result<(StatusCode, Json<GatewayCreated>), ControlError> {
    let token = new_gateway_token();
    let gateway = s
        .store
        .create_gateway(&spec.name, &sha256_hex(&token))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(GatewayCreated {
            gateway: views::gateway(&gateway),
            token,
        }),
    ))
}

#[utoipa::path(get, path = "/api/v1/gateways", tag = "access",
    responses((status = 200, body = Vec<Gateway>)))]
pub(crate) async fn list_gateways(
    State(s): State<AppState>,
) -> Result<JsonList<Gateway>, ControlError> {
    let gateways = s.store.list_gateways().await?;
    Ok(Json(gateways.iter().map(views::gateway).collect()))
}

#[utoipa::path(post, path = "/api/v1/gateways/{name}/rotate", tag = "access",
    params(("name" = String, Path)),
    responses((status = 200, body = GatewayCreated, description = "The new token, shown once; the old one stops working now"),
        (status = 404, body = ApiError)))]
pub(crate) async fn rotate_gateway(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<GatewayCreated>, ControlError> {
    let token = new_gateway_token();
    let gateway = s.store.rotate_gateway(&name, &sha256_hex(&token)).await?;
    Ok(Json(GatewayCreated {
        gateway: views::gateway(&gateway),
        token,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wattmesh_proto::api::{KeyPriority, Limits};

    fn key(id: &str, prefix: &str) -> ApiKeyRecord {
        ApiKeyRecord {
            id: id.into(),
            tenant: "t".into(),
            name: None,
            prefix: prefix.into(),
            secret_sha256: String::new(),
            created_at: String::new(),
            models: None,
            expires_at: None,
            expires_at_ms: None,
            priority: KeyPriority::Interactive,
            limits: Limits::default(),
            revoked_at: None,
            revoked_by: None,
            last_used_ms: None,
        }
    }

    #[test]
    fn keys_are_named_by_id_or_an_unambiguous_prefix() {
        let keys = [
            key("key-aaaa1111", "sk-wm-Abc123"),
            key("key-aaaa2222", "sk-wm-Xyz789"),
        ];
        let cases: &[(&str, Result<&str, &str>)] = &[
            ("key-aaaa1111", Ok("key-aaaa1111")),
            ("key-aaaa2", Ok("key-aaaa2222")),
            ("sk-wm-Abc", Ok("key-aaaa1111")),
            ("key-aaaa", Err("conflict")),
            ("sk-", Err("not_found")),
            ("sk-wm-Nope", Err("not_found")),
        ];
        for (given, want) in cases {
            let got = resolve_key(&keys, given);
            match (got, want) {
                (Ok(id), Ok(want)) => assert_eq!(id, *want, "{given}"),
                (Err(e), Err(code)) => assert_eq!(e.status_code().1, *code, "{given}"),
                (got, want) => panic!("{given}: got {got:?}, want {want:?}"),
            }
        }
    }
}
