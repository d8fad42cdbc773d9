//! The agent protocol (see `wattmesh_proto::agent`): register with the bootstrap token,
//! heartbeat observed state (with the site's power samples: the newest, and any the control
//! plane has not taken yet), long-poll the site's desired state. DR acknowledgements are in
//! `energy`.

use axum::Json;
use axum::extract::State;
use wattmesh_proto::agent::{
    DesiredState, Heartbeat, HeartbeatAck, MAX_EARLIER_POWER, RegisterRequest, RegisterResponse,
    WatchQuery,
};
use wattmesh_proto::api::ApiError;
use wattmesh_proto::energy::PowerSample;
use wattmesh_store::{AgentRegistration, SiteHeartbeat};

use super::long_poll;
use crate::ControlError;
use crate::extract::{AgentSite, Body, Bootstrap, Query};
use crate::secrets::{new_agent_token, sha256_hex};
use crate::service::AppState;

#[utoipa::path(post, path = "/api/v1/agent/register", tag = "agent", request_body = RegisterRequest,
    security(("bootstrap_token" = [])),
    responses((status = 200, body = RegisterResponse), (status = 401, body = ApiError),
        (status = 409, body = ApiError, description = "Site in another region, or a node of another site")))]
pub(crate) async fn register(
    State(s): State<AppState>,
    _: Bootstrap,
    Body(req): Body<RegisterRequest>,
) -> Result<Json<RegisterResponse>, ControlError> {
    let agent_token = new_agent_token();
    s.store
        .register_agent(&AgentRegistration {
            site: req.site.clone(),
            region: req.region,
            power_price_usd_per_mwh: req.power_price_usd_per_mwh,
            nodes: req.nodes,
            token_sha256: sha256_hex(&agent_token),
        })
        .await?;
    s.reconciler.liveness.beat(&req.site);
    s.reconciler.nudge().await;
    tracing::info!(site = %req.site, "agent registered");
    Ok(Json(RegisterResponse { agent_token }))
}

#[utoipa::path(post, path = "/api/v1/agent/heartbeat", tag = "agent", request_body = Heartbeat,
    security(("agent_token" = [])),
    responses((status = 200, body = HeartbeatAck), (status = 400, body = ApiError),
        (status = 401, body = ApiError)))]
pub(crate) async fn heartbeat(
    State(s): State<AppState>,
    AgentSite(site): AgentSite,
    Body(hb): Body<Heartbeat>,
) -> Result<Json<HeartbeatAck>, ControlError> {
    if hb.earlier_power.len() > MAX_EARLIER_POWER {
        return Err(ControlError::BadRequest(format!(
            "earlier_power: {} samples; at most {MAX_EARLIER_POWER} a heartbeat",
            hb.earlier_power.len()
        )));
    }
    let changed = s
        .store
        .record_heartbeat(SiteHeartbeat {
            site: &site,
            nodes: &hb.nodes,
            replicas: &hb.replicas,
        })
        .await?;
    record_samples(&s, &site, hb.earlier_power.iter().chain(&hb.power)).await;
    let was_ready = s.reconciler.liveness.beat(&site);
    let new_tokens = s.reconciler.note_tokens(&site, &hb.replicas);
    // A site coming back, or new observations, can change placement and routes now; an
    // unchanged heartbeat of a live site only refreshes its time.
    if changed || new_tokens || !was_ready {
        s.reconciler.nudge().await;
    }
    let desired_version = s.reconciler.current().desired_for(&site).version;
    Ok(Json(HeartbeatAck { desired_version }))
}

/// Stores a heartbeat's samples in one write. A refusal costs only the samples: the
/// heartbeat's replicas and liveness count either way. (JSON has no NaN or infinity, so a
/// body that parsed holds only finite samples; the store's own check is the backstop.)
async fn record_samples(s: &AppState, site: &str, samples: impl Iterator<Item = &PowerSample>) {
    let samples: Vec<PowerSample> = samples.cloned().collect();
    if samples.is_empty() {
        return;
    }
    if let Err(e) = s.store.record_power_samples(site, &samples).await {
        tracing::warn!(%site, count = samples.len(), error = %e, "power samples not stored");
    }
}

#[utoipa::path(get, path = "/api/v1/agent/desired", tag = "agent",
    security(("agent_token" = [])),
    params(("after" = Option<u64>, Query, description = "Version the agent has; waits while current equals it"),
        ("wait_s" = Option<u64>, Query, description = "Longest wait in seconds (at most 30)")),
    responses((status = 200, body = DesiredState), (status = 401, body = ApiError)))]
pub(crate) async fn desired(
    State(s): State<AppState>,
    AgentSite(site): AgentSite,
    Query(query): Query<WatchQuery>,
) -> Result<Json<DesiredState>, ControlError> {
    let published = long_poll(&s, query, |p| p.desired_for(&site).version).await;
    Ok(Json(published.desired_for(&site)))
}
