//! The power planner: per site and interval, how the interconnect's power is split among GPU
//! nodes, ASICs and curtailment, so that mining revenue + inference revenue + demand-response
//! payments − energy cost − coincident-peak charges is as high as it can be.
//!
//! It is one linear program (module `lp`) over a window of intervals, solved by `good_lp`'s pure-Rust
//! `microlp`. What it decides and under which rules:
//!
//! - **Power at the meter** = IT load × PUE, at or below the interconnect and, in an interval
//!   with a demand-response call, at or below the call's cap (a hard constraint: a plan that
//!   misses a DR target is not a plan; the call's payment is booked when it is met).
//! - **ASIC groups**: each group's hashrate is the concave piecewise-linear curve of
//!   [`AsicModel::curve`](crate::mining::AsicModel::curve), applied to the units hashing.
//!   "Units hashing" is a continuous variable within a group (no integer variables): the
//!   program's value is exact when the hashing units share the power evenly (it bounds the
//!   group's hashrate by the curve's perspective), and rounding to whole units is the applier's
//!   job. The rest of the group sleeps at `sleep_w` each. The group's draw moves between
//!   intervals within its ramp limits.
//! - **GPU groups**: nodes on draw `idle_kw`, plus up to `max_kw − idle_kw` in proportion to
//!   the tokens they serve; nodes off draw nothing.
//! - **Inference SLO**: interactive demand is served first. In each interval the program must
//!   serve as much of it as the GPUs could with every miner as low as its ramps allow — so
//!   mining never takes power interactive traffic needed; what even that cannot serve is
//!   reported as moved to other regions. Batch demand may wait: served batch tokens never
//!   exceed what has arrived (cumulatively), and what is still waiting at the end is reported.
//! - **Coincident peaks**: the charge is linear in the load of each interval, weighted by the
//!   chance that the interval is one of the period's peaks ([`CoincidentPeak::usd_per_kw`]).
//! - **Contracts**: a hosted group earns its hosting fee per MWh instead of hashprice, so it may
//!   run above the mining break-even; no other group ever hashes above it (with ramps free).
//!
//! [`live::plan_now`] is what the control plane runs every interval: the plan for the interval
//! at hand, as whole-miner targets for the site's agent.
//!
//! [`plan`] solves one window from the timeline's start; [`plan_rolling`] replans every `step`
//! intervals over a `horizon` and keeps the first `step` decisions of each window, as the
//! control plane does every interval; [`optimum`] is the same program over the whole timeline
//! at once (perfect foresight). [`baselines`] are the policies the fleet tools run today, on
//! the same site model and the same accounting (module `account`), so their margins compare.

mod account;
pub mod baselines;
pub mod demand;
pub mod live;
mod lp;
mod model;

#[cfg(test)]
mod tests;

pub use account::{AsicGroupPlan, GpuGroupPlan, IntervalPlan, PlanTotals, SitePlan};
pub use model::{
    AsicGroup, AsicGroupSpec, BaselineSpec, CoincidentPeak, CoincidentPeakSpec,
    DEFAULT_CURVE_SEGMENTS, DemandSpec, DrCall, DrEventSpec, GpuGroup, GpuGroupSpec,
    InferencePrices, IntervalInputs, MAX_CURVE_SEGMENTS, PeakWindow, Site, SiteSpec, SiteState,
    Timeline,
};

use serde::Serialize;

/// Why a plan could not be made. A plan is never returned when any of these holds.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error("site: {field} {problem}")]
    InvalidSite { field: String, problem: String },
    #[error("the timeline has no interval")]
    EmptyTimeline,
    #[error("interval {index}: {field} is {value}, which is not allowed")]
    InvalidInput {
        index: usize,
        field: &'static str,
        value: f64,
    },
    #[error("site state: {problem}")]
    InvalidState { problem: String },
    #[error("the horizon must be at least one interval")]
    ZeroHorizon,
    #[error("the step must be between 1 and the horizon ({horizon}), not {step}")]
    BadStep { step: usize, horizon: usize },
    #[error(
        "coincident-peak intervals of {peak_minutes} min are not a whole number of {interval_minutes}-min planning intervals"
    )]
    PeakInterval {
        peak_minutes: u32,
        interval_minutes: u32,
    },
    #[error(
        "interval {index}: the limit of {limit_kw:.1} kW at the meter is below the lowest load the site can reach by then ({floor_kw:.1} kW: miners asleep as fast as they ramp)"
    )]
    BelowFloor {
        index: usize,
        limit_kw: f64,
        floor_kw: f64,
    },
    #[error("the solver found no plan for intervals {first}..{end}: {reason}")]
    Solver {
        first: usize,
        end: usize,
        reason: String,
    },
}

/// The planner's plan over the first `horizon` intervals of `timeline` (all of them if it is
/// shorter), from `state`.
pub fn plan(
    site: &Site,
    timeline: &Timeline,
    state: &SiteState,
    horizon: usize,
) -> Result<SitePlan, PlanError> {
    if horizon == 0 {
        return Err(PlanError::ZeroHorizon);
    }
    check(site, timeline, state)?;
    let len = horizon.min(timeline.len());
    let decisions = lp::solve(site, timeline, 0, len, state)?;
    Ok(account::account(site, timeline, 0, &decisions, state))
}

/// The planner run as the control plane runs it: at every `step` intervals, plan the next
/// `horizon` intervals from where the site is, and keep the first `step` of them. For
/// backtests; the inputs within each window are the timeline's own (a perfect forecast over
/// the horizon, none beyond).
pub fn plan_rolling(
    site: &Site,
    timeline: &Timeline,
    state: &SiteState,
    horizon: usize,
    step: usize,
) -> Result<SitePlan, PlanError> {
    if horizon == 0 {
        return Err(PlanError::ZeroHorizon);
    }
    if step == 0 || step > horizon {
        return Err(PlanError::BadStep { step, horizon });
    }
    check(site, timeline, state)?;
    let mut decisions = Vec::with_capacity(timeline.len());
    let mut now = state.clone();
    let mut first = 0;
    while first < timeline.len() {
        let len = horizon.min(timeline.len() - first);
        let window = lp::solve(site, timeline, first, len, &now)?;
        let keep = step.min(len);
        decisions.extend_from_slice(&window[..keep]);
        now = account::state_after(site, timeline, first, &window[..keep], &now);
        first += keep;
    }
    Ok(account::account(site, timeline, 0, &decisions, state))
}

/// The perfect-foresight optimum: the planner's program over the whole timeline at once. No
/// policy that sees the same inputs and obeys the same rules earns more.
pub fn optimum(site: &Site, timeline: &Timeline, state: &SiteState) -> Result<SitePlan, PlanError> {
    plan(site, timeline, state, timeline.len())
}

/// The planner, the optimum and every baseline over one timeline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Backtest {
    pub planner: SitePlan,
    pub optimum: SitePlan,
    pub always_mine: SitePlan,
    pub strike_price: SitePlan,
    pub static_split: SitePlan,
}

/// Runs [`plan_rolling`], [`optimum`] and each baseline over `timeline`.
pub fn backtest(
    site: &Site,
    timeline: &Timeline,
    state: &SiteState,
    horizon: usize,
    step: usize,
) -> Result<Backtest, PlanError> {
    Ok(Backtest {
        planner: plan_rolling(site, timeline, state, horizon, step)?,
        optimum: optimum(site, timeline, state)?,
        always_mine: baselines::always_mine(site, timeline, state)?,
        strike_price: baselines::strike_price(site, timeline, state)?,
        static_split: baselines::static_split(site, timeline, state)?,
    })
}

/// The checks every policy shares: the state fits the site, the coincident-peak interval fits
/// the timeline's, and no interval's limit is below what the site can shed to.
fn check(site: &Site, timeline: &Timeline, state: &SiteState) -> Result<(), PlanError> {
    state.check(site)?;
    if let Some(cp) = site.coincident_peak {
        let m = timeline.interval.minutes();
        if cp.interval_minutes < m || cp.interval_minutes % m != 0 {
            return Err(PlanError::PeakInterval {
                peak_minutes: cp.interval_minutes,
                interval_minutes: m,
            });
        }
    }
    let floors = lp::asic_floors(site, timeline, timeline.len(), state);
    for (index, floor) in floors.iter().enumerate() {
        let floor_kw = floor.iter().sum::<f64>() * site.pue();
        let limit_kw = lp::limit_kw(site, &timeline.intervals[index]);
        // A hair of slack: the floor is a sum of floats.
        if floor_kw > limit_kw * (1.0 + 1e-9) {
            return Err(PlanError::BelowFloor {
                index,
                limit_kw,
                floor_kw,
            });
        }
    }
    Ok(())
}
