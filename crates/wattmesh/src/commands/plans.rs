//! `wattmesh planner model|site-prices|run|plans`: the live power plan through the control
//! plane — a site's power model and imported prices, planning it now, and its plans with what
//! the agent confirmed of each.

use std::path::Path;

use anyhow::{Context, Result, bail};
use wattmesh_domain::market::{IntervalLength, PriceSeries};
use wattmesh_domain::planner::SiteSpec;
use wattmesh_proto::plan::{
    PlanOutcome, PowerModel, PowerPlan, PriceImport, PriceImportReceipt, SitePrices,
};

use super::{print_json, table};
use crate::cli::{ControlTarget, PlannerModelCommand, SitePricesCommand};
use crate::client::ControlClient;

/// The planning interval of `--plan-interval-minutes`.
pub fn interval(minutes: u32) -> Result<IntervalLength> {
    match IntervalLength::from_seconds(i64::from(minutes) * 60) {
        Some(i) => Ok(i),
        None => {
            bail!("--plan-interval-minutes {minutes}: the planner plans 5- or 15-minute intervals")
        }
    }
}

pub async fn model(cmd: PlannerModelCommand) -> Result<()> {
    match cmd {
        PlannerModelCommand::Set {
            site,
            file,
            json,
            target,
        } => {
            let spec = read_site(&file)?;
            let model: PowerModel = ControlClient::from_target(&target)?
                .put(&format!("/sites/{site}/power-model"), &spec)
                .await?;
            if json {
                return print_json(&model);
            }
            let s = &model.spec;
            let units: u32 = s.asic_groups.iter().map(|g| g.units).sum();
            let nodes: u32 = s.gpu_groups.iter().map(|g| g.nodes).sum();
            println!(
                "power model of {} set: {} kW interconnect, PUE {}, {units} miners in {} groups, {nodes} GPU nodes; it is planned at the next interval (or now: `wattmesh planner run {}`)",
                model.site,
                s.interconnect_kw,
                s.pue,
                s.asic_groups.len(),
                model.site
            );
            Ok(())
        }
        PlannerModelCommand::Show { site, json, target } => {
            let model: PowerModel = ControlClient::from_target(&target)?
                .get(&format!("/sites/{site}/power-model"))
                .await?;
            if json {
                return print_json(&model);
            }
            // The site file's own format, so it can be edited and set again.
            print!(
                "# power model of {}, set {}\n{}",
                model.site,
                model.updated_at,
                toml::to_string(&model.spec).context("writing the model as TOML")?
            );
            Ok(())
        }
    }
}

pub async fn site_prices(cmd: SitePricesCommand) -> Result<()> {
    match cmd {
        SitePricesCommand::Import {
            site,
            file,
            json,
            target,
        } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            // Parsed here too, so a broken file is refused with its line number.
            let series =
                PriceSeries::parse_csv(&text).with_context(|| format!("{}", file.display()))?;
            let start = time::OffsetDateTime::from_unix_timestamp(series.start_unix_s())
                .context("the series' start")?
                .format(&time::format_description::well_known::Rfc3339)
                .context("the series' start")?;
            let import = PriceImport {
                start,
                interval_minutes: u32::try_from(series.interval().seconds() / 60)?,
                usd_per_mwh: series.prices().to_vec(),
            };
            let receipt: PriceImportReceipt = ControlClient::from_target(&target)?
                .put(&format!("/sites/{site}/prices"), &import)
                .await?;
            if json {
                return print_json(&receipt);
            }
            println!(
                "{} prices of {} imported ({} to {}), {} replaced",
                receipt.imported, receipt.site, receipt.from, receipt.to, receipt.replaced
            );
            match &receipt.replanned {
                Some(plan) => println!("replanned now: {plan} (`wattmesh planner plans {site}`)"),
                None => println!(
                    "not replanned: {site} has no power model (`wattmesh planner model set`)"
                ),
            }
            Ok(())
        }
        SitePricesCommand::Show {
            site,
            from,
            to,
            json,
            target,
        } => {
            let query: Vec<(&str, String)> = [("from", from), ("to", to)]
                .into_iter()
                .filter_map(|(k, v)| Some((k, v?)))
                .collect();
            let prices: SitePrices = ControlClient::from_target(&target)?
                .get_query(&format!("/sites/{site}/prices"), &query)
                .await?;
            if json {
                return print_json(&prices);
            }
            let mut t = table(&["STARTS AT", "MINUTES", "USD/MWH"]);
            for p in &prices.prices {
                t.add_row(vec![
                    p.starts_at.clone(),
                    p.interval_minutes.to_string(),
                    format!("{:.2}", p.usd_per_mwh),
                ]);
            }
            println!("{t}");
            println!(
                "elsewhere {} pays its tariff, {} USD/MWh",
                prices.site, prices.tariff_usd_per_mwh
            );
            Ok(())
        }
    }
}

pub async fn run_now(site: String, json: bool, target: ControlTarget) -> Result<()> {
    let plan: PowerPlan = ControlClient::from_target(&target)?
        .post(&format!("/sites/{site}/plans"), &serde_json::json!({}))
        .await?;
    if json {
        return print_json(&plan);
    }
    print_plans(std::slice::from_ref(&plan));
    println!(
        "planned; the agent of {site} applies it and reports back (`wattmesh planner plans {site}`)"
    );
    Ok(())
}

pub async fn plans(site: String, limit: u32, json: bool, target: ControlTarget) -> Result<()> {
    let plans: Vec<PowerPlan> = ControlClient::from_target(&target)?
        .get_query(&format!("/sites/{site}/plans"), &[("limit", limit)])
        .await?;
    if json {
        return print_json(&plans);
    }
    print_plans(&plans);
    if plans.is_empty() {
        println!(
            "no plan for {site} yet: set its power model (`wattmesh planner model set`) and run `wattmesh planner run {site}`"
        );
    }
    for p in &plans {
        if let Some(r) = &p.report {
            for problem in &r.problems {
                println!("{}: {problem}", p.id);
            }
        }
    }
    Ok(())
}

fn print_plans(plans: &[PowerPlan]) {
    let mut t = table(&[
        "plan",
        "interval",
        "usd/mwh",
        "miners hashing",
        "w/miner",
        "gpu nodes on",
        "expected kw",
        "margin usd",
        "applied",
        "confirmed hashing/asleep",
        "meter kw",
    ]);
    for p in plans {
        let d = &p.directive;
        let (hashing, units) = (d.units_hashing(), d.units());
        let watts = d
            .asic_groups
            .iter()
            .filter(|g| g.units_hashing > 0)
            .map(|g| format!("{:.0}", g.watts_per_unit))
            .collect::<Vec<_>>()
            .join(",");
        // As planned (continuous); the nodes past it, rounded up, are parked.
        let gpu_nodes = if d.gpu_groups.is_empty() {
            "-".to_owned()
        } else {
            let on: f64 = d.gpu_groups.iter().map(|g| g.nodes_on).sum();
            let nodes: u32 = d.gpu_groups.iter().map(|g| g.nodes).sum();
            format!("{on:.2}/{nodes}")
        };
        let (applied, confirmed, meter) = match &p.report {
            None => ("not reported".to_owned(), "-".to_owned(), "-".to_owned()),
            Some(r) => (
                match r.outcome {
                    PlanOutcome::Applied => "applied",
                    PlanOutcome::Partial => "partial",
                    PlanOutcome::Failed => "failed",
                }
                .to_owned(),
                format!("{}/{}", r.miners_hashing, r.miners_asleep),
                r.meter_kw.map_or("-".to_owned(), |kw| format!("{kw:.1}")),
            ),
        };
        t.add_row(vec![
            p.id.clone(),
            format!("{} – {}", p.starts_at, p.ends_at),
            format!("{:.2}", p.interval.usd_per_mwh),
            format!("{hashing}/{units}"),
            if watts.is_empty() { "-".into() } else { watts },
            gpu_nodes,
            format!("{:.1}", d.expected_meter_kw),
            format!("{:.2}", p.interval.margin_usd),
            applied,
            confirmed,
            meter,
        ]);
    }
    println!("{t}");
}

fn read_site(path: &Path) -> Result<SiteSpec> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the site file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("site file {}", path.display()))
}
