//! The operator's money routes: the versioned price book, top-ups and ledgers, and usage
//! reports. Amounts are decimals end to end; rating happens at ingest (`gateway.rs`).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::IntoParams;
use wattmesh_proto::api::ApiError;
use wattmesh_proto::api::TopUp;
use wattmesh_proto::billing::{CURRENCY, LedgerEntry, Price, PriceSpec, UsageRow};
use wattmesh_store::{NewPrice, UsageGroup, UsageQuery};

use super::JsonList;
use crate::ControlError;
use crate::clock::{format_ms, month_of, now_ms, parse_time};
use crate::extract::{Body, Query};
use crate::service::AppState;

// --- prices ---

#[utoipa::path(post, path = "/api/v1/prices", tag = "billing", request_body = PriceSpec,
    responses((status = 201, body = Price), (status = 400, body = ApiError),
        (status = 404, body = ApiError, description = "Unknown model or tenant")))]
pub(crate) async fn set_price(
    State(s): State<AppState>,
    Body(spec): Body<PriceSpec>,
) -> Result<(StatusCode, Json<Price>), ControlError> {
    let now = now_ms();
    let (effective_from, effective_from_ms) = match spec.effective_from {
        Some(text) => {
            let ms = parse_time("effective_from", &text)?;
            // A little slack for the clocks of the operator's machine and ours.
            if ms < now - 60_000 {
                return Err(ControlError::BadRequest(format!(
                    "effective_from {text} is in the past: usage already rated keeps its price; \
                     set a price from now on"
                )));
            }
            (format_ms(ms), ms)
        }
        None => (format_ms(now), now),
    };
    let price = s
        .store
        .add_price(&NewPrice {
            model: spec.model,
            tenant: spec.tenant,
            input_per_1m: spec.input_per_1m,
            output_per_1m: spec.output_per_1m,
            currency: CURRENCY.to_owned(),
            effective_from,
            effective_from_ms,
        })
        .await?;
    s.reconciler.nudge().await;
    Ok((StatusCode::CREATED, Json(price)))
}

#[utoipa::path(get, path = "/api/v1/prices", tag = "billing",
    responses((status = 200, body = Vec<Price>, description = "Every version, oldest first")))]
pub(crate) async fn list_prices(
    State(s): State<AppState>,
) -> Result<JsonList<Price>, ControlError> {
    Ok(Json(s.store.list_prices().await?))
}

// --- top-ups and ledgers ---

#[utoipa::path(post, path = "/api/v1/tenants/{name}/top-ups", tag = "billing",
    params(("name" = String, Path)), request_body = TopUp,
    responses((status = 201, body = LedgerEntry), (status = 400, body = ApiError),
        (status = 404, body = ApiError), (status = 409, body = ApiError, description = "Reference used before")))]
pub(crate) async fn top_up(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Body(top_up): Body<TopUp>,
) -> Result<(StatusCode, Json<LedgerEntry>), ControlError> {
    let reference = match top_up.reference {
        Some(r) if r.trim().is_empty() || r.len() > 256 => {
            return Err(ControlError::BadRequest(
                "reference must be 1 to 256 characters".into(),
            ));
        }
        Some(r) => r,
        None => format!("top-up-{}", uuid::Uuid::new_v4().simple()),
    };
    let entry = s.store.top_up(&name, top_up.amount, &reference).await?;
    Ok((StatusCode::CREATED, Json(entry)))
}

#[utoipa::path(get, path = "/api/v1/tenants/{name}/ledger", tag = "billing",
    params(("name" = String, Path)),
    responses((status = 200, body = Vec<LedgerEntry>), (status = 404, body = ApiError)))]
pub(crate) async fn ledger(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<JsonList<LedgerEntry>, ControlError> {
    Ok(Json(s.store.ledger(&name).await?))
}

// --- usage reports ---

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct UsageParams {
    /// Absent: every tenant.
    tenant: Option<String>,
    /// RFC 3339 time or date; default the start of this month (UTC).
    from: Option<String>,
    /// RFC 3339 time or date, exclusive; default now.
    to: Option<String>,
    /// `model`, `key` or `day`; default one total.
    group_by: Option<String>,
}

/// A day, the bucket of `--group-by day`.
const DAY_MS: i64 = 86_400_000;

#[utoipa::path(get, path = "/api/v1/usage", tag = "billing", params(UsageParams),
    responses((status = 200, body = Vec<UsageRow>), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
pub(crate) async fn usage_report(
    State(s): State<AppState>,
    Query(params): Query<UsageParams>,
) -> Result<JsonList<UsageRow>, ControlError> {
    let now = now_ms();
    let from = match &params.from {
        Some(t) => parse_time("from", t)?,
        None => month_of(now).0,
    };
    let to = match &params.to {
        Some(t) => parse_time("to", t)?,
        None => now + 1,
    };
    if to <= from {
        return Err(ControlError::BadRequest("`to` must be after `from`".into()));
    }
    if let Some(t) = &params.tenant {
        s.store.get_tenant(t).await?;
    }
    let (group, bucket_ms) = match params.group_by.as_deref() {
        None => (UsageGroup::None, None),
        Some("model") => (UsageGroup::Model, None),
        Some("key") => (UsageGroup::Key, None),
        Some("day") => (UsageGroup::None, Some(DAY_MS)),
        Some(other) => {
            return Err(ControlError::BadRequest(format!(
                "group_by {other:?}: use model, key or day"
            )));
        }
    };
    let totals = s
        .store
        .usage_totals(&UsageQuery {
            tenant: params.tenant,
            from_ms: from,
            to_ms: to,
            bucket_ms,
            group,
        })
        .await?;
    Ok(Json(
        totals
            .into_iter()
            .map(|t| UsageRow {
                group: match (t.bucket_start_ms, t.group) {
                    (Some(start), _) => format_ms(start)[..10].to_owned(),
                    (None, Some(g)) => g,
                    (None, None) => "total".to_owned(),
                },
                requests: t.requests,
                prompt_tokens: t.prompt_tokens,
                completion_tokens: t.completion_tokens,
                cost: t.cost,
                currency: CURRENCY.to_owned(),
            })
            .collect(),
    ))
}
