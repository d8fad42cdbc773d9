//! The live planner's driver: at the start of every planning interval (and when an operator
//! asks, or imports prices), each site with a power model is planned for the interval at hand —
//! from its imported prices (its tariff where they end), the inference demand its region's
//! gateways reported over the last hour (its model's forecast while there is none),
//! the Bitcoin market in force, the DR events ahead and the miners' draw at the last sample —
//! and the plan is stored; the reconciler then hands it to the site's agent in its desired
//! state. The decision itself is `wattmesh_domain::planner::live`; here are only reads, the
//! clock and the write. A round reads the fleet-wide inputs once (`Round`: DR events, the
//! market, the region's usage, the sites and models) and each site's own (its prices and last
//! sample) as it plans it.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use wattmesh_domain::market::{IntervalLength, NetworkSpec, PricePoint};
use wattmesh_domain::planner::demand::{ObservedDemand, RegionUsage, gpu_capacity_tokens_per_s};
use wattmesh_domain::planner::live::{LiveInputs, LivePlan, plan_now};
use wattmesh_domain::planner::{DrEventSpec, PlanError, SiteSpec};
use wattmesh_proto::gateway::DEFERRABLE_PRIORITY;
use wattmesh_proto::plan::{AsicTarget, GpuTarget, PlanDirective};
use wattmesh_store::{
    DrEventRecord, MarketRecord, PowerModelRecord, PowerPlanRecord, SiteRecord, Store, StoreError,
    UsageGroup, UsageQuery, UsageTotal,
};

use crate::clock::{format_ms, now_ms};
use crate::reconciler::Reconciler;

/// Intervals planned ahead: a day of 15-minute intervals, so a DR event or a price step later
/// today shapes the ramps now.
pub(crate) const HORIZON: usize = 96;
/// A power sample older than this says nothing about the miners' draw now.
const SAMPLE_FRESH_MS: i64 = 5 * 60 * 1000;

/// Why a site could not be planned.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PlanningError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("site {site}: {source}")]
    Plan { site: String, source: PlanError },
}

/// Plans `site` for the interval containing `now_ms` and stores the plan.
pub(crate) async fn plan_site(
    store: &dyn Store,
    site: &str,
    interval: IntervalLength,
    now_ms: i64,
) -> Result<PowerPlanRecord, PlanningError> {
    let model = store.power_model(site).await?;
    let round = Round::read(store, now_ms).await?;
    plan_with(store, &round, &model, interval, now_ms).await
}

/// What a planning round reads once for every site it plans: the fleet-wide inputs.
struct Round {
    now_ms: i64,
    /// DR events open now, every site's.
    dr_events: Vec<DrEventRecord>,
    /// The Bitcoin market in force; `None`: each model's own.
    bitcoin: Option<NetworkSpec>,
    /// The gateways' usage of the last [`DEMAND_WINDOW_MS`], by region and priority.
    usage: Vec<UsageTotal>,
    sites: Vec<SiteRecord>,
    models: Vec<PowerModelRecord>,
}

impl Round {
    async fn read(store: &dyn Store, now_ms: i64) -> Result<Round, StoreError> {
        let models = store.list_power_models().await?;
        // Only GPU sites read demand: a fleet of miners only does not scan the usage table.
        let usage = if models.iter().any(|m| !m.spec.gpu_groups.is_empty()) {
            store
                .usage_totals(&UsageQuery {
                    tenant: None,
                    models: None,
                    from_ms: now_ms - DEMAND_WINDOW_MS,
                    to_ms: now_ms,
                    bucket_ms: None,
                    group: UsageGroup::RegionAndPriority,
                })
                .await?
        } else {
            Vec::new()
        };
        Ok(Round {
            now_ms,
            dr_events: store.open_dr_events(now_ms).await?,
            bitcoin: market_in_force(&store.list_market_snapshots().await?, now_ms),
            usage,
            sites: store.list_sites().await?,
            models,
        })
    }
}

/// Plans `model`'s site with `round`'s fleet-wide inputs and stores the plan.
async fn plan_with(
    store: &dyn Store,
    round: &Round,
    model: &PowerModelRecord,
    interval: IntervalLength,
    now_ms: i64,
) -> Result<PowerPlanRecord, PlanningError> {
    let site = &model.site;
    let record = match round.sites.iter().find(|s| s.name == *site) {
        Some(r) => r.clone(),
        None => store.get_site(site).await?,
    };
    let inputs = live_inputs(store, round, &record, &model.spec, interval).await?;
    let live = plan_now(&model.spec, &inputs).map_err(|source| PlanningError::Plan {
        site: site.clone(),
        source,
    })?;
    let plan = record_of(site, live, now_ms);
    store.add_power_plan(&plan).await?;
    Ok(plan)
}

/// Plans `site` again after a change the plan in force did not see (a DR event made or
/// cancelled, prices imported), if it has a power model; returns the new plan. Best effort:
/// the change itself is stored, and the next interval plans anyway.
pub(crate) async fn replan(
    store: &dyn Store,
    site: &str,
    interval: IntervalLength,
    now_ms: i64,
) -> Option<PowerPlanRecord> {
    match store.power_model(site).await {
        Ok(_) => {}
        Err(StoreError::NotFound { .. }) => return None,
        Err(e) => {
            tracing::warn!(%site, "cannot replan: {e}");
            return None;
        }
    }
    match plan_site(store, site, interval, now_ms).await {
        Ok(plan) => {
            tracing::info!(%site, plan = %plan.id, "replanned the interval");
            Some(plan)
        }
        Err(e) => {
            tracing::warn!(%site, "cannot replan: {e}");
            None
        }
    }
}

/// What is known now about `site`, besides its model.
async fn live_inputs(
    store: &dyn Store,
    round: &Round,
    site: &SiteRecord,
    spec: &SiteSpec,
    interval: IntervalLength,
) -> Result<LiveInputs, StoreError> {
    let now_ms = round.now_ms;
    let len_ms = interval.seconds() * 1000;
    let horizon_end_ms = now_ms + len_ms * HORIZON as i64;
    let dr_events = round
        .dr_events
        .iter()
        .filter(|e| e.site == site.name && e.starts_at_ms < horizon_end_ms)
        .map(|e| {
            let end = e.effective_end_ms();
            DrEventSpec {
                start: format_ms(e.starts_at_ms),
                // Whole minutes, rounded up: the cap covers the event's last seconds too.
                minutes: u32::try_from((end - e.starts_at_ms + 59_999) / 60_000)
                    .unwrap_or(u32::MAX),
                cap_kw: e.target_kw,
                // A DR call is a hard cap here; what it pays is booked by the P&L.
                payment_usd: 0.0,
            }
        })
        .collect();
    let asic_kw_now = store
        .last_power_sample(&site.name)
        .await?
        .filter(|s| now_ms - s.at_ms <= SAMPLE_FRESH_MS && s.miners.total > 0)
        .map(|s| s.miners.kw);
    let prices = store
        .site_prices(&site.name, now_ms - len_ms, horizon_end_ms)
        .await?
        .into_iter()
        .filter_map(|p| {
            Some(PricePoint {
                start_unix_s: p.starts_at_ms.div_euclid(1000),
                interval: IntervalLength::from_seconds(p.interval_s)?,
                usd_per_mwh: p.usd_per_mwh,
            })
        })
        .collect();
    let demand = if spec.gpu_groups.is_empty() {
        None
    } else {
        Some(observed_demand(round, site, spec))
    };
    Ok(LiveInputs {
        now_unix_s: now_ms.div_euclid(1000),
        interval,
        horizon: HORIZON,
        tariff_usd_per_mwh: f64::try_from(site.power_price_usd_per_mwh).unwrap_or(f64::NAN),
        prices,
        // None: the model's own `bitcoin`, if it has one.
        bitcoin: round.bitcoin.or(spec.bitcoin),
        dr_events,
        asic_kw_now,
        demand,
    })
}

/// How far back the gateways' usage is read for a site's demand.
const DEMAND_WINDOW_MS: i64 = 60 * 60 * 1000;

/// The inference demand and revenue the gateways reported for `site`'s region over the last
/// [`DEMAND_WINDOW_MS`], and `site`'s share of it: its GPU capacity over its region's (sites
/// with a power model).
fn observed_demand(round: &Round, site: &SiteRecord, spec: &SiteSpec) -> ObservedDemand {
    let mut region = RegionUsage {
        window_s: DEMAND_WINDOW_MS as f64 / 1000.0,
        ..RegionUsage::default()
    };
    for t in &round.usage {
        let (Some(name), priority) = UsageGroup::RegionAndPriority.split(t.group.as_deref()) else {
            continue;
        };
        if name != site.region {
            continue;
        }
        let tokens = t.prompt_tokens.saturating_add(t.completion_tokens);
        let revenue = f64::try_from(t.cost).unwrap_or(0.0);
        // Batch keys and `service_tier: flex` are the deferrable class.
        if priority.as_deref() == Some(DEFERRABLE_PRIORITY) {
            region.batch_tokens = region.batch_tokens.saturating_add(tokens);
            region.batch_revenue_usd += revenue;
        } else {
            region.interactive_tokens = region.interactive_tokens.saturating_add(tokens);
            region.interactive_revenue_usd += revenue;
        }
    }
    let in_region: std::collections::BTreeSet<&str> = round
        .sites
        .iter()
        .filter(|s| s.region == site.region)
        .map(|s| s.name.as_str())
        .collect();
    let region_capacity: f64 = round
        .models
        .iter()
        .filter(|m| in_region.contains(m.site.as_str()))
        .map(|m| gpu_capacity_tokens_per_s(&m.spec))
        .sum();
    let own = gpu_capacity_tokens_per_s(spec);
    ObservedDemand {
        region,
        share: if region_capacity > 0.0 {
            (own / region_capacity).clamp(0.0, 1.0)
        } else {
            0.0
        },
    }
}

/// The newest snapshot in force at `now_ms`.
fn market_in_force(snapshots: &[MarketRecord], now_ms: i64) -> Option<NetworkSpec> {
    snapshots
        .iter()
        .filter(|m| m.effective_from_ms <= now_ms)
        .max_by_key(|m| (m.effective_from_ms, m.version))
        .map(|m| NetworkSpec {
            btc_usd: f64::try_from(m.btc_usd).unwrap_or(f64::NAN),
            difficulty: m.difficulty,
            subsidy_btc: m.subsidy_btc,
            fees_btc_per_block: m.fees_btc_per_block,
        })
}

fn record_of(site: &str, live: LivePlan, now_ms: i64) -> PowerPlanRecord {
    let id = format!("plan-{}", uuid::Uuid::new_v4());
    let (starts_at_ms, ends_at_ms) = (live.starts_at_unix_s * 1000, live.ends_at_unix_s * 1000);
    PowerPlanRecord {
        directive: PlanDirective {
            plan_id: id.clone(),
            starts_at_ms,
            ends_at_ms,
            asic_groups: live
                .asic
                .into_iter()
                .map(|t| AsicTarget {
                    name: t.name,
                    units: t.units,
                    units_hashing: t.units_hashing,
                    watts_per_unit: t.watts_per_unit,
                })
                .collect(),
            gpu_groups: live
                .gpu
                .into_iter()
                .map(|t| GpuTarget {
                    name: t.name,
                    nodes: t.nodes,
                    nodes_on: t.nodes_on,
                    kw: t.kw,
                    node_max_kw: t.node_max_kw,
                })
                .collect(),
            expected_meter_kw: live.expected_meter_kw,
        },
        id,
        site: site.to_owned(),
        starts_at_ms,
        ends_at_ms,
        created_at_ms: now_ms,
        interval: live.interval,
        report: None,
    }
}

/// Plans every site with a power model that has no plan for the interval at hand, at every
/// interval's start, until `stop`.
pub(crate) async fn run(
    store: Arc<dyn Store>,
    reconciler: Arc<Reconciler>,
    interval: IntervalLength,
    stop: CancellationToken,
) {
    let len_ms = interval.seconds() * 1000;
    loop {
        let now = now_ms();
        match plan_due(&*store, interval, now).await {
            Ok(0) => {}
            Ok(_) => reconciler.nudge().await,
            Err(e) => tracing::error!(error = %e, "planning sites"),
        }
        // Wake just after the next interval starts; a minute at most, so a power model set
        // mid-interval is planned soon.
        let next = (now.div_euclid(len_ms) + 1) * len_ms + 500;
        let wait = Duration::from_millis(u64::try_from(next - now).unwrap_or(0))
            .min(Duration::from_secs(60));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Plans the sites that need it now; returns how many were planned. One site that cannot be
/// planned is logged and does not stop the others.
async fn plan_due(
    store: &dyn Store,
    interval: IntervalLength,
    now: i64,
) -> Result<usize, StoreError> {
    let current = store.current_power_plans(now).await?;
    let round = Round::read(store, now).await?;
    let mut planned = 0;
    for model in &round.models {
        let due = !current
            .iter()
            .any(|p| p.site == model.site && p.created_at_ms >= model.updated_at_ms);
        if !due {
            continue;
        }
        match plan_with(store, &round, model, interval, now).await {
            Ok(plan) => {
                planned += 1;
                let hashing = plan.directive.units_hashing();
                tracing::info!(
                    site = %model.site, plan = %plan.id, hashing,
                    expected_meter_kw = plan.directive.expected_meter_kw,
                    "planned the interval"
                );
            }
            Err(PlanningError::Store(e)) => return Err(e),
            Err(e) => tracing::warn!("cannot plan: {e}"),
        }
    }
    Ok(planned)
}
