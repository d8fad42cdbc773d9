//! The planner's benchmark (`bench/planner/run`; figures in BENCHMARKS.md, never in tests):
//!
//! 1. **Plan time**: 40 sites × 96 intervals (one day ahead at 15 minutes) and 1,000 sites × 1
//!    interval, planned one after the other on one thread. Targets: ≤ 1 s each.
//! 2. **Backtest** over synthetic year-long price traces (several seeds; spikes to the cap and
//!    negative nights included) for the example site (`bench/planner/site-georgia.toml`: GPU
//!    demand, coincident peaks): the rolling planner's margin against each baseline and against
//!    the optimum, and the energy cost each policy saves against always-mine. Targets: ≥ 99 %
//!    of the optimum; ahead of strike-price curtailment on energy cost saved by ≥ 5 points.
//!
//! The optimum over a year is beyond `microlp` in one program, so it is solved a week at a
//! time with the state carried (perfect foresight within each week); the output says so.
//!
//! ```sh
//! cargo run --release -p wattmesh-domain --example bench_planner -- SITE.toml [SEEDS] [DAYS]
//! ```
//! Prints JSON on stdout.

use std::time::Instant;

use wattmesh_domain::market::{IntervalLength, SyntheticPrices};
use wattmesh_domain::planner::{self, SitePlan, SiteSpec, SiteState};

/// 2024-01-01T00:00:00Z.
const START: i64 = 1_704_067_200;
const DAY: usize = 96;

type Error = Box<dyn std::error::Error>;

fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let site_path = args
        .next()
        .ok_or("usage: bench_planner SITE.toml [SEEDS] [DAYS]")?;
    let seeds: u64 = args.next().map_or(Ok(3), |s| s.parse())?;
    let days: usize = args.next().map_or(Ok(365), |s| s.parse())?;
    let spec: SiteSpec = toml::from_str(&std::fs::read_to_string(&site_path)?)?;

    let plan_time = plan_time(&spec)?;
    eprintln!("plan time: {plan_time}");
    let mut runs = Vec::new();
    for seed in 1..=seeds {
        let run = backtest(&spec, seed, days)?;
        eprintln!("seed {seed}: {run}");
        runs.push(run);
    }
    let report = serde_json::json!({
        "site": site_path,
        "plan_time": plan_time,
        "backtests": runs,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// A copy of `spec` with its fleets scaled by `factor` (at least one unit or node each).
fn scaled(spec: &SiteSpec, factor: f64, name: String) -> SiteSpec {
    let mut s = spec.clone();
    s.name = name;
    s.interconnect_kw *= factor;
    for g in &mut s.asic_groups {
        g.units = ((f64::from(g.units) * factor).round() as u32).max(1);
    }
    for g in &mut s.gpu_groups {
        g.nodes = ((f64::from(g.nodes) * factor).round() as u32).max(1);
    }
    s.demand.interactive_tokens_per_s *= factor;
    s.demand.batch_tokens_per_s *= factor;
    // The example's DR event is for one day of one site; plan time is about the program.
    s.dr_events.clear();
    s
}

fn plan_time(spec: &SiteSpec) -> Result<serde_json::Value, Error> {
    let mut cases = Vec::new();
    for (sites, intervals) in [(40usize, DAY), (1_000, 1)] {
        let mut prepared = Vec::with_capacity(sites);
        for i in 0..sites {
            let factor = 0.5 + (i % 11) as f64 / 10.0;
            let site = scaled(spec, factor, format!("site-{i}")).check()?;
            // Mid-August: the coincident-peak windows are live.
            let prices = SyntheticPrices::with_seed(i as u64).generate(
                START + 230 * 86_400,
                IntervalLength::FifteenMinutes,
                intervals,
            )?;
            let timeline = site.timeline(&prices, None)?;
            prepared.push((site, timeline));
        }
        let started = Instant::now();
        for (site, timeline) in &prepared {
            planner::plan(site, timeline, &SiteState::default(), intervals)?;
        }
        let seconds = started.elapsed().as_secs_f64();
        cases.push(serde_json::json!({
            "sites": sites,
            "intervals": intervals,
            "seconds": seconds,
            "target_seconds": 1.0,
        }));
    }
    Ok(serde_json::Value::Array(cases))
}

fn backtest(spec: &SiteSpec, seed: u64, days: usize) -> Result<serde_json::Value, Error> {
    let site = spec.check()?;
    let prices = SyntheticPrices::with_seed(seed).generate(
        START,
        IntervalLength::FifteenMinutes,
        days * DAY,
    )?;
    let timeline = site.timeline(&prices, None)?;
    let state = SiteState::default();
    let started = Instant::now();
    let planned = planner::plan_rolling(&site, &timeline, &state, DAY, 4)?;
    let planner_s = started.elapsed().as_secs_f64();
    let week = 7 * DAY;
    let optimum = planner::plan_rolling(&site, &timeline, &state, week, week)?;
    let always = planner::baselines::always_mine(&site, &timeline, &state)?;
    let strike = planner::baselines::strike_price(&site, &timeline, &state)?;
    let split = planner::baselines::static_split(&site, &timeline, &state)?;

    let margin = |p: &SitePlan| p.totals.margin_usd;
    // Energy cost saved against always-mine, in % of always-mine's: energy and peak charges.
    let cost = |p: &SitePlan| p.totals.energy_cost_usd + p.totals.peak_charge_usd;
    let saved = |p: &SitePlan| 100.0 * (cost(&always) - cost(p)) / cost(&always);
    // The same per MWh drawn: what timing alone saves, whatever the volume.
    let per_mwh = |p: &SitePlan| cost(p) / p.totals.energy_mwh;
    let saved_per_mwh = |p: &SitePlan| 100.0 * (per_mwh(&always) - per_mwh(p)) / per_mwh(&always);
    Ok(serde_json::json!({
        "seed": seed,
        "days": days,
        "mean_price_usd_per_mwh": prices.mean(),
        "hours_carrying_half_the_cost": prices.hours_carrying_half_the_cost(),
        "planner_seconds": planner_s,
        "margin_usd": {
            "planner": margin(&planned),
            "optimum_weekly_windows": margin(&optimum),
            "always_mine": margin(&always),
            "strike_price": margin(&strike),
            "static_split": margin(&split),
        },
        "planner_over_optimum": margin(&planned) / margin(&optimum),
        "planner_over": {
            "always_mine": margin(&planned) / margin(&always),
            "strike_price": margin(&planned) / margin(&strike),
            "static_split": margin(&planned) / margin(&split),
        },
        "energy_and_peak_cost_saved_pct_vs_always_mine": {
            "planner": saved(&planned),
            "strike_price": saved(&strike),
            "static_split": saved(&split),
        },
        "planner_ahead_of_strike_on_cost_saved_points": saved(&planned) - saved(&strike),
        "cost_usd_per_mwh": {
            "planner": per_mwh(&planned),
            "always_mine": per_mwh(&always),
            "strike_price": per_mwh(&strike),
            "static_split": per_mwh(&split),
        },
        "planner_ahead_of_strike_on_cost_per_mwh_saved_points":
            saved_per_mwh(&planned) - saved_per_mwh(&strike),
        "energy_mwh": {
            "planner": planned.totals.energy_mwh,
            "always_mine": always.totals.energy_mwh,
            "strike_price": strike.totals.energy_mwh,
        },
    }))
}
