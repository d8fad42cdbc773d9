//! `wattmesh pnl`: one P&L per site and for the fleet, as a table (or JSON), and with
//! `--treasury` the BTC mined. The control plane books; this only asks and shows.

use anyhow::{Result, bail};
use wattmesh_proto::pnl::{PnlLine, PnlReport, Treasury};

use super::{print_json, table};
use crate::cli::PnlArgs;
use crate::client::ControlClient;

const HEADER: [&str; 11] = [
    "start",
    "kwh",
    "energy usd",
    "btc",
    "mining usd",
    "tokens",
    "inference usd",
    "dr usd",
    "peak usd",
    "margin usd",
    "usd/mwh",
];

pub async fn run(args: PnlArgs) -> Result<()> {
    if !matches!(args.by.as_str(), "interval" | "day" | "month") {
        bail!("--by {:?}: use interval, day or month", args.by);
    }
    let mut query: Vec<(&str, String)> = vec![("by", args.by.clone())];
    for (name, value) in [("site", &args.site), ("from", &args.from), ("to", &args.to)] {
        if let Some(v) = value {
            query.push((name, v.clone()));
        }
    }
    let report: PnlReport = ControlClient::from_target(&args.target)?
        .get_query("/pnl", &query)
        .await?;
    if args.json {
        return if args.treasury {
            print_json(&report.treasury)
        } else {
            print_json(&report)
        };
    }
    let whose = report.site.as_deref().unwrap_or("fleet");
    println!(
        "{whose}, {} to {}, by {}",
        report.from, report.to, report.by
    );
    if args.treasury {
        print_treasury(&report.treasury);
        return Ok(());
    }
    let mut t = table(&HEADER);
    for l in &report.lines {
        t.add_row(row(&l.start, l));
    }
    t.add_row(row("TOTAL", &report.total));
    println!("{t}");
    if report.site.is_none() && !report.sites.is_empty() {
        let mut header = HEADER;
        header[0] = "site";
        let mut t = table(&header);
        for s in &report.sites {
            t.add_row(row(&s.site, &s.total));
        }
        println!("\nper site:\n{t}");
    }
    for s in &report.sites {
        let m = &s.metering;
        if m.integrated_kwh > 0.0 || m.unmetered_s > 0.0 {
            println!(
                "{}: {:.1} kWh from the meter's register, {:.1} kWh integrated from its kW, \
                 {:.0} s unmetered",
                s.site, m.counter_kwh, m.integrated_kwh, m.unmetered_s
            );
        }
        for n in &s.notes {
            println!("{}: {n}", s.site);
        }
    }
    Ok(())
}

fn row(first: &str, l: &PnlLine) -> Vec<String> {
    vec![
        first.to_owned(),
        format!("{:.1}", l.energy_kwh),
        l.energy_cost_usd.to_string(),
        l.btc_mined.to_string(),
        l.mining_revenue_usd.to_string(),
        l.tokens.to_string(),
        l.inference_revenue_usd.to_string(),
        l.dr_payment_usd.to_string(),
        l.avoided_peak_charge_usd.to_string(),
        l.margin_usd.to_string(),
        l.margin_usd_per_mwh
            .map_or_else(|| "-".to_owned(), |m| m.to_string()),
    ]
}

fn print_treasury(t: &Treasury) {
    let mut table = table(&["name", "btc mined", "usd when mined", "usd at latest"]);
    for r in t.sites.iter().chain(std::iter::once(&t.fleet)) {
        table.add_row(vec![
            r.name.clone(),
            r.btc_mined.to_string(),
            r.usd_when_mined.to_string(),
            r.usd_at_latest
                .map_or_else(|| "-".to_owned(), |u| u.to_string()),
        ]);
    }
    println!("{table}");
    match t.latest_btc_usd {
        Some(p) => println!("latest BTC price: {p} USD"),
        None => println!("no market snapshot yet: set one with `wattmesh market set`"),
    }
}
