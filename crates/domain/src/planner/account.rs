//! Turning decisions into a plan with its money lines. The planner's program and every baseline
//! only decide (group power, units hashing, GPU nodes on, tokens served); this one function
//! books what the decisions earn and cost, so margins compare exactly across policies.

use serde::{Deserialize, Serialize};

use super::model::{Site, SiteState, Timeline};

/// Tokens per million: the program counts tokens in millions to keep its coefficients near 1.
pub(crate) const MTOK: f64 = 1e6;

/// What a policy decided for one ASIC group in one interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct AsicDecision {
    /// Draw of the units hashing, kW.
    pub hashing_kw: f64,
    pub units_hashing: f64,
}

/// What a policy decided for one GPU group in one interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct GpuDecision {
    pub nodes_on: f64,
    pub interactive_mtok: f64,
    pub batch_mtok: f64,
}

/// One interval's decisions, groups in the site's order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Decision {
    pub asic: Vec<AsicDecision>,
    pub gpu: Vec<GpuDecision>,
}

/// One ASIC group in one interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AsicGroupPlan {
    pub name: String,
    /// Units hashing; continuous (see the module docs): round when applying.
    pub units_hashing: f64,
    pub units_asleep: f64,
    /// The power target of each hashing unit, W (0 when none hashes).
    pub watts_per_hashing_unit: f64,
    /// The group's draw, sleeping units included, kW (IT, before PUE).
    pub kw: f64,
    pub hashrate_ths: f64,
}

/// One GPU group in one interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuGroupPlan {
    pub name: String,
    pub nodes_on: f64,
    /// kW (IT, before PUE).
    pub kw: f64,
    pub interactive_tokens: f64,
    pub batch_tokens: f64,
}

/// One interval of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IntervalPlan {
    /// The interval's index in the timeline.
    pub index: usize,
    pub start_unix_s: i64,
    pub usd_per_mwh: f64,
    pub hashprice_usd_per_ph_day: f64,
    pub dr_cap_kw: Option<f64>,
    pub asic_groups: Vec<AsicGroupPlan>,
    pub gpu_groups: Vec<GpuGroupPlan>,
    pub asic_kw: f64,
    pub gpu_kw: f64,
    /// Load at the meter: IT load × PUE, kW.
    pub grid_kw: f64,
    /// Load the site could have drawn (everything at its highest, within the interconnect) but
    /// did not, kW at the meter.
    pub curtailed_kw: f64,
    pub interactive_demand_tokens: f64,
    pub interactive_tokens: f64,
    /// Interactive demand this site could not serve: moved to other regions.
    pub interactive_moved_tokens: f64,
    pub batch_arrived_tokens: f64,
    pub batch_tokens: f64,
    /// Batch tokens still waiting after the interval (deferred).
    pub batch_backlog_tokens: f64,
    pub mining_revenue_usd: f64,
    pub hosting_revenue_usd: f64,
    pub inference_revenue_usd: f64,
    pub dr_payment_usd: f64,
    pub energy_cost_usd: f64,
    /// Expected coincident-peak transmission charge.
    pub peak_charge_usd: f64,
    pub margin_usd: f64,
}

/// Sums over a plan.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct PlanTotals {
    pub mining_revenue_usd: f64,
    pub hosting_revenue_usd: f64,
    pub inference_revenue_usd: f64,
    pub dr_payment_usd: f64,
    pub energy_cost_usd: f64,
    pub peak_charge_usd: f64,
    pub margin_usd: f64,
    /// Energy at the meter, MWh.
    pub energy_mwh: f64,
    /// Hashing done, PH/s × days.
    pub ph_days: f64,
    pub interactive_tokens: f64,
    pub interactive_moved_tokens: f64,
    pub batch_tokens: f64,
    /// Batch tokens still waiting at the end.
    pub batch_backlog_tokens: f64,
}

/// A plan for a site over a run of intervals.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SitePlan {
    pub site: String,
    pub interval_minutes: u32,
    pub intervals: Vec<IntervalPlan>,
    pub totals: PlanTotals,
    /// Where the site stands after the last interval: the next plan's starting state.
    pub end_state: SiteState,
}

/// The state after `decisions`, applied from interval `first` on, starting at `state`.
pub(crate) fn state_after(
    site: &Site,
    timeline: &Timeline,
    first: usize,
    decisions: &[Decision],
    state: &SiteState,
) -> SiteState {
    account(site, timeline, first, decisions, state).end_state
}

/// Books `decisions`, the first for interval `first` of `timeline`.
pub(crate) fn account(
    site: &Site,
    timeline: &Timeline,
    first: usize,
    decisions: &[Decision],
    state: &SiteState,
) -> SitePlan {
    let interval = timeline.interval;
    let dt_h = interval.hours();
    let dt_s = interval.seconds() as f64;
    let pue = site.pue();
    let prices = site.inference();
    let full_kw = (site.max_it_kw() * pue).min(site.interconnect_kw());
    let mut backlog = state.batch_backlog_tokens;
    let mut totals = PlanTotals::default();
    let mut intervals = Vec::with_capacity(decisions.len());
    let mut last_asic_kw = state.asic_kw.clone();
    for (k, d) in decisions.iter().enumerate() {
        let index = first + k;
        let x = &timeline.intervals[index];
        let mut mining = 0.0;
        let mut hosting = 0.0;
        let mut asic_groups = Vec::with_capacity(d.asic.len());
        for (g, a) in site.asic_groups.iter().zip(&d.asic) {
            let kw = a.hashing_kw + (g.units - a.units_hashing) * g.model.sleep_w / 1_000.0;
            let ths = g.hashrate_ths(a.hashing_kw * 1_000.0, a.units_hashing);
            match g.hosting_usd_per_mwh {
                Some(fee) => hosting += fee * kw * dt_h / 1_000.0,
                None => mining += ths / 1_000.0 * x.hashprice_usd_per_ph_day * dt_h / 24.0,
            }
            totals.ph_days += ths / 1_000.0 * dt_h / 24.0;
            asic_groups.push(AsicGroupPlan {
                name: g.name.clone(),
                units_hashing: a.units_hashing,
                units_asleep: g.units - a.units_hashing,
                watts_per_hashing_unit: if a.units_hashing > 1e-9 {
                    a.hashing_kw * 1_000.0 / a.units_hashing
                } else {
                    0.0
                },
                kw,
                hashrate_ths: ths,
            });
        }
        let mut gpu_groups = Vec::with_capacity(d.gpu.len());
        let (mut interactive, mut batch) = (0.0, 0.0);
        for (g, u) in site.gpu_groups.iter().zip(&d.gpu) {
            let per_node_mtok = g.tokens_per_s * dt_s / MTOK;
            let busy = (u.interactive_mtok + u.batch_mtok) / per_node_mtok;
            let kw = g.idle_kw * u.nodes_on + (g.max_kw - g.idle_kw) * busy;
            interactive += u.interactive_mtok * MTOK;
            batch += u.batch_mtok * MTOK;
            gpu_groups.push(GpuGroupPlan {
                name: g.name.clone(),
                nodes_on: u.nodes_on,
                kw,
                interactive_tokens: u.interactive_mtok * MTOK,
                batch_tokens: u.batch_mtok * MTOK,
            });
        }
        let asic_kw: f64 = asic_groups.iter().map(|g| g.kw).sum();
        let gpu_kw: f64 = gpu_groups.iter().map(|g| g.kw).sum();
        let grid_kw = (asic_kw + gpu_kw) * pue;
        let energy_mwh = grid_kw * dt_h / 1_000.0;
        let energy_cost = energy_mwh * x.usd_per_mwh;
        let peak_charge = site.coincident_peak.map_or(0.0, |cp| {
            cp.usd_per_kw(x.peak_probability, interval) * grid_kw
        });
        let inference = (interactive * prices.interactive_usd_per_mtok
            + batch * prices.batch_usd_per_mtok)
            / MTOK;
        let dr_payment = x.dr.map_or(0.0, |dr| dr.payment_usd);
        let margin = mining + hosting + inference + dr_payment - energy_cost - peak_charge;
        backlog = (backlog + x.batch_tokens - batch).max(0.0);
        last_asic_kw = Some(asic_groups.iter().map(|g| g.kw).collect());

        totals.mining_revenue_usd += mining;
        totals.hosting_revenue_usd += hosting;
        totals.inference_revenue_usd += inference;
        totals.dr_payment_usd += dr_payment;
        totals.energy_cost_usd += energy_cost;
        totals.peak_charge_usd += peak_charge;
        totals.margin_usd += margin;
        totals.energy_mwh += energy_mwh;
        totals.interactive_tokens += interactive;
        totals.interactive_moved_tokens += (x.interactive_tokens - interactive).max(0.0);
        totals.batch_tokens += batch;
        intervals.push(IntervalPlan {
            index,
            start_unix_s: timeline.timestamp(index),
            usd_per_mwh: x.usd_per_mwh,
            hashprice_usd_per_ph_day: x.hashprice_usd_per_ph_day,
            dr_cap_kw: x.dr.map(|dr| dr.cap_kw),
            asic_groups,
            gpu_groups,
            asic_kw,
            gpu_kw,
            grid_kw,
            curtailed_kw: (full_kw - grid_kw).max(0.0),
            interactive_demand_tokens: x.interactive_tokens,
            interactive_tokens: interactive,
            interactive_moved_tokens: (x.interactive_tokens - interactive).max(0.0),
            batch_arrived_tokens: x.batch_tokens,
            batch_tokens: batch,
            batch_backlog_tokens: backlog,
            mining_revenue_usd: mining,
            hosting_revenue_usd: hosting,
            inference_revenue_usd: inference,
            dr_payment_usd: dr_payment,
            energy_cost_usd: energy_cost,
            peak_charge_usd: peak_charge,
            margin_usd: margin,
        });
    }
    totals.batch_backlog_tokens = backlog;
    SitePlan {
        site: site.name().to_owned(),
        interval_minutes: interval.minutes(),
        intervals,
        totals,
        end_state: SiteState {
            asic_kw: last_asic_kw,
            batch_backlog_tokens: backlog,
        },
    }
}
