//! `wattmesh planner`: the power planner offline. `backtest` runs the planner, the fleet tools'
//! baselines and the perfect-foresight optimum over a price series for one site file and prints
//! their margins; `prices` writes a synthetic price series (FACTS.md's ERCOT shape) to try it on.
//! Pure computation over `wattmesh_domain::planner`: no control plane needed. The live plan's
//! subcommands (`model`, `run`, `plans`) are in `plans`.

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use wattmesh_domain::market::{IntervalLength, PriceSeries, SyntheticPrices};
use wattmesh_domain::planner::{self, PlanTotals, SitePlan, SiteSpec, SiteState};

use crate::cli::{BacktestArgs, PlannerCommand, PricesArgs};

pub async fn run(cmd: PlannerCommand) -> Result<()> {
    match cmd {
        PlannerCommand::Backtest(args) => backtest(args),
        PlannerCommand::Prices(args) => prices(args),
        PlannerCommand::Model(cmd) => super::plans::model(cmd).await,
        PlannerCommand::SitePrices(cmd) => super::plans::site_prices(cmd).await,
        PlannerCommand::Run { site, json, target } => {
            super::plans::run_now(site, json, target).await
        }
        PlannerCommand::Plans {
            site,
            limit,
            json,
            target,
        } => super::plans::plans(site, limit, json, target).await,
    }
}

/// Every margin of a backtest, as `--json` prints it.
#[derive(Debug, Serialize)]
struct Report {
    site: String,
    intervals: usize,
    interval_minutes: u32,
    mean_price_usd_per_mwh: f64,
    planner: Outcome,
    baselines: Baselines,
    optimum: Optimum,
}

#[derive(Debug, Serialize)]
struct Baselines {
    always_mine: Outcome,
    strike_price: Outcome,
    static_split: Outcome,
}

#[derive(Debug, Serialize)]
struct Outcome {
    margin_usd: f64,
    #[serde(flatten)]
    totals: PlanTotals,
}

#[derive(Debug, Serialize)]
struct Optimum {
    margin_usd: f64,
    /// One program over the whole series (true), or consecutive windows of
    /// `window_intervals` with the state carried (a long series is beyond one program).
    exact: bool,
    window_intervals: usize,
    #[serde(flatten)]
    totals: PlanTotals,
}

fn outcome(plan: &SitePlan) -> Outcome {
    Outcome {
        margin_usd: plan.totals.margin_usd,
        totals: plan.totals.clone(),
    }
}

fn backtest(args: BacktestArgs) -> Result<()> {
    let prices = read(&args.prices)?;
    let prices = PriceSeries::parse_csv(&prices)
        .with_context(|| format!("price file {}", args.prices.display()))?;
    let site_text = read(&args.site)?;
    let spec: SiteSpec =
        toml::from_str(&site_text).with_context(|| format!("site file {}", args.site.display()))?;
    let site = spec
        .check()
        .with_context(|| format!("site file {}", args.site.display()))?;
    let timeline = site
        .timeline(&prices, None)
        .with_context(|| format!("site file {} over the prices", args.site.display()))?;
    let per_day = 24 * prices.interval().per_hour();
    let horizon = args.horizon.unwrap_or(per_day);
    let step = args.step.unwrap_or(prices.interval().per_hour());
    if horizon == 0 || step == 0 || step > horizon {
        bail!("--step must be between 1 and --horizon ({horizon}), and --horizon at least 1");
    }
    let window = args.optimum_window.unwrap_or(7 * per_day).max(1);
    let state = SiteState::default();
    let len = prices.len();

    let bar = crate::progress::steps("backtest", 5);
    bar.set_message("planner (rolling horizon)");
    let planned =
        planner::plan_rolling(&site, &timeline, &state, horizon, step).context("the planner")?;
    bar.inc(1);
    bar.set_message("optimum");
    let optimum =
        planner::plan_rolling(&site, &timeline, &state, window, window).context("the optimum")?;
    bar.inc(1);
    bar.set_message("baselines");
    let always_mine =
        planner::baselines::always_mine(&site, &timeline, &state).context("always mine")?;
    bar.inc(1);
    let strike_price =
        planner::baselines::strike_price(&site, &timeline, &state).context("strike price")?;
    bar.inc(1);
    let static_split =
        planner::baselines::static_split(&site, &timeline, &state).context("static split")?;
    bar.finish_and_clear();

    let report = Report {
        site: planned.site.clone(),
        intervals: len,
        interval_minutes: prices.interval().minutes(),
        mean_price_usd_per_mwh: prices.mean(),
        planner: outcome(&planned),
        baselines: Baselines {
            always_mine: outcome(&always_mine),
            strike_price: outcome(&strike_price),
            static_split: outcome(&static_split),
        },
        optimum: Optimum {
            margin_usd: optimum.totals.margin_usd,
            exact: window >= len,
            window_intervals: window.min(len),
            totals: optimum.totals.clone(),
        },
    };
    if args.json {
        return super::print_json(&report);
    }
    print_table(&report, horizon, step);
    Ok(())
}

fn print_table(r: &Report, horizon: usize, step: usize) {
    println!(
        "{}: {} intervals of {} min, mean price {:.2} USD/MWh; planner horizon {horizon}, replanned every {step}",
        r.site, r.intervals, r.interval_minutes, r.mean_price_usd_per_mwh
    );
    let mut t = super::table(&[
        "policy",
        "margin usd",
        "of optimum",
        "mining usd",
        "inference usd",
        "dr usd",
        "energy usd",
        "peak usd",
        "energy mwh",
    ]);
    let optimum_label = if r.optimum.exact {
        "optimum".to_owned()
    } else {
        format!("optimum ({}-interval windows)", r.optimum.window_intervals)
    };
    let rows = [
        ("planner".to_owned(), &r.planner.totals),
        ("always mine".to_owned(), &r.baselines.always_mine.totals),
        ("strike price".to_owned(), &r.baselines.strike_price.totals),
        ("static split".to_owned(), &r.baselines.static_split.totals),
        (optimum_label, &r.optimum.totals),
    ];
    for (name, x) in rows {
        let share = if r.optimum.margin_usd.abs() > f64::EPSILON {
            format!("{:.1}%", 100.0 * x.margin_usd / r.optimum.margin_usd)
        } else {
            "-".to_owned()
        };
        t.add_row(vec![
            name,
            format!("{:.2}", x.margin_usd),
            share,
            format!("{:.2}", x.mining_revenue_usd + x.hosting_revenue_usd),
            format!("{:.2}", x.inference_revenue_usd),
            format!("{:.2}", x.dr_payment_usd),
            format!("{:.2}", x.energy_cost_usd),
            format!("{:.2}", x.peak_charge_usd),
            format!("{:.3}", x.energy_mwh),
        ]);
    }
    println!("{t}");
}

fn prices(args: PricesArgs) -> Result<()> {
    let interval = IntervalLength::from_minutes(args.interval_minutes)
        .context("--interval-minutes must be 5 or 15")?;
    if args.days == 0 || args.days > 36_600 {
        bail!("--days must be between 1 and 36,600");
    }
    // 1970 to 2100: the series' timestamps are computed from it.
    if !(0..=4_102_444_800).contains(&args.start_unix_s) {
        bail!("--start-unix-s must be between 0 and 4102444800 (1970 to 2100)");
    }
    let intervals = args.days as usize * 24 * interval.per_hour();
    let series = SyntheticPrices::with_seed(args.seed)
        .generate(args.start_unix_s, interval, intervals)
        .context("generating prices")?;
    let mut out = String::with_capacity(intervals * 24);
    out.push_str("timestamp,usd_per_mwh\n");
    for (i, price) in series.prices().iter().enumerate() {
        out.push_str(&format!("{},{price:.2}\n", series.timestamp(i)));
    }
    print!("{out}");
    Ok(())
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}
