//! The planner as the control plane runs it, live: from a site's power model and what is
//! known now (the prices imported for the site, its tariff where they end, the Bitcoin market
//! in force, the DR events ahead, the miners' draw at the last sample, the inference demand
//! the gateways saw), plan the next `horizon` intervals and keep the first — turned into
//! whole-miner targets an agent can apply.
//!
//! Rounding: the program's "units hashing" is continuous; a site has whole miners. The count
//! is rounded down and each hashing unit keeps the planned power target, so the site never
//! draws more than planned (a DR cap or the interconnect stays met); the fraction of a unit
//! left over is power not drawn.

use super::demand::ObservedDemand;
use super::model::{DrEventSpec, SiteSpec, SiteState};
use super::{IntervalPlan, PlanError, plan};
use crate::market::{
    Coverage, IntervalLength, MarketError, NetworkSpec, PricePoint, horizon_prices,
};

/// What the control plane knows now, besides the site's power model.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveInputs {
    pub now_unix_s: i64,
    pub interval: IntervalLength,
    /// Intervals planned ahead; only the first is applied.
    pub horizon: usize,
    /// The site's fixed tariff: the price wherever `prices` do not reach.
    pub tariff_usd_per_mwh: f64,
    /// Prices imported for the site (a market's series), in any order; see
    /// [`horizon_prices`].
    pub prices: Vec<PricePoint>,
    /// The Bitcoin market in force; `None` falls back to the power model's own `bitcoin`.
    pub bitcoin: Option<NetworkSpec>,
    /// Demand-response events ahead, added to the power model's own.
    pub dr_events: Vec<DrEventSpec>,
    /// The miners' summed draw at the last sample, kW; `None` leaves the ramps free.
    pub asic_kw_now: Option<f64>,
    /// Inference demand and revenue the gateways saw for the site's region; `None` (or a
    /// silent region) keeps the power model's forecast. See [`ObservedDemand::apply`].
    pub demand: Option<ObservedDemand>,
}

/// One ASIC group's whole-miner target.
#[derive(Debug, Clone, PartialEq)]
pub struct HashingTarget {
    pub name: String,
    pub units: u32,
    pub units_hashing: u32,
    /// W per hashing unit (0 when none hashes).
    pub watts_per_unit: f64,
}

/// One GPU group's target.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuTarget {
    pub name: String,
    pub nodes: u32,
    pub nodes_on: f64,
    pub kw: f64,
    /// One node's draw at full load (the site file's `max_kw`): what GPU caps scale against.
    pub node_max_kw: f64,
}

/// The plan for the interval that contains `now`.
#[derive(Debug, Clone, PartialEq)]
pub struct LivePlan {
    pub starts_at_unix_s: i64,
    pub ends_at_unix_s: i64,
    /// The planner's decision and money lines for the interval.
    pub interval: IntervalPlan,
    pub asic: Vec<HashingTarget>,
    pub gpu: Vec<GpuTarget>,
    /// The meter's load with the targets in force, kW.
    pub expected_meter_kw: f64,
    /// How much of the horizon imported prices covered, and how much the tariff.
    pub price_coverage: Coverage,
}

/// Plans `spec`'s site for the interval containing `inputs.now_unix_s`, looking
/// `inputs.horizon` intervals ahead.
pub fn plan_now(spec: &SiteSpec, inputs: &LiveInputs) -> Result<LivePlan, PlanError> {
    if inputs.horizon == 0 {
        return Err(PlanError::ZeroHorizon);
    }
    if let Some(kw) = inputs.asic_kw_now
        && !(kw.is_finite() && kw >= 0.0)
    {
        return Err(PlanError::InvalidState {
            problem: format!("the miners' draw now is {kw} kW, which is not a number ≥ 0"),
        });
    }
    let len = inputs.interval.seconds();
    let start = inputs.now_unix_s.div_euclid(len) * len;
    let mut spec = spec.clone();
    if inputs.bitcoin.is_some() {
        spec.bitcoin = inputs.bitcoin;
    }
    spec.dr_events.extend(inputs.dr_events.iter().cloned());
    if let Some(observed) = &inputs.demand {
        let local_s = start + i64::from(spec.utc_offset_hours) * 3_600;
        let hour = usize::try_from(local_s.rem_euclid(86_400) / 3_600).unwrap_or(0);
        observed.apply(&mut spec, hour);
    }
    let site = spec.check()?;
    let (prices, price_coverage) = horizon_prices(
        &inputs.prices,
        inputs.tariff_usd_per_mwh,
        start,
        inputs.interval,
        inputs.horizon,
    )
    .map_err(|e| {
        let (index, value) = match e {
            MarketError::NotFinite { index, value }
            | MarketError::AboveCap { index, value }
            | MarketError::BelowFloor { index, value } => (index, value),
            _ => (0, inputs.tariff_usd_per_mwh),
        };
        PlanError::InvalidInput {
            index,
            field: "usd_per_mwh",
            value,
        }
    })?;
    let timeline = site.timeline(&prices, None)?;
    let state = SiteState {
        asic_kw: inputs.asic_kw_now.map(|kw| {
            // The sample sums every miner; each group is given its share of the highest draw.
            let max: f64 = site.asic_groups().iter().map(|g| g.max_kw()).sum();
            site.asic_groups()
                .iter()
                .map(|g| {
                    let share = if max > 0.0 { g.max_kw() / max } else { 0.0 };
                    (kw * share).min(g.max_kw())
                })
                .collect()
        }),
        batch_backlog_tokens: 0.0,
    };
    let planned = plan(&site, &timeline, &state, inputs.horizon)?;
    let Some(first) = planned.intervals.into_iter().next() else {
        return Err(PlanError::EmptyTimeline);
    };
    let mut it_kw = 0.0;
    let asic = site
        .asic_groups()
        .iter()
        .zip(&first.asic_groups)
        .map(|(group, planned)| {
            let units = whole(group.units());
            let units_hashing = whole(planned.units_hashing + 1e-6).min(units);
            let watts_per_unit = if units_hashing == 0 {
                0.0
            } else {
                planned.watts_per_hashing_unit
            };
            it_kw += (f64::from(units_hashing) * watts_per_unit
                + f64::from(units - units_hashing) * group.model().sleep_w)
                / 1_000.0;
            HashingTarget {
                name: group.name().to_owned(),
                units,
                units_hashing,
                watts_per_unit,
            }
        })
        .collect();
    let gpu = site
        .gpu_groups()
        .iter()
        .zip(&first.gpu_groups)
        .map(|(group, planned)| {
            it_kw += planned.kw;
            GpuTarget {
                name: group.name().to_owned(),
                nodes: whole(group.nodes()),
                nodes_on: planned.nodes_on,
                kw: planned.kw,
                node_max_kw: group.max_kw,
            }
        })
        .collect();
    Ok(LivePlan {
        starts_at_unix_s: start,
        ends_at_unix_s: start + len,
        expected_meter_kw: it_kw * site.pue(),
        price_coverage,
        interval: first,
        asic,
        gpu,
    })
}

/// `x` rounded down to a whole count (the site file's counts are whole already).
fn whole(x: f64) -> u32 {
    if x.is_finite() && x > 0.0 {
        // Truncation is the point: never more units than planned.
        x.floor().min(f64::from(u32::MAX)) as u32
    } else {
        0
    }
}
