//! The `/v1/*` handlers: authenticate, read the body within its limit, find the model, pick a
//! replica and relay its answer as a stream. A connect error (or a 503 before any byte) ejects
//! that replica and the request is tried once more on another.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use sha2::{Digest, Sha256};
use wattmesh_domain::ModelKind;
use wattmesh_proto::gateway::{GatewayKey, ModelRoute};
use wattmesh_proto::openai::{ModelList, ModelObject};

use crate::GatewayState;
use crate::error::GatewayError;
use crate::replicas::EJECTION;
use crate::routing::{Candidate, pick};
use crate::snapshot::Snapshot;

/// The data-plane router over an explicit state (tests set its config directly).
pub fn router(state: GatewayState) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(models))
        .route("/healthz", get(|| async { "ok" }))
        .fallback(|| async { GatewayError::NotFound })
        .method_not_allowed_fallback(|| async { GatewayError::MethodNotAllowed })
        .with_state(state)
}

async fn chat(State(st): State<GatewayState>, req: Request) -> Result<Response, GatewayError> {
    proxy(st, req, "/v1/chat/completions", ModelKind::Chat).await
}

async fn completions(State(st): State<GatewayState>, req: Request) -> Result<Response, GatewayError> {
    proxy(st, req, "/v1/completions", ModelKind::Chat).await
}

async fn embeddings(State(st): State<GatewayState>, req: Request) -> Result<Response, GatewayError> {
    proxy(st, req, "/v1/embeddings", ModelKind::Embedding).await
}

async fn models(State(st): State<GatewayState>, headers: HeaderMap) -> Result<Response, GatewayError> {
    let snap = configured(&st)?;
    authenticate(&headers, &snap)?;
    let mut data: Vec<ModelObject> = snap
        .models
        .keys()
        .map(|id| ModelObject {
            id: id.clone(),
            object: "model".into(),
            created: 0,
            owned_by: "wattmesh".into(),
        })
        .collect();
    data.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(axum::Json(ModelList { object: "list".into(), data }).into_response())
}

fn configured(st: &GatewayState) -> Result<Arc<Snapshot>, GatewayError> {
    let snap = st.config.borrow().clone();
    if !snap.loaded {
        return Err(GatewayError::NotConfigured);
    }
    Ok(snap)
}

/// Finds the key of `Authorization: Bearer <key>` by the SHA-256 of its secret.
pub fn authenticate<'a>(headers: &HeaderMap, snap: &'a Snapshot) -> Result<&'a GatewayKey, GatewayError> {
    let value = headers.get(header::AUTHORIZATION).ok_or(GatewayError::NoKey)?;
    let value = value.to_str().map_err(|_| GatewayError::NoKey)?;
    let secret = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or(GatewayError::NoKey)?;
    let hash = hex::encode(Sha256::digest(secret.as_bytes()));
    snap.keys.get(&hash).ok_or(GatewayError::BadKey)
}

async fn read_body(req: Request, limit: usize) -> Result<Bytes, GatewayError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(GatewayError::TooLarge(limit));
    }
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(GatewayError::TooLarge(limit)),
        Err(_) => Err(GatewayError::BadRequest("could not read the request body".into())),
    }
}

/// The model named by a JSON body; everything else in it is the replica's to validate.
fn model_of(body: &[u8]) -> Result<String, GatewayError> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        GatewayError::BadRequest(format!("We could not parse the JSON body of your request: {e}"))
    })?;
    let obj = value
        .as_object()
        .ok_or_else(|| GatewayError::BadRequest("the request body must be a JSON object".into()))?;
    match obj.get("model") {
        Some(serde_json::Value::String(m)) => Ok(m.clone()),
        Some(_) => Err(GatewayError::BadRequest("'model' must be a string".into())),
        None => Err(GatewayError::BadRequest("you must provide a model parameter".into())),
    }
}

async fn proxy(
    st: GatewayState,
    req: Request,
    path: &'static str,
    kind: ModelKind,
) -> Result<Response, GatewayError> {
    let snap = configured(&st)?;
    authenticate(req.headers(), &snap)?;
    let body = read_body(req, st.max_body_bytes).await?;
    let model = model_of(&body)?;
    let route = snap.models.get(&model).ok_or_else(|| GatewayError::UnknownModel(model.clone()))?;
    if route.kind != kind {
        return Err(GatewayError::BadRequest(format!(
            "model {model:?} is a {} model and cannot serve {path}",
            route.kind.as_str()
        )));
    }
    forward(&st, route, path, body).await
}

/// Sends `body` to one replica of `route`, retrying once elsewhere when the first could not
/// take it.
async fn forward(
    st: &GatewayState,
    route: &ModelRoute,
    path: &str,
    body: Bytes,
) -> Result<Response, GatewayError> {
    let mut tried: Vec<&str> = Vec::new();
    let mut last_error = None;
    for _attempt in 0..2 {
        let stats: Vec<_> = route.replicas.iter().map(|r| st.replicas.get(&r.id)).collect();
        let candidates: Vec<Candidate<'_>> = route
            .replicas
            .iter()
            .zip(&stats)
            .map(|(r, s)| Candidate { id: &r.id, outstanding: s.outstanding(), healthy: s.healthy() })
            .collect();
        let Some(i) = pick(&candidates, &tried) else { break };
        let replica = &route.replicas[i];
        tried.push(&replica.id);
        let in_flight = stats[i].start();
        let url = format!("{}{path}", replica.endpoint.trim_end_matches('/'));
        let sent = st
            .http
            .post(&url)
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.clone())
            .send()
            .await;
        match sent {
            Ok(resp) if resp.status() != StatusCode::SERVICE_UNAVAILABLE || tried.len() == 2 => {
                return Ok(relay(resp, in_flight));
            }
            Ok(resp) => {
                last_error = Some(format!("replica {} answered {}", replica.id, resp.status()));
            }
            Err(e) => {
                stats[i].eject(EJECTION);
                last_error = Some(format!("replica {} at {url}: {e}", replica.id));
            }
        }
    }
    match last_error {
        Some(e) => Err(GatewayError::Upstream(e)),
        None => Err(GatewayError::NoReplica(route.model.clone())),
    }
}

/// Streams the replica's answer to the client as it arrives; the in-flight guard lives as long
/// as the body does.
fn relay(resp: reqwest::Response, in_flight: crate::replicas::InFlight) -> Response {
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let content_type = resp.headers().get(reqwest::header::CONTENT_TYPE).cloned();
    let stream = resp.bytes_stream().map(move |chunk| {
        let _keep = &in_flight;
        chunk
    });
    let mut out = Response::new(Body::from_stream(stream));
    *out.status_mut() = status;
    if let Some(ct) = content_type.and_then(|v| header::HeaderValue::from_bytes(v.as_bytes()).ok()) {
        out.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    out
}
