//! Demand response: the operator makes, lists, reads and cancels a site's DR events; the
//! site's agent reports how its miners answered. What an event sheds and how it went is
//! decided in `wattmesh_domain::dr`; the agents learn of events through their desired state
//! (see the reconciler).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use wattmesh_domain::dr::{self, Ask, Metered};
use wattmesh_proto::api::ApiError;
use wattmesh_proto::energy::{DrAcks, DrEvent, DrEventReport, DrEventSpec, DrOutcome};
use wattmesh_store::{DrEventRecord, NewDrEvent};

use super::JsonList;
use crate::ControlError;
use crate::clock::{now_ms, parse_time};
use crate::extract::{AgentSite, Body, Query};
use crate::planning;
use crate::service::AppState;
use crate::views;

/// Samples shown before an event's start, so its report shows the load it came down from.
const LEAD_IN_MS: i64 = 60_000;

#[utoipa::path(post, path = "/api/v1/sites/{name}/dr-events", tag = "energy",
    request_body = DrEventSpec,
    params(("name" = String, Path, description = "Site name")),
    responses((status = 201, body = DrEvent),
        (status = 400, body = ApiError, description = "Bad target, window in the past, no meter reading for a percentage"),
        (status = 404, body = ApiError, description = "Unknown site"),
        (status = 409, body = ApiError, description = "Overlaps another event of the site")))]
pub(crate) async fn create_dr_event(
    State(s): State<AppState>,
    Path(site): Path<String>,
    Body(spec): Body<DrEventSpec>,
) -> Result<(StatusCode, Json<DrEvent>), ControlError> {
    let ask = match (spec.down_to_kw, spec.reduce_by_pct) {
        (Some(kw), None) => Ask::DownToKw(kw),
        (None, Some(pct)) => Ask::ReduceByPct(pct),
        _ => {
            return Err(ControlError::BadRequest(
                "give exactly one of down_to_kw and reduce_by_pct".into(),
            ));
        }
    };
    // The site first: an unknown one is a 404 whatever else is wrong.
    s.store.get_site(&site).await?;
    let now = now_ms();
    let start = spec
        .starts_at
        .as_deref()
        .map(|t| parse_time("starts_at", t))
        .transpose()?;
    let (starts_at_ms, ends_at_ms) =
        dr::window(start, now, spec.duration_minutes).map_err(bad_request)?;
    let last = s.store.last_power_sample(&site).await?;
    let baseline_kw = last.as_ref().and_then(|p| p.meter_kw);
    let target_kw = dr::target_kw(ask, baseline_kw).map_err(bad_request)?;
    let miners_kw = last.as_ref().map_or(0.0, |p| p.miners.kw);
    let event = s
        .store
        .create_dr_event(&NewDrEvent {
            id: format!("dr-{}", uuid::Uuid::new_v4()),
            site,
            target_kw,
            reduce_by_pct: spec.reduce_by_pct,
            baseline_kw,
            shed_inference: dr::sheds_inference(target_kw, baseline_kw, miners_kw),
            starts_at_ms,
            ends_at_ms,
            note: spec.note,
            created_at_ms: now,
            created_by: "admin".into(),
        })
        .await?;
    tracing::info!(id = %event.id, site = %event.site, target_kw, "demand-response event created");
    // The plan in force was made without this event's cap.
    planning::replan(&*s.store, &event.site, s.plan_interval, now).await;
    s.reconciler.nudge().await;
    Ok((StatusCode::CREATED, Json(views::dr_event(&event, now))))
}

/// Query of `GET /api/v1/dr-events`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DrEventsQuery {
    #[serde(default)]
    site: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/dr-events", tag = "energy",
    params(("site" = Option<String>, Query, description = "Only this site's events")),
    responses((status = 200, body = Vec<DrEvent>), (status = 404, body = ApiError)))]
pub(crate) async fn list_dr_events(
    State(s): State<AppState>,
    Query(q): Query<DrEventsQuery>,
) -> Result<JsonList<DrEvent>, ControlError> {
    if let Some(site) = &q.site {
        s.store.get_site(site).await?;
    }
    let now = now_ms();
    let events = s.store.list_dr_events(q.site.as_deref()).await?;
    Ok(Json(
        events.iter().map(|e| views::dr_event(e, now)).collect(),
    ))
}

#[utoipa::path(get, path = "/api/v1/dr-events/{id}", tag = "energy",
    params(("id" = String, Path, description = "Event id")),
    responses((status = 200, body = DrEventReport), (status = 404, body = ApiError)))]
pub(crate) async fn get_dr_event(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<DrEventReport>, ControlError> {
    let event = s.store.get_dr_event(&id).await?;
    Ok(Json(report(&s, &event).await?))
}

#[utoipa::path(post, path = "/api/v1/dr-events/{id}/cancel", tag = "energy",
    params(("id" = String, Path, description = "Event id")),
    responses((status = 200, body = DrEvent), (status = 404, body = ApiError),
        (status = 409, body = ApiError, description = "Cancelled already, or over")))]
pub(crate) async fn cancel_dr_event(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<DrEvent>, ControlError> {
    let now = now_ms();
    let event = s.store.cancel_dr_event(&id, now).await?;
    tracing::info!(id = %event.id, site = %event.site, "demand-response event cancelled");
    // The plan in force was made with this event's cap, which no longer holds.
    planning::replan(&*s.store, &event.site, s.plan_interval, now).await;
    s.reconciler.nudge().await;
    Ok(Json(views::dr_event(&event, now)))
}

#[utoipa::path(post, path = "/api/v1/agent/dr-events/{id}/acks", tag = "agent",
    request_body = DrAcks, security(("agent_token" = [])),
    params(("id" = String, Path, description = "Event id")),
    responses((status = 204), (status = 401, body = ApiError),
        (status = 404, body = ApiError, description = "No such event of this agent's site")))]
pub(crate) async fn dr_acks(
    State(s): State<AppState>,
    AgentSite(site): AgentSite,
    Path(id): Path<String>,
    Body(acks): Body<DrAcks>,
) -> Result<StatusCode, ControlError> {
    s.store.record_dr_acks(&id, &site, &acks.miners).await?;
    let acknowledged = acks
        .miners
        .iter()
        .filter(|m| m.acknowledged_ms.is_some())
        .count();
    tracing::info!(%id, %site, acknowledged, miners = acks.miners.len(), "miners answered a demand-response event");
    Ok(StatusCode::NO_CONTENT)
}

/// An event with its samples, its miners' answers and how it went, as of now.
async fn report(s: &AppState, event: &DrEventRecord) -> Result<DrEventReport, ControlError> {
    let now = now_ms();
    let end = event.effective_end_ms();
    let samples = s
        .store
        .power_samples(
            &event.site,
            event.starts_at_ms - LEAD_IN_MS,
            end.min(now.max(event.starts_at_ms)) + 1,
        )
        .await?;
    let miners = s.store.dr_acks(&event.id).await?;
    let metered: Vec<Metered> = samples
        .iter()
        .filter_map(|p| {
            Some(Metered {
                at_ms: p.at_ms,
                kw: p.meter_kw?,
            })
        })
        .collect();
    let judged = dr::assess(event.target_kw, event.starts_at_ms, end, &metered, now);
    let after_start = |ms: i64| (ms - event.starts_at_ms) as f64 / 1e3;
    let acknowledged: Vec<i64> = miners.iter().filter_map(|m| m.acknowledged_ms).collect();
    let all_acknowledged = !miners.is_empty() && acknowledged.len() == miners.len();
    let outcome = DrOutcome {
        target_reached_after_s: judged.reached_at_ms.map(after_start),
        held: judged.held,
        max_kw_after_reached: judged.max_kw_after_reached,
        miners_total: u32::try_from(miners.len()).unwrap_or(u32::MAX),
        miners_acknowledged: u32::try_from(acknowledged.len()).unwrap_or(u32::MAX),
        all_acknowledged_after_s: all_acknowledged
            .then(|| acknowledged.iter().max().copied().map(after_start))
            .flatten(),
    };
    Ok(DrEventReport {
        event: views::dr_event(event, now),
        outcome,
        samples,
        miners,
    })
}

fn bad_request(e: dr::DrError) -> ControlError {
    ControlError::BadRequest(e.to_string())
}
