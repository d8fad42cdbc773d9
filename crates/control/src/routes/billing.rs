//! The operator's money routes: the versioned price book, top-ups and ledgers, and usage
//! reports. Amounts are decimals end to end; rating happens at ingest (`gateway.rs`).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::IntoParams;
use wattmesh_proto::api::ApiError;
use wattmesh_proto::api::TopUp;
use wattmesh_proto::billing::{
    CURRENCY, DedicatedPrice, DedicatedPriceSpec, Invoice, LedgerEntry, Price, PriceSpec, UsageRow,
};
use wattmesh_store::{NewDedicatedPrice, NewPrice, UsageGroup, UsageQuery};

use super::JsonList;
use crate::ControlError;
use crate::clock::{format_ms, month_of, now_ms, parse_time};
use crate::extract::{Body, Query};
use crate::invoice::{InvoiceInputs, invoice};
use crate::service::AppState;

// --- prices ---

#[utoipa::path(post, path = "/api/v1/prices", tag = "billing", request_body = PriceSpec,
    responses((status = 201, body = Price), (status = 400, body = ApiError),
        (status = 404, body = ApiError, description = "Unknown model or tenant")))]
pub(crate) async fn set_price(
    State(s): State<AppState>,
    Body(spec): Body<PriceSpec>,
) -> Result<(StatusCode, Json<Price>), ControlError> {
    let (effective_from, effective_from_ms) = effective_from(spec.effective_from.as_deref())?;
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

/// When a new price takes effect: now, or a time not in the past (usage already rated keeps
/// its price).
fn effective_from(given: Option<&str>) -> Result<(String, i64), ControlError> {
    let now = now_ms();
    match given {
        Some(text) => {
            let ms = parse_time("effective_from", text)?;
            // A little slack for the clocks of the operator's machine and ours.
            if ms < now - 60_000 {
                return Err(ControlError::BadRequest(format!(
                    "effective_from {text} is in the past: usage already rated keeps its price; \
                     set a price from now on"
                )));
            }
            Ok((format_ms(ms), ms))
        }
        None => Ok((format_ms(now), now)),
    }
}

#[utoipa::path(post, path = "/api/v1/prices/dedicated", tag = "billing", request_body = DedicatedPriceSpec,
    responses((status = 201, body = DedicatedPrice), (status = 400, body = ApiError, description = "Not a dedicated deployment, or a bad price"),
        (status = 404, body = ApiError)))]
pub(crate) async fn set_dedicated_price(
    State(s): State<AppState>,
    Body(spec): Body<DedicatedPriceSpec>,
) -> Result<(StatusCode, Json<DedicatedPrice>), ControlError> {
    let (effective_from, effective_from_ms) = effective_from(spec.effective_from.as_deref())?;
    let price = s
        .store
        .add_dedicated_price(&NewDedicatedPrice {
            deployment: spec.deployment,
            per_replica_hour: spec.per_replica_hour,
            currency: CURRENCY.to_owned(),
            effective_from,
            effective_from_ms,
        })
        .await?;
    Ok((StatusCode::CREATED, Json(price)))
}

#[utoipa::path(get, path = "/api/v1/prices/dedicated", tag = "billing",
    responses((status = 200, body = Vec<DedicatedPrice>, description = "Every version, oldest first")))]
pub(crate) async fn list_dedicated_prices(
    State(s): State<AppState>,
) -> Result<JsonList<DedicatedPrice>, ControlError> {
    Ok(Json(s.store.list_dedicated_prices().await?))
}

// --- invoices ---

/// How many months back `GET .../invoices` lists.
const INVOICE_MONTHS: usize = 24;

/// A month `YYYY-MM` as its first and next month's first millisecond.
fn period_bounds(period: &str) -> Result<(i64, i64), ControlError> {
    let bad = || ControlError::BadRequest(format!("period {period:?}: write it as YYYY-MM"));
    let (y, m) = period.split_once('-').ok_or_else(bad)?;
    if y.len() != 4 || m.len() != 2 {
        return Err(bad());
    }
    let start = parse_time("period", &format!("{y}-{m}-01")).map_err(|_| bad())?;
    Ok(month_of(start))
}

async fn invoice_for(
    s: &AppState,
    tenant: &str,
    period: &str,
    from_ms: i64,
    to_ms: i64,
) -> Result<Invoice, ControlError> {
    let usage = s
        .store
        .usage_totals(&UsageQuery {
            models: None,
            tenant: Some(tenant.to_owned()),
            from_ms,
            to_ms,
            bucket_ms: None,
            group: UsageGroup::ModelAndDeployment,
        })
        .await?;
    let seconds = s.store.replica_seconds(tenant, from_ms, to_ms).await?;
    let prices = s.store.list_dedicated_prices().await?;
    Ok(invoice(&InvoiceInputs {
        tenant,
        period,
        from_ms,
        to_ms,
        now_ms: now_ms(),
        usage: &usage,
        replica_seconds: &seconds,
        dedicated_prices: &prices,
    }))
}

#[utoipa::path(get, path = "/api/v1/tenants/{name}/invoices", tag = "billing",
    params(("name" = String, Path)),
    responses((status = 200, body = Vec<Invoice>, description = "Monthly invoices since the tenant was created (at most 24), newest first"),
        (status = 404, body = ApiError)))]
pub(crate) async fn list_invoices(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<JsonList<Invoice>, ControlError> {
    let tenant = s.store.get_tenant(&name).await?;
    let created = parse_time("created_at", &tenant.created_at).unwrap_or_else(|_| now_ms());
    let mut out = Vec::new();
    let (mut from, mut to) = month_of(now_ms());
    while out.len() < INVOICE_MONTHS && to > created {
        let period = format_ms(from)[..7].to_owned();
        out.push(invoice_for(&s, &name, &period, from, to).await?);
        (from, to) = month_of(from - 1);
    }
    Ok(Json(out))
}

#[utoipa::path(get, path = "/api/v1/tenants/{name}/invoices/{period}", tag = "billing",
    params(("name" = String, Path), ("period" = String, Path, description = "YYYY-MM")),
    responses((status = 200, body = Invoice), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
pub(crate) async fn get_invoice(
    State(s): State<AppState>,
    Path((name, period)): Path<(String, String)>,
) -> Result<Json<Invoice>, ControlError> {
    let (from, to) = period_bounds(&period)?;
    s.store.get_tenant(&name).await?;
    Ok(Json(invoice_for(&s, &name, &period, from, to).await?))
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
    /// `model`, `key`, `site`, `region` or `day`; default one total.
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
        Some("site") => (UsageGroup::Site, None),
        Some("region") => (UsageGroup::Region, None),
        Some("day") => (UsageGroup::None, Some(DAY_MS)),
        Some(other) => {
            return Err(ControlError::BadRequest(format!(
                "group_by {other:?}: use model, key, site, region or day"
            )));
        }
    };
    let totals = s
        .store
        .usage_totals(&UsageQuery {
            models: None,
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
