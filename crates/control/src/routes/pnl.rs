//! The P&L: Bitcoin market snapshots, what DR events pay, and `GET /api/v1/pnl`. This module
//! only gathers what was measured and billed — power samples, usage grouped by site, DR events
//! and their terms, the market over time — and hands it to `wattmesh_domain::pnl`, which books
//! it.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use rust_decimal::Decimal;
use serde::Deserialize;
use utoipa::IntoParams;
use wattmesh_domain::mining::Network;
use wattmesh_domain::pnl::{
    self, By, EnergyPrice, Event, Line, MarketPoint, Sample, SiteInput, Usage,
};
use wattmesh_proto::api::ApiError;
use wattmesh_proto::pnl::{
    DrTerms, MarketSnapshot, MarketSpec, Metering, PnlLine, PnlReport, SitePnl, Treasury,
    TreasuryRow,
};
use wattmesh_store::{DrTermsRecord, MarketRecord, NewMarketSnapshot, UsageGroup, UsageQuery};

use super::JsonList;
use crate::ControlError;
use crate::clock::{format_ms, month_of, now_ms, parse_time};
use crate::extract::{Body, Query};
use crate::service::AppState;

/// Samples read beyond each edge of the range: the readings on either side of an edge are what
/// book the energy across it, and one before an event's start is its baseline.
const EDGE_MS: i64 = 3_600_000;

// --- market snapshots ---

fn snapshot(r: &MarketRecord) -> MarketSnapshot {
    let network = Network {
        difficulty: r.difficulty,
        subsidy_btc: r.subsidy_btc,
        fees_btc_per_block: r.fees_btc_per_block,
        btc_usd: r.btc_usd.try_into().unwrap_or(0.0),
    };
    MarketSnapshot {
        version: r.version,
        btc_usd: r.btc_usd,
        difficulty: r.difficulty,
        subsidy_btc: r.subsidy_btc,
        fees_btc_per_block: r.fees_btc_per_block,
        hashprice_usd_per_ph_day: network.hashprice_usd_per_ph_day(),
        effective_from: r.effective_from.clone(),
        effective_from_ms: r.effective_from_ms,
    }
}

#[utoipa::path(post, path = "/api/v1/market", tag = "pnl", request_body = MarketSpec,
    responses((status = 201, body = MarketSnapshot),
        (status = 400, body = ApiError, description = "Difficulty not positive, negative subsidy or fees, price not positive")))]
pub(crate) async fn set_market(
    State(s): State<AppState>,
    Body(spec): Body<MarketSpec>,
) -> Result<(StatusCode, Json<MarketSnapshot>), ControlError> {
    let now = now_ms();
    let record = s
        .store
        .add_market_snapshot(&NewMarketSnapshot {
            btc_usd: spec.btc_usd,
            difficulty: spec.difficulty,
            subsidy_btc: spec.subsidy_btc,
            fees_btc_per_block: spec.fees_btc_per_block,
            effective_from: format_ms(now),
            effective_from_ms: now,
        })
        .await?;
    tracing::info!(version = record.version, btc_usd = %record.btc_usd, "market snapshot set");
    Ok((StatusCode::CREATED, Json(snapshot(&record))))
}

#[utoipa::path(get, path = "/api/v1/market", tag = "pnl",
    responses((status = 200, body = Vec<MarketSnapshot>)))]
pub(crate) async fn list_market(
    State(s): State<AppState>,
) -> Result<JsonList<MarketSnapshot>, ControlError> {
    let all = s.store.list_market_snapshots().await?;
    Ok(Json(all.iter().map(snapshot).collect()))
}

// --- DR event terms ---

#[utoipa::path(put, path = "/api/v1/dr-events/{id}/terms", tag = "pnl", request_body = DrTerms,
    params(("id" = String, Path, description = "Event id")),
    responses((status = 200, body = DrTerms),
        (status = 400, body = ApiError, description = "A negative rate"),
        (status = 404, body = ApiError, description = "Unknown event")))]
pub(crate) async fn set_dr_terms(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Body(terms): Body<DrTerms>,
) -> Result<Json<DrTerms>, ControlError> {
    let stored = s
        .store
        .set_dr_terms(&DrTermsRecord {
            event_id: id,
            pay_usd_per_mwh: terms.pay_usd_per_mwh,
            peak_charge_usd_per_kw: terms.peak_charge_usd_per_kw,
        })
        .await?;
    tracing::info!(id = %stored.event_id, "demand-response terms set");
    Ok(Json(DrTerms {
        pay_usd_per_mwh: stored.pay_usd_per_mwh,
        peak_charge_usd_per_kw: stored.peak_charge_usd_per_kw,
    }))
}

// --- the P&L ---

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct PnlParams {
    /// Absent: the fleet, with a P&L per site.
    site: Option<String>,
    /// RFC 3339 time or date; default the start of this month (UTC).
    from: Option<String>,
    /// RFC 3339 time or date, exclusive; default now.
    to: Option<String>,
    /// `interval` (15 minutes, at most 3,000 of them), `day` or `month`; default `day`.
    by: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/pnl", tag = "pnl", params(PnlParams),
    responses((status = 200, body = PnlReport),
        (status = 400, body = ApiError, description = "Bad times, `to` not after `from`, unknown `by`, too many buckets"),
        (status = 404, body = ApiError, description = "Unknown site")))]
pub(crate) async fn pnl_report(
    State(s): State<AppState>,
    Query(params): Query<PnlParams>,
) -> Result<Json<PnlReport>, ControlError> {
    let now = now_ms();
    let from = match &params.from {
        Some(t) => parse_time("from", t)?,
        None => month_of(now).0,
    };
    let to = match &params.to {
        Some(t) => parse_time("to", t)?,
        None => now + 1,
    };
    let by_name = params.by.as_deref().unwrap_or("day");
    let by = By::parse(by_name).ok_or_else(|| {
        ControlError::BadRequest(format!("by {by_name:?}: use interval, day or month"))
    })?;
    let buckets =
        pnl::buckets(by, from, to).map_err(|e| ControlError::BadRequest(e.to_string()))?;
    let span = match (buckets.first(), buckets.last()) {
        (Some(f), Some(l)) => (f.0, l.1),
        _ => return Err(ControlError::BadRequest("the range holds no bucket".into())),
    };
    let sites = match &params.site {
        Some(name) => vec![s.store.get_site(name).await?],
        None => s.store.list_sites().await?,
    };

    let market: Vec<MarketPoint> = s
        .store
        .list_market_snapshots()
        .await?
        .iter()
        .map(|m| MarketPoint {
            from_ms: m.effective_from_ms,
            btc_usd: m.btc_usd,
            difficulty: m.difficulty,
            subsidy_btc: m.subsidy_btc,
            fees_btc_per_block: m.fees_btc_per_block,
        })
        .collect();

    // Usage by site in spans that nest in the P&L's buckets: 15 minutes, or days (which
    // nest in months too).
    let usage_bucket = if by == By::Interval {
        pnl::INTERVAL_MS
    } else {
        pnl::DAY_MS
    };
    let mut usage: HashMap<String, Vec<Usage>> = HashMap::new();
    for t in s
        .store
        .usage_totals(&UsageQuery {
            tenant: None,
            models: None,
            from_ms: span.0,
            to_ms: span.1,
            bucket_ms: Some(usage_bucket),
            group: UsageGroup::Site,
        })
        .await?
    {
        let (Some(at_ms), Some(site)) = (t.bucket_start_ms, t.group) else {
            continue;
        };
        usage.entry(site).or_default().push(Usage {
            at_ms,
            tokens: t.prompt_tokens.saturating_add(t.completion_tokens),
            revenue_usd: t.cost,
        });
    }

    let terms: HashMap<String, DrTermsRecord> = s
        .store
        .dr_terms(params.site.as_deref())
        .await?
        .into_iter()
        .map(|t| (t.event_id.clone(), t))
        .collect();
    let mut inputs = Vec::with_capacity(sites.len());
    for site in &sites {
        let events: Vec<Event> = s
            .store
            .list_dr_events(Some(&site.name))
            .await?
            .iter()
            .filter(|e| e.starts_at_ms < span.1 && e.effective_end_ms() > span.0)
            .filter_map(|e| {
                let t = terms.get(&e.id)?;
                Some(Event {
                    id: e.id.clone(),
                    target_kw: e.target_kw,
                    start_ms: e.starts_at_ms,
                    end_ms: e.effective_end_ms(),
                    pay_usd_per_mwh: t.pay_usd_per_mwh,
                    peak_charge_usd_per_kw: t.peak_charge_usd_per_kw,
                })
            })
            .collect();
        let earliest = events.iter().map(|e| e.start_ms).fold(span.0, i64::min);
        let samples = s
            .store
            .power_samples(&site.name, earliest - EDGE_MS, span.1 + EDGE_MS)
            .await?
            .iter()
            .map(|p| Sample {
                at_ms: p.at_ms,
                meter_kw: p.meter_kw,
                meter_kwh: p.meter_kwh,
                miners_ths: p.miners.ths,
            })
            .collect();
        let prices = s
            .store
            .site_prices(&site.name, span.0, span.1)
            .await?
            .into_iter()
            .map(|p| EnergyPrice {
                start_ms: p.starts_at_ms,
                end_ms: p
                    .starts_at_ms
                    .saturating_add(p.interval_s.saturating_mul(1000)),
                usd_per_mwh: p.usd_per_mwh,
            })
            .collect();
        inputs.push(SiteInput {
            site: site.name.clone(),
            power_price_usd_per_mwh: site.power_price_usd_per_mwh,
            prices,
            samples,
            usage: usage.remove(&site.name).unwrap_or_default(),
            events,
        });
    }

    let fleet = pnl::fleet_pnl(&inputs, &buckets, &market, now);
    let prices: HashMap<&str, Decimal> = sites
        .iter()
        .map(|s| (s.name.as_str(), s.power_price_usd_per_mwh))
        .collect();
    let site_views: Vec<SitePnl> = fleet
        .sites
        .iter()
        .map(|p| SitePnl {
            site: p.site.clone(),
            power_price_usd_per_mwh: prices.get(p.site.as_str()).copied().unwrap_or_default(),
            lines: p.lines.iter().map(line).collect(),
            total: line(&p.total),
            metering: Metering {
                counter_kwh: p.metering.counter_kwh,
                integrated_kwh: p.metering.integrated_kwh,
                unmetered_s: p.metering.unmetered_s,
            },
            notes: p.notes.clone(),
        })
        .collect();
    let row = |r: &pnl::TreasuryRow| TreasuryRow {
        name: r.name.clone(),
        btc_mined: r.btc_mined,
        usd_when_mined: r.usd_when_mined,
        usd_at_latest: r.usd_at_latest,
    };
    let (lines, total) = match (&params.site, site_views.first()) {
        (Some(_), Some(one)) => (one.lines.clone(), one.total.clone()),
        _ => (fleet.lines.iter().map(line).collect(), line(&fleet.total)),
    };
    Ok(Json(PnlReport {
        site: params.site,
        by: by_name.to_owned(),
        from: format_ms(span.0),
        to: format_ms(span.1),
        lines,
        total,
        sites: site_views,
        treasury: Treasury {
            latest_btc_usd: fleet.treasury.latest_btc_usd,
            sites: fleet.treasury.sites.iter().map(row).collect(),
            fleet: row(&fleet.treasury.fleet),
        },
    }))
}

fn line(l: &Line) -> PnlLine {
    PnlLine {
        start: format_ms(l.start_ms),
        start_ms: l.start_ms,
        end_ms: l.end_ms,
        energy_kwh: l.energy_kwh,
        energy_cost_usd: l.energy_cost_usd,
        btc_mined: l.btc_mined,
        mining_revenue_usd: l.mining_revenue_usd,
        tokens: l.tokens,
        inference_revenue_usd: l.inference_revenue_usd,
        curtailed_kwh: l.curtailed_kwh,
        dr_payment_usd: l.dr_payment_usd,
        avoided_peak_charge_usd: l.avoided_peak_charge_usd,
        margin_usd: l.margin_usd,
        margin_usd_per_mwh: l.margin_usd_per_mwh,
    }
}
