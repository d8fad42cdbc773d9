//! The gateway's config feed: live API keys (hashed) and the ready replicas of every model,
//! long-polled by version.

use axum::Json;
use axum::extract::State;
use wattmesh_proto::agent::WatchQuery;
use wattmesh_proto::api::ApiError;
use wattmesh_proto::gateway::GatewayConfig;

use super::long_poll;
use crate::ControlError;
use crate::extract::Query;
use crate::service::AppState;

#[utoipa::path(get, path = "/api/v1/gateway/config", tag = "gateway",
    params(("after" = Option<u64>, Query, description = "Version the gateway has; waits while current equals it"),
        ("wait_s" = Option<u64>, Query, description = "Longest wait in seconds (at most 30)")),
    responses((status = 200, body = GatewayConfig), (status = 401, body = ApiError)))]
pub(crate) async fn gateway_config(
    State(s): State<AppState>,
    Query(query): Query<WatchQuery>,
) -> Result<Json<GatewayConfig>, ControlError> {
    let published = long_poll(&s, query, |p| p.gateway.version).await;
    Ok(Json(published.gateway.clone()))
}
