//! The policies fleets run today, as baselines for the planner: on the same site model (the
//! interconnect, DR caps, ramps, the inference SLO) and booked by the same accounting, so their
//! margins compare with the planner's line by line.
//!
//! Every baseline fills the site's power in one order, interval by interval and without
//! looking ahead: miners at the lowest draw their ramps allow, then interactive inference (the
//! SLO binds every policy: a baseline that starved interactive traffic is not one we could
//! run), then batch inference as it arrives, then miners up to their policy's target, the most
//! efficient group first — so under a cap the least efficient miners are shed first, as
//! Braiins Manager and Foreman do. Miners that hash run at nominal power; a group partly on has
//! whole units asleep. GPU nodes are on only while busy.
//!
//! - [`always_mine`]: every miner at nominal power whatever the price.
//! - [`strike_price`]: a group sleeps while the price is above its strike — the site's strike
//!   if set, else the group's break-even at nominal efficiency (a hosted group's strike is its
//!   hosting fee) — and restores as its ramps allow.
//! - [`static_split`]: a fixed share of the IT power for GPUs, the rest for miners, who run
//!   flat out within it; neither side uses the other's spare power.

use super::PlanError;
use super::account::{self, AsicDecision, Decision, GpuDecision, MTOK, SitePlan};
use super::lp::{gpu_order, limit_kw};
use super::model::{Site, SiteState, Timeline};
use crate::mining::break_even_usd_per_mwh;

/// Every miner at nominal power, always.
pub fn always_mine(
    site: &Site,
    timeline: &Timeline,
    state: &SiteState,
) -> Result<SitePlan, PlanError> {
    simulate(site, timeline, state, Policy::AlwaysMine)
}

/// Miners sleep while the price is above the strike.
pub fn strike_price(
    site: &Site,
    timeline: &Timeline,
    state: &SiteState,
) -> Result<SitePlan, PlanError> {
    simulate(site, timeline, state, Policy::StrikePrice)
}

/// A fixed share of the power for GPUs, the rest for miners.
pub fn static_split(
    site: &Site,
    timeline: &Timeline,
    state: &SiteState,
) -> Result<SitePlan, PlanError> {
    simulate(site, timeline, state, Policy::StaticSplit)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Policy {
    AlwaysMine,
    StrikePrice,
    StaticSplit,
}

/// Gives GPU work of `mtok` million tokens within `budget_kw`, best tokens per kWh first;
/// `nodes_busy` holds what each group already serves. Returns (served, kW used).
fn fill_gpus(
    site: &Site,
    per_node_mtok: &[f64],
    nodes_busy: &mut [f64],
    served: &mut [f64],
    mtok: f64,
    budget_kw: f64,
) -> (f64, f64) {
    let mut want = mtok.max(0.0);
    let mut left = budget_kw.max(0.0);
    let mut used_kw = 0.0;
    let mut total = 0.0;
    for j in gpu_order(site) {
        let g = &site.gpu_groups[j];
        let nodes = (g.nodes - nodes_busy[j])
            .min(want / per_node_mtok[j])
            .min(left / g.max_kw)
            .max(0.0);
        let tokens = nodes * per_node_mtok[j];
        nodes_busy[j] += nodes;
        served[j] += tokens;
        want -= tokens;
        left -= nodes * g.max_kw;
        used_kw += nodes * g.max_kw;
        total += tokens;
    }
    (total, used_kw)
}

fn simulate(
    site: &Site,
    timeline: &Timeline,
    state: &SiteState,
    policy: Policy,
) -> Result<SitePlan, PlanError> {
    super::check(site, timeline, state)?;
    let interval = timeline.interval;
    let dt_s = interval.seconds() as f64;
    let per_node_mtok: Vec<f64> = site
        .gpu_groups
        .iter()
        .map(|g| g.tokens_per_s * dt_s / MTOK)
        .collect();
    // Most efficient first: they are the last to be shed.
    let mut asic_order: Vec<usize> = (0..site.asic_groups.len()).collect();
    asic_order.sort_by(|&a, &b| {
        let j = |g: usize| site.asic_groups[g].model.nominal_j_per_th();
        j(a).total_cmp(&j(b))
    });
    let mut prev: Option<Vec<f64>> = state.asic_kw.clone();
    let mut backlog = state.batch_backlog_tokens / MTOK;
    let mut decisions = Vec::with_capacity(timeline.len());
    for (index, x) in timeline.intervals.iter().enumerate() {
        let limit_it = limit_kw(site, x) / site.pue();
        let (lo, hi): (Vec<f64>, Vec<f64>) = site
            .asic_groups
            .iter()
            .enumerate()
            .map(|(g, group)| match prev.as_ref().and_then(|p| p.get(g)) {
                Some(&p) => (
                    group.sleep_kw().max(p - group.ramp_down_kw(interval)),
                    // A group can always sleep, whatever it drew before.
                    p.max(group.sleep_kw()) + group.ramp_up_kw(interval),
                ),
                None => (group.sleep_kw(), f64::INFINITY),
            })
            .unzip();
        let floor: f64 = lo.iter().sum();
        if floor > limit_it * (1.0 + 1e-9) {
            return Err(PlanError::BelowFloor {
                index,
                limit_kw: limit_it * site.pue(),
                floor_kw: floor * site.pue(),
            });
        }
        let mut avail = limit_it - floor;

        let mut nodes_busy = vec![0.0; site.gpu_groups.len()];
        let mut interactive = vec![0.0; site.gpu_groups.len()];
        let mut batch = vec![0.0; site.gpu_groups.len()];
        let (_, kw_interactive) = fill_gpus(
            site,
            &per_node_mtok,
            &mut nodes_busy,
            &mut interactive,
            x.interactive_tokens / MTOK,
            avail,
        );
        avail -= kw_interactive;
        let share = site.static_gpu_share;
        let batch_budget = match policy {
            Policy::StaticSplit => avail.min((share * limit_it - kw_interactive).max(0.0)),
            _ => avail,
        };
        let (batch_served, kw_batch) = fill_gpus(
            site,
            &per_node_mtok,
            &mut nodes_busy,
            &mut batch,
            backlog + x.batch_tokens / MTOK,
            batch_budget,
        );
        avail -= kw_batch;
        backlog = (backlog + x.batch_tokens / MTOK - batch_served).max(0.0);

        let mut asic_avail = match policy {
            Policy::StaticSplit => avail.min(((1.0 - share) * limit_it - floor).max(0.0)),
            _ => avail,
        }
        .max(0.0);
        let mut draw = lo.clone();
        for &g in &asic_order {
            let group = &site.asic_groups[g];
            let curtail = policy == Policy::StrikePrice && {
                let strike = match (
                    group.hosting_usd_per_mwh,
                    site.spec.baselines.strike_usd_per_mwh,
                ) {
                    (Some(fee), _) => fee,
                    (None, Some(strike)) => strike,
                    (None, None) => break_even_usd_per_mwh(
                        x.hashprice_usd_per_ph_day,
                        group.model.nominal_j_per_th(),
                    ),
                };
                x.usd_per_mwh > strike
            };
            let target = if curtail {
                group.sleep_kw()
            } else {
                group.nominal_kw()
            };
            let want = target.min(hi[g]).max(lo[g]);
            let extra = (want - lo[g]).min(asic_avail).max(0.0);
            draw[g] = lo[g] + extra;
            asic_avail -= extra;
        }
        let asic = site
            .asic_groups
            .iter()
            .zip(&draw)
            .map(|(group, &kw)| {
                let m = &group.model;
                if kw >= group.nominal_kw() {
                    // Only a ramp from above nominal leaves a group here: all units hash.
                    AsicDecision {
                        hashing_kw: kw,
                        units_hashing: group.units,
                    }
                } else {
                    let units = ((kw - group.sleep_kw()) / ((m.nominal_w - m.sleep_w) / 1_000.0))
                        .clamp(0.0, group.units);
                    AsicDecision {
                        hashing_kw: units * m.nominal_w / 1_000.0,
                        units_hashing: units,
                    }
                }
            })
            .collect();
        prev = Some(draw);
        decisions.push(Decision {
            asic,
            gpu: (0..site.gpu_groups.len())
                .map(|j| GpuDecision {
                    nodes_on: nodes_busy[j],
                    interactive_mtok: interactive[j],
                    batch_mtok: batch[j],
                })
                .collect(),
        });
    }
    Ok(account::account(site, timeline, 0, &decisions, state))
}
