//! Request extractors that fail the API's way: JSON bodies and query strings whose
//! rejections become `400`/`413` [`ControlError`]s instead of axum's plain-text answers, and
//! the bearer-token checks (admin middleware, agent and bootstrap extractors).

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use crate::ControlError;
use crate::secrets::sha256_hex;
use crate::service::{AppState, BODY_LIMIT_BYTES};

/// A JSON request body; malformed JSON, wrong types, unknown or missing fields are `400`, a
/// body over the limit is `413`.
#[derive(Debug, Clone, Copy, Default, FromRequest)]
#[from_request(via(axum::Json), rejection(ControlError))]
pub(crate) struct Body<T>(pub T);

impl From<JsonRejection> for ControlError {
    fn from(r: JsonRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ControlError::PayloadTooLarge {
                limit: BODY_LIMIT_BYTES,
            }
        } else {
            ControlError::BadRequest(r.body_text())
        }
    }
}

/// A query string, `400` when it does not parse.
#[derive(Debug, Clone, Copy, Default, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ControlError))]
pub(crate) struct Query<T>(pub T);

impl From<QueryRejection> for ControlError {
    fn from(r: QueryRejection) -> Self {
        ControlError::BadRequest(r.body_text())
    }
}

pub(crate) fn bearer(headers: &HeaderMap) -> Result<&str, ControlError> {
    headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ControlError::Unauthorized("missing bearer token".into()))
}

/// Route layer on every operator route: the admin token, compared by hash.
pub(crate) async fn require_admin(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ControlError> {
    let token = bearer(request.headers())?;
    if sha256_hex(token) != *state.admin_sha256 {
        return Err(ControlError::Unauthorized("invalid admin token".into()));
    }
    Ok(next.run(request).await)
}

/// The caller holds the fleet's bootstrap token (agent registration).
#[derive(Debug)]
pub(crate) struct Bootstrap;

impl FromRequestParts<AppState> for Bootstrap {
    type Rejection = ControlError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ControlError> {
        let token = bearer(&parts.headers)?;
        if sha256_hex(token) != *state.bootstrap_sha256 {
            return Err(ControlError::Unauthorized("invalid bootstrap token".into()));
        }
        Ok(Bootstrap)
    }
}

/// The gateway whose token the caller holds: the one credential good for the gateway config,
/// credit leases and usage batches, and nothing else.
#[derive(Debug)]
pub(crate) struct GatewayCaller(pub String);

impl FromRequestParts<AppState> for GatewayCaller {
    type Rejection = ControlError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ControlError> {
        let token = bearer(&parts.headers)?;
        match state.store.gateway_by_token(&sha256_hex(token)).await? {
            Some(name) => Ok(GatewayCaller(name)),
            None => Err(ControlError::Unauthorized(
                "invalid gateway token (create one with `wattmesh gateways create`)".into(),
            )),
        }
    }
}

/// Who an operator call is made by, for the records that say so (a revoked key's
/// `revoked_by`): the admin credential, with the operator's name when the CLI sends it.
#[derive(Debug)]
pub(crate) struct Operator(pub String);

/// The header the CLI names its user in.
pub(crate) const OPERATOR_HEADER: &str = "x-wattmesh-operator";

impl<S: Send + Sync> FromRequestParts<S> for Operator {
    type Rejection = ControlError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ControlError> {
        let who = parts
            .headers
            .get(OPERATOR_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty() && v.len() <= 64);
        Ok(Operator(match who {
            Some(name) => format!("admin ({name})"),
            None => "admin".to_owned(),
        }))
    }
}

/// The site whose agent token the caller holds.
#[derive(Debug)]
pub(crate) struct AgentSite(pub String);

impl FromRequestParts<AppState> for AgentSite {
    type Rejection = ControlError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ControlError> {
        let token = bearer(&parts.headers)?;
        match state.store.agent_site(&sha256_hex(token)).await? {
            Some(site) => Ok(AgentSite(site)),
            None => Err(ControlError::Unauthorized(
                "invalid agent token (re-register with the bootstrap token)".into(),
            )),
        }
    }
}
