//! What gateways call, with their own scoped token and nothing else: the config feed (keys,
//! tenants, prices, routes; long-polled by version), credit leases for prepaid tenants, and
//! usage batches, rated here at the price in force when each request started and stored once
//! by event id.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use wattmesh_domain::pricing::{lease_grant, price_at};
use wattmesh_proto::agent::WatchQuery;
use wattmesh_proto::api::{ApiError, BillingPlan};
use wattmesh_proto::gateway::{GatewayConfig, GatewayWatchQuery};
use wattmesh_proto::usage::{IngestReceipt, LeaseGrant, LeaseRequest, UsageBatch, UsageEvent};
use wattmesh_store::RatedEvent;

use super::long_poll;
use crate::ControlError;
use crate::extract::{Body, GatewayCaller, Query};
use crate::service::AppState;
use crate::views;

#[utoipa::path(get, path = "/api/v1/gateway/config", tag = "gateway",
    params(("after" = Option<u64>, Query, description = "Version the gateway has; waits while current equals it"),
        ("wait_s" = Option<u64>, Query, description = "Longest wait in seconds (at most 30)"),
        ("instance" = Option<String>, Query, description = "This gateway process (picked at its start), so processes sharing a token are counted apart")),
    responses((status = 200, body = GatewayConfig), (status = 401, body = ApiError)),
    security(("gateway_token" = [])))]
pub(crate) async fn gateway_config(
    State(s): State<AppState>,
    GatewayCaller(gateway): GatewayCaller,
    Query(query): Query<GatewayWatchQuery>,
) -> Result<Json<GatewayConfig>, ControlError> {
    let instance = checked_instance(query.instance.as_deref().unwrap_or_default())?;
    // A gateway that was not counted changes every gateway's share of the limits: the config
    // it gets, and the one the others are waiting on, carry the new count.
    if !s.reconciler.gateways.beat(&format!("{gateway}/{instance}")) {
        s.reconciler.nudge().await;
    }
    let watch = WatchQuery {
        after: query.after,
        wait_s: query.wait_s,
    };
    let published = long_poll(&s, watch, |p| p.gateway.version).await;
    Ok(Json(GatewayConfig {
        gateway,
        ..published.gateway.clone()
    }))
}

/// A gateway process's id as the config poll names it: printable, and short.
fn checked_instance(instance: &str) -> Result<&str, ControlError> {
    if instance.len() > MAX_FIELD || instance.chars().any(char::is_control) {
        return Err(ControlError::BadRequest(format!(
            "instance must be at most {MAX_FIELD} bytes of printable text"
        )));
    }
    Ok(instance)
}

/// A gateway process shutting down stops being counted now, not when its polls go stale:
/// the others' shares of every limit grow back at once.
#[utoipa::path(delete, path = "/api/v1/gateway/instances/{instance}", tag = "gateway",
    params(("instance" = String, Path, description = "The process's id, as its config polls name it")),
    responses((status = 204, description = "No longer counted (also when it was not)"),
        (status = 400, body = ApiError), (status = 401, body = ApiError)),
    security(("gateway_token" = [])))]
pub(crate) async fn leave_gateway(
    State(s): State<AppState>,
    GatewayCaller(gateway): GatewayCaller,
    Path(instance): Path<String>,
) -> Result<StatusCode, ControlError> {
    let instance = checked_instance(&instance)?;
    if s.reconciler
        .gateways
        .forget(&format!("{gateway}/{instance}"))
    {
        tracing::info!(%gateway, %instance, "gateway process left");
        s.reconciler.nudge().await;
    }
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/gateway/leases", tag = "gateway", request_body = LeaseRequest,
    responses((status = 200, body = LeaseGrant), (status = 400, body = ApiError), (status = 404, body = ApiError)),
    security(("gateway_token" = [])))]
pub(crate) async fn lease(
    State(s): State<AppState>,
    GatewayCaller(gateway): GatewayCaller,
    Body(request): Body<LeaseRequest>,
) -> Result<Json<LeaseGrant>, ControlError> {
    let tenant = s.store.get_tenant(&request.tenant).await?;
    if tenant.plan != BillingPlan::Prepaid {
        return Err(ControlError::BadRequest(format!(
            "tenant {} pays as it goes: it has no credit to lease",
            tenant.name
        )));
    }
    if request.need < rust_decimal::Decimal::ZERO {
        return Err(ControlError::BadRequest("need must not be negative".into()));
    }
    let grant = s
        .store
        .lease_credit(&gateway, &request.tenant, request.need, lease_grant)
        .await?;
    Ok(Json(grant))
}

/// Most events one batch may carry (the shipper sends a few hundred).
const MAX_BATCH_EVENTS: usize = 5_000;

#[utoipa::path(post, path = "/api/v1/usage/batches", tag = "gateway", request_body = UsageBatch,
    responses((status = 200, body = IngestReceipt, description = "Stored; events seen before are counted as duplicates"),
        (status = 400, body = ApiError)),
    security(("gateway_token" = [])))]
pub(crate) async fn ingest_usage(
    State(s): State<AppState>,
    GatewayCaller(gateway): GatewayCaller,
    Body(batch): Body<UsageBatch>,
) -> Result<Json<IngestReceipt>, ControlError> {
    if batch.events.len() > MAX_BATCH_EVENTS {
        return Err(ControlError::BadRequest(format!(
            "a batch carries at most {MAX_BATCH_EVENTS} events; got {}",
            batch.events.len()
        )));
    }
    for (i, event) in batch.events.iter().enumerate() {
        check_event(event).map_err(|e| ControlError::BadRequest(format!("events[{i}]: {e}")))?;
    }
    let prices = views::price_versions(&s.store.list_prices().await?);
    // A tenant's own replicas are paid for by the hour: their tokens cost nothing more.
    let dedicated: std::collections::BTreeMap<String, String> = s
        .store
        .list_deployments()
        .await?
        .into_iter()
        .filter_map(|d| Some((d.name, d.dedicated_to?)))
        .collect();
    let rated: Vec<RatedEvent> = batch
        .events
        .into_iter()
        .map(|event| {
            let own = dedicated.get(&event.deployment) == Some(&event.tenant);
            let price = price_at(&prices, &event.model, &event.tenant, event.started_at_ms)
                .filter(|_| !own);
            RatedEvent {
                price_version: price.map(|p| p.version),
                cost: price.map_or(rust_decimal::Decimal::ZERO, |p| {
                    p.price.cost(event.prompt_tokens, event.completion_tokens)
                }),
                event,
            }
        })
        .collect();
    Ok(Json(s.store.ingest_usage(&gateway, &rated).await?))
}

/// Longest id or name field an event may carry.
const MAX_FIELD: usize = 256;
/// No request is billed for more tokens than this: a larger count is a broken event, not
/// usage.
const MAX_TOKENS_PER_EVENT: u64 = 1 << 32;

/// What makes an event unusable: it would be stored forever and billed, so it is refused whole
/// (the gateway keeps it spooled, and an operator sees the error) rather than guessed at.
fn check_event(e: &UsageEvent) -> Result<(), String> {
    if e.id.is_empty() {
        return Err("id is empty".into());
    }
    for (name, value) in [
        ("id", &e.id),
        ("request_id", &e.request_id),
        ("tenant", &e.tenant),
        ("key_id", &e.key_id),
        ("model", &e.model),
        ("deployment", &e.deployment),
        ("replica", &e.replica),
        ("site", &e.site),
        ("region", &e.region),
        ("priority", &e.priority),
    ] {
        if value.len() > MAX_FIELD {
            return Err(format!("{name} is longer than {MAX_FIELD} bytes"));
        }
    }
    if e.tenant.is_empty() || e.key_id.is_empty() || e.model.is_empty() {
        return Err("tenant, key_id and model must be set".into());
    }
    if e.prompt_tokens > MAX_TOKENS_PER_EVENT || e.completion_tokens > MAX_TOKENS_PER_EVENT {
        return Err("token counts are out of range".into());
    }
    if e.started_at_ms < 0 {
        return Err("started_at_ms is negative".into());
    }
    Ok(())
}
