//! The planner's linear program over one window of intervals, built with `good_lp` and solved
//! by `microlp` (pure Rust: no system solver to install).
//!
//! Units keep the coefficients near 1: power in kW, hashrate in PH/s, tokens in millions.
//!
//! Per interval `t` and ASIC group `g` (n units, sleep draw s kW each):
//! - `h` ∈ [0, n] units hashing, and `e_k` ∈ [0, Δw_k·h] kW put into segment k of the curve;
//!   the units hashing draw `p = min_w·h + Σ e_k` and hash `H = f(min_w)·h + Σ slope_k·e_k`
//!   (the perspective of the concave curve: exact when the hashing units share power evenly);
//! - the group draws `G = p + s·(n − h)`, and `G_t − G_{t−1}` stays within the ramp limits.
//!
//! Per GPU group `j`: nodes on `o` ∈ [0, n_j], interactive and batch tokens `x`, `y` ≥ 0 with
//! `x + y ≤ c_j·o` (c_j: a node's tokens per interval), drawing `idle·o + (max − idle)·(x+y)/c_j`.
//!
//! Site: `PUE · (ΣG + Σ GPU draw) ≤ min(interconnect, DR cap)`; interactive served between the
//! SLO target (see [`interactive_target`]) and the demand; a batch backlog `B_t = B_{t−1} +
//! arrivals − served ≥ 0`.
//!
//! Objective: hashprice·H + hosting fee·G (hosted groups) + token prices·tokens − (price +
//! expected peak charge)·load. Batch tokens lose a millionth of their value per interval of
//! wait, so that among equal plans the program serves them early; the books use full prices.

use good_lp::{
    Constraint, Expression, ProblemVariables, ResolutionError, Solution, SolverModel, Variable,
    microlp, variable,
};

use super::PlanError;
use super::account::{AsicDecision, Decision, GpuDecision, MTOK};
use super::model::{IntervalInputs, Site, SiteState, Timeline};

/// Relative slack on the SLO target, for the solver's float tolerances.
const TARGET_SLACK: f64 = 1e-7;

/// Per interval of the window, each ASIC group's lowest reachable draw (kW, IT): asleep, or as
/// low as the ramp-down from the state allows by then.
pub(crate) fn asic_floors(
    site: &Site,
    timeline: &Timeline,
    len: usize,
    state: &SiteState,
) -> Vec<Vec<f64>> {
    (0..len)
        .map(|k| {
            site.asic_groups
                .iter()
                .enumerate()
                .map(|(g, group)| {
                    let asleep = group.sleep_kw();
                    match state.asic_kw.as_ref().and_then(|kw| kw.get(g)) {
                        Some(&prev) => asleep
                            .max(prev - (k + 1) as f64 * group.ramp_down_kw(timeline.interval)),
                        None => asleep,
                    }
                })
                .collect()
        })
        .collect()
}

/// The site's limit at the meter in an interval, kW.
pub(crate) fn limit_kw(site: &Site, x: &IntervalInputs) -> f64 {
    x.dr.map_or(site.interconnect_kw(), |dr| {
        dr.cap_kw.min(site.interconnect_kw())
    })
}

/// The GPU groups in the order they are given work: most tokens per kWh first.
pub(crate) fn gpu_order(site: &Site) -> Vec<usize> {
    let mut order: Vec<usize> = (0..site.gpu_groups.len()).collect();
    order.sort_by(|&a, &b| {
        site.gpu_groups[b]
            .tokens_per_kwh()
            .total_cmp(&site.gpu_groups[a].tokens_per_kwh())
    });
    order
}

/// The most tokens (millions) the GPUs can serve in one interval within `budget_kw` of IT
/// power: the best tokens per kWh first, nodes on only while busy (the cheapest way to serve).
pub(crate) fn gpu_capacity_mtok(site: &Site, timeline: &Timeline, budget_kw: f64) -> f64 {
    let dt_s = timeline.interval.seconds() as f64;
    let mut left = budget_kw.max(0.0);
    let mut mtok = 0.0;
    for j in gpu_order(site) {
        let g = &site.gpu_groups[j];
        let kw = (g.nodes * g.max_kw).min(left);
        mtok += kw / g.max_kw * g.tokens_per_s * dt_s / MTOK;
        left -= kw;
    }
    mtok
}

/// The SLO target of one interval, in millions of tokens: the interactive demand, or as much
/// of it as the GPUs can serve with every miner at `asic_floor_kw` (IT) — mining never takes
/// the power interactive traffic needs.
pub(crate) fn interactive_target(
    site: &Site,
    timeline: &Timeline,
    x: &IntervalInputs,
    asic_floor_kw: f64,
) -> f64 {
    let budget = limit_kw(site, x) / site.pue() - asic_floor_kw;
    (x.interactive_tokens / MTOK).min(gpu_capacity_mtok(site, timeline, budget))
}

struct AsicVars {
    p: Expression,
    h: Variable,
}

struct GpuVars {
    on: Variable,
    x: Variable,
    y: Variable,
}

/// Solves the window `first..first + len` of `timeline` from `state`; one decision per interval.
pub(crate) fn solve(
    site: &Site,
    timeline: &Timeline,
    first: usize,
    len: usize,
    state: &SiteState,
) -> Result<Vec<Decision>, PlanError> {
    let interval = timeline.interval;
    let dt_h = interval.hours();
    let dt_s = interval.seconds() as f64;
    let pue = site.pue();
    let prices = site.inference();
    let inputs = &timeline.intervals[first..first + len];
    let floors = asic_floors(site, timeline, len, state);

    let mut vars = ProblemVariables::new();
    let mut objective = Expression::with_capacity(len * 8);
    let mut constraints: Vec<Constraint> = Vec::with_capacity(len * 16);
    let mut asic: Vec<Vec<AsicVars>> = Vec::with_capacity(len);
    let mut gpu: Vec<Vec<GpuVars>> = Vec::with_capacity(len);
    let mut backlog_prev: Expression = Expression::from(state.batch_backlog_tokens / MTOK);

    for (k, x) in inputs.iter().enumerate() {
        let index = first + k;
        let limit = limit_kw(site, x);
        let floor_it: f64 = floors[k].iter().sum();
        if floor_it * pue > limit * (1.0 + 1e-9) {
            return Err(PlanError::BelowFloor {
                index,
                limit_kw: limit,
                floor_kw: floor_it * pue,
            });
        }
        // USD per kW of IT load in this interval: energy at the meter plus the expected peak.
        let peak = site
            .coincident_peak
            .map_or(0.0, |cp| cp.usd_per_kw(x.peak_probability, interval));
        let usd_per_it_kw = (x.usd_per_mwh * dt_h / 1_000.0 + peak) * pue;
        let mut it_load = Expression::with_capacity(3 * (site.asic_groups.len() + 1));
        // The constant part of the load: every unit's sleep draw.
        let mut sleep_kw = 0.0;

        let mut row = Vec::with_capacity(site.asic_groups.len());
        for (g, group) in site.asic_groups.iter().enumerate() {
            let m = &group.model;
            let s = m.sleep_w / 1_000.0;
            // p = min_w·h + Σ e_k: the units hashing at their lowest profile, plus the power
            // put into each segment of the curve (at most the segment's width per unit). The
            // segments' gains fall (the curve is concave), so the program fills them in order
            // and no integer variable is needed.
            let h = vars.add(variable().min(0.0).max(group.units));
            let mut p = Expression::with_capacity(group.points.len());
            p.add_mul(m.min_w / 1_000.0, h);
            let mut hr = Expression::with_capacity(group.points.len());
            hr.add_mul(group.points[0].1 / 1_000.0, h);
            // A hosted group earns by the MWh, whatever its hashrate: one segment will do.
            let segments: Vec<((f64, f64), (f64, f64))> = match group.hosting_usd_per_mwh {
                Some(_) => vec![(group.points[0], group.points[group.points.len() - 1])],
                None => group.points.windows(2).map(|w| (w[0], w[1])).collect(),
            };
            for ((w0, ths0), (w1, ths1)) in segments {
                let width_kw = (w1 - w0) / 1_000.0;
                let e = vars.add(variable().min(0.0).max(width_kw * group.units));
                constraints.push(Expression::from(e).leq(width_kw * h));
                p.add_mul(1.0, e);
                // TH/s per W is PH/s per kW.
                hr.add_mul((ths1 - ths0) / (w1 - w0), e);
            }
            match group.hosting_usd_per_mwh {
                Some(fee) => {
                    objective.add_mul(fee * dt_h / 1_000.0, p.clone());
                    objective.add_mul(-fee * dt_h / 1_000.0 * s, h);
                }
                None => objective.add_mul(x.hashprice_usd_per_ph_day * dt_h / 24.0, hr),
            }
            it_load.add_mul(1.0, p.clone());
            it_load.add_mul(-s, h);
            sleep_kw += s * group.units;

            // Ramps on the group's draw G = p − s·h + s·n; skipped where they cannot bind (a
            // state may read up to 5 % above the group's highest draw: meter noise).
            let widest = group.max_kw() * 1.05;
            let up = group.ramp_up_kw(interval);
            let down = group.ramp_down_kw(interval);
            let draw = p.clone() - s * h;
            let prev: Option<Expression> = if k == 0 {
                state
                    .asic_kw
                    .as_ref()
                    .and_then(|kw| kw.get(g))
                    // A group can always sleep, whatever it drew before.
                    .map(|&kw| Expression::from(kw.max(group.sleep_kw()) - s * group.units))
            } else {
                let v: &AsicVars = &asic[k - 1][g];
                Some(v.p.clone() - s * v.h)
            };
            if let Some(prev) = prev {
                if up < widest {
                    constraints.push((draw.clone() - prev.clone()).leq(up));
                }
                if down < widest {
                    constraints.push((prev - draw).leq(down));
                }
            }
            row.push(AsicVars { p, h });
        }
        asic.push(row);

        let mut row = Vec::with_capacity(site.gpu_groups.len());
        let mut interactive = Expression::with_capacity(site.gpu_groups.len());
        let mut batch = Expression::with_capacity(site.gpu_groups.len());
        for group in &site.gpu_groups {
            let c = group.tokens_per_s * dt_s / MTOK;
            let on = vars.add(variable().min(0.0).max(group.nodes));
            let xi = vars.add(variable().min(0.0));
            let yb = vars.add(variable().min(0.0));
            constraints.push((xi + yb).leq(c * on));
            it_load.add_mul(group.idle_kw, on);
            it_load.add_mul((group.max_kw - group.idle_kw) / c, xi);
            it_load.add_mul((group.max_kw - group.idle_kw) / c, yb);
            objective.add_mul(prices.interactive_usd_per_mtok, xi);
            // A millionth less per interval of wait: serve early among equal plans.
            objective.add_mul(prices.batch_usd_per_mtok * (1.0 - 1e-6 * k as f64), yb);
            interactive.add_mul(1.0, xi);
            batch.add_mul(1.0, yb);
            row.push(GpuVars { on, x: xi, y: yb });
        }
        gpu.push(row);

        if !site.gpu_groups.is_empty() {
            let target = interactive_target(site, timeline, x, floor_it);
            let demand = x.interactive_tokens / MTOK;
            constraints.push(interactive.clone().leq(demand));
            constraints.push(interactive.geq(target - TARGET_SLACK * target.max(1.0)));
            let backlog = vars.add(variable().min(0.0));
            // B_t = B_{t−1} + arrivals − served.
            constraints
                .push((Expression::from(backlog) - backlog_prev + batch).eq(x.batch_tokens / MTOK));
            backlog_prev = Expression::from(backlog);
        }

        objective -= usd_per_it_kw * it_load.clone();
        constraints.push(it_load.leq(limit / pue - sleep_kw));
    }

    let mut model = vars.maximise(objective).using(microlp);
    for c in constraints {
        model.add_constraint(c);
    }
    let solution = model.solve().map_err(|e| PlanError::Solver {
        first,
        end: first + len,
        reason: match e {
            ResolutionError::Infeasible => "no plan meets every constraint (infeasible)".into(),
            ResolutionError::Unbounded => "the objective is unbounded".into(),
            other => other.to_string(),
        },
    })?;

    let value = |v: Variable| solution.value(v).max(0.0);
    let decisions = asic
        .iter()
        .zip(&gpu)
        .map(|(a, g)| Decision {
            asic: a
                .iter()
                .zip(&site.asic_groups)
                .map(|(v, group)| AsicDecision {
                    hashing_kw: v.p.eval_with(&solution).clamp(0.0, group.max_kw()),
                    units_hashing: value(v.h).min(group.units),
                })
                .collect(),
            gpu: g
                .iter()
                .zip(&site.gpu_groups)
                .map(|(v, group)| GpuDecision {
                    nodes_on: value(v.on).min(group.nodes),
                    interactive_mtok: value(v.x),
                    batch_mtok: value(v.y),
                })
                .collect(),
        })
        .collect();
    Ok(decisions)
}
