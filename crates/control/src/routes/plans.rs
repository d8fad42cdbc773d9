//! The live power plan: an operator sets a site's power model, plans it now or reads its
//! plans; the site's agent reports how applying each plan went. The planning itself is in
//! `crate::planning` (which the periodic loop runs too).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use wattmesh_domain::market::horizon::points_of;
use wattmesh_domain::market::{IntervalLength, PriceSeries};
use wattmesh_domain::planner::SiteSpec;
use wattmesh_proto::api::ApiError;
use wattmesh_proto::plan::{
    PlanReport, PowerModel, PowerPlan, PriceImport, PriceImportReceipt, SitePrice, SitePrices,
};
use wattmesh_store::{PowerModelRecord, PowerPlanRecord, SitePricePoint};

use super::JsonList;
use crate::ControlError;
use crate::clock::{format_ms, now_ms, parse_time};
use crate::extract::{AgentSite, Body, Query};
use crate::planning::{self, PlanningError};
use crate::service::AppState;

/// Most plans one list answers.
const MAX_LIST: u32 = 1_000;

fn model_view(r: PowerModelRecord) -> PowerModel {
    PowerModel {
        site: r.site,
        spec: r.spec,
        updated_at: format_ms(r.updated_at_ms),
    }
}

fn plan_view(r: PowerPlanRecord) -> PowerPlan {
    PowerPlan {
        starts_at: format_ms(r.starts_at_ms),
        ends_at: format_ms(r.ends_at_ms),
        created_at: format_ms(r.created_at_ms),
        id: r.id,
        site: r.site,
        starts_at_ms: r.starts_at_ms,
        ends_at_ms: r.ends_at_ms,
        interval: r.interval,
        directive: r.directive,
        report: r.report,
    }
}

#[utoipa::path(put, path = "/api/v1/sites/{name}/power-model", tag = "plan",
    request_body(content = Object, description = "The planner's site file, as JSON"),
    params(("name" = String, Path, description = "Site name")),
    responses((status = 200, body = PowerModel),
        (status = 400, body = ApiError, description = "A field the planner cannot use, or a name other than the site's"),
        (status = 404, body = ApiError, description = "Unknown site")))]
pub(crate) async fn set_power_model(
    State(s): State<AppState>,
    Path(site): Path<String>,
    Body(spec): Body<SiteSpec>,
) -> Result<Json<PowerModel>, ControlError> {
    if spec.name != site {
        return Err(ControlError::BadRequest(format!(
            "name: the model is named {:?} but is set on site {site:?}",
            spec.name
        )));
    }
    spec.check()
        .map_err(|e| ControlError::BadRequest(e.to_string()))?;
    let record = s.store.set_power_model(&site, &spec, now_ms()).await?;
    Ok(Json(model_view(record)))
}

#[utoipa::path(get, path = "/api/v1/sites/{name}/power-model", tag = "plan",
    params(("name" = String, Path, description = "Site name")),
    responses((status = 200, body = PowerModel),
        (status = 404, body = ApiError, description = "Unknown site, or no model set")))]
pub(crate) async fn get_power_model(
    State(s): State<AppState>,
    Path(site): Path<String>,
) -> Result<Json<PowerModel>, ControlError> {
    s.store.get_site(&site).await?;
    Ok(Json(model_view(s.store.power_model(&site).await?)))
}

#[utoipa::path(post, path = "/api/v1/sites/{name}/plans", tag = "plan",
    params(("name" = String, Path, description = "Site name")),
    responses((status = 201, body = PowerPlan),
        (status = 404, body = ApiError, description = "Unknown site, or no power model"),
        (status = 409, body = ApiError, description = "The site cannot be planned now (e.g. a DR cap below what the miners can shed to by then, no Bitcoin market)")))]
pub(crate) async fn plan_now(
    State(s): State<AppState>,
    Path(site): Path<String>,
) -> Result<(StatusCode, Json<PowerPlan>), ControlError> {
    s.store.get_site(&site).await?;
    let plan = planning::plan_site(&*s.store, &site, s.plan_interval, now_ms())
        .await
        .map_err(|e| match e {
            PlanningError::Store(e) => ControlError::Store(e),
            e @ PlanningError::Plan { .. } => ControlError::Conflict(e.to_string()),
        })?;
    // The agent hears of it with its desired state.
    s.reconciler.nudge().await;
    Ok((StatusCode::CREATED, Json(plan_view(plan))))
}

/// Most intervals one import may carry: a year of 5-minute prices.
const MAX_IMPORT: usize = 366 * 288;

#[utoipa::path(put, path = "/api/v1/sites/{name}/prices", tag = "plan", request_body = PriceImport,
    params(("name" = String, Path, description = "Site name")),
    responses((status = 200, body = PriceImportReceipt, description = "Stored, replacing the prices it overlaps; the site replanned if it has a power model"),
        (status = 400, body = ApiError, description = "A bad start or interval, no prices, a price not finite or beyond the market's bounds, too many"),
        (status = 404, body = ApiError, description = "Unknown site")))]
pub(crate) async fn import_prices(
    State(s): State<AppState>,
    Path(site): Path<String>,
    Body(import): Body<PriceImport>,
) -> Result<Json<PriceImportReceipt>, ControlError> {
    let bad = |e: String| ControlError::BadRequest(e);
    let start_ms = parse_time("start", &import.start)?;
    if start_ms.rem_euclid(1000) != 0 {
        return Err(bad("start: whole seconds only".into()));
    }
    let interval = IntervalLength::from_minutes(import.interval_minutes).ok_or_else(|| {
        bad(format!(
            "interval_minutes: {} is not a market interval; use 5 or 15",
            import.interval_minutes
        ))
    })?;
    if import.usd_per_mwh.len() > MAX_IMPORT {
        return Err(bad(format!(
            "usd_per_mwh: at most {MAX_IMPORT} intervals (a year of 5-minute prices) per import; \
             got {}",
            import.usd_per_mwh.len()
        )));
    }
    let series = PriceSeries::new(start_ms / 1000, interval, import.usd_per_mwh)
        .map_err(|e| bad(format!("usd_per_mwh: {e}")))?;
    let points: Vec<SitePricePoint> = points_of(&series)
        .into_iter()
        .map(|p| SitePricePoint {
            starts_at_ms: p.start_unix_s * 1000,
            interval_s: p.interval.seconds(),
            usd_per_mwh: p.usd_per_mwh,
        })
        .collect();
    let replaced = s.store.import_site_prices(&site, &points).await?;
    let end_ms = series.timestamp(series.len()) * 1000;
    // The plan in force was made on the old prices.
    let replanned = planning::replan(&*s.store, &site, s.plan_interval, now_ms())
        .await
        .map(|plan| plan.id);
    if replanned.is_some() {
        s.reconciler.nudge().await;
    }
    Ok(Json(PriceImportReceipt {
        site,
        imported: points.len(),
        replaced,
        from: format_ms(start_ms),
        to: format_ms(end_ms),
        replanned,
    }))
}

/// Query of `GET /api/v1/sites/{name}/prices`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PricesQuery {
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    to: Option<String>,
}

/// The longest range one read answers.
const MAX_PRICE_RANGE_MS: i64 = 366 * 86_400_000;

#[utoipa::path(get, path = "/api/v1/sites/{name}/prices", tag = "plan",
    params(("name" = String, Path, description = "Site name"),
        ("from" = Option<String>, Query, description = "RFC 3339 time or date; default now"),
        ("to" = Option<String>, Query, description = "RFC 3339 time or date, exclusive; default a day after `from`")),
    responses((status = 200, body = SitePrices),
        (status = 400, body = ApiError, description = "Bad times, `to` not after `from`, more than a year"),
        (status = 404, body = ApiError, description = "Unknown site")))]
pub(crate) async fn get_prices(
    State(s): State<AppState>,
    Path(site): Path<String>,
    Query(q): Query<PricesQuery>,
) -> Result<Json<SitePrices>, ControlError> {
    let record = s.store.get_site(&site).await?;
    let from = match &q.from {
        Some(t) => parse_time("from", t)?,
        None => now_ms(),
    };
    let to = match &q.to {
        Some(t) => parse_time("to", t)?,
        None => from.saturating_add(86_400_000),
    };
    if to <= from || to - from > MAX_PRICE_RANGE_MS {
        return Err(ControlError::BadRequest(
            "to must be after from, and at most a year after it".into(),
        ));
    }
    let prices = s
        .store
        .site_prices(&site, from, to)
        .await?
        .into_iter()
        .map(|p| SitePrice {
            starts_at: format_ms(p.starts_at_ms),
            interval_minutes: u32::try_from(p.interval_s / 60).unwrap_or(u32::MAX),
            usd_per_mwh: p.usd_per_mwh,
        })
        .collect();
    Ok(Json(SitePrices {
        site,
        tariff_usd_per_mwh: record.power_price_usd_per_mwh.to_string(),
        prices,
    }))
}

/// Query of `GET /api/v1/sites/{name}/plans`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PlansQuery {
    #[serde(default)]
    limit: Option<u32>,
}

#[utoipa::path(get, path = "/api/v1/sites/{name}/plans", tag = "plan",
    params(("name" = String, Path, description = "Site name"),
        ("limit" = Option<u32>, Query, description = "Newest plans first, at most this many (1–1000, default 10)")),
    responses((status = 200, body = Vec<PowerPlan>), (status = 400, body = ApiError),
        (status = 404, body = ApiError)))]
pub(crate) async fn list_plans(
    State(s): State<AppState>,
    Path(site): Path<String>,
    Query(q): Query<PlansQuery>,
) -> Result<JsonList<PowerPlan>, ControlError> {
    let limit = q.limit.unwrap_or(10);
    if !(1..=MAX_LIST).contains(&limit) {
        return Err(ControlError::BadRequest(format!(
            "limit: {limit} is not between 1 and {MAX_LIST}"
        )));
    }
    s.store.get_site(&site).await?;
    let plans = s.store.power_plans(&site, limit).await?;
    Ok(Json(plans.into_iter().map(plan_view).collect()))
}

#[utoipa::path(post, path = "/api/v1/agent/plans/{id}/report", tag = "agent",
    request_body = PlanReport,
    params(("id" = String, Path, description = "Plan id")),
    responses((status = 204), (status = 400, body = ApiError), (status = 401, body = ApiError),
        (status = 404, body = ApiError, description = "No such plan of this agent's site")))]
pub(crate) async fn plan_report(
    State(s): State<AppState>,
    AgentSite(site): AgentSite,
    Path(id): Path<String>,
    Body(report): Body<PlanReport>,
) -> Result<StatusCode, ControlError> {
    if let Some(kw) = report.meter_kw
        && !(kw.is_finite() && kw >= 0.0)
    {
        return Err(ControlError::BadRequest(format!(
            "meter_kw: {kw} is not a number ≥ 0"
        )));
    }
    s.store.report_power_plan(&id, &site, &report).await?;
    tracing::info!(
        %id, %site, outcome = ?report.outcome, hashing = report.miners_hashing,
        asleep = report.miners_asleep, unconfirmed = report.miners_unconfirmed,
        "the agent applied a power plan"
    );
    Ok(StatusCode::NO_CONTENT)
}
