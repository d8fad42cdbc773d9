//! `wattmesh dr`: grid demand-response events from the operator's shell — make one, list them,
//! read (or follow) one's record, cancel one. The control plane decides and records; agents
//! put the miners to sleep; this only asks and shows.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use rust_decimal::Decimal;
use wattmesh_proto::energy::{DrEvent, DrEventReport, DrEventSpec, DrStatus, PowerSample};
use wattmesh_proto::pnl::DrTerms;

use super::{print_json, table};
use crate::cli::{DrCommand, DrCreateArgs};
use crate::client::ControlClient;

/// How often `dr show --watch` reads the record.
const WATCH_EVERY: Duration = Duration::from_secs(2);

pub async fn run(cmd: DrCommand) -> Result<()> {
    match cmd {
        DrCommand::Create(args) => create(args).await,
        DrCommand::List { site, json, target } => {
            let client = ControlClient::from_target(&target)?;
            let events: Vec<DrEvent> = match &site {
                Some(site) => client.get_query("/dr-events", &[("site", site)]).await?,
                None => client.get("/dr-events").await?,
            };
            if json {
                return print_json(&events);
            }
            let mut t = table(&[
                "id",
                "site",
                "status",
                "target kW",
                "sheds",
                "starts",
                "ends",
            ]);
            for e in &events {
                t.add_row(vec![
                    e.id.clone(),
                    e.site.clone(),
                    status(e.status).to_owned(),
                    format!("{:.1}", e.target_kw),
                    sheds(e).to_owned(),
                    e.starts_at.clone(),
                    e.ends_at.clone(),
                ]);
            }
            println!("{t}");
            Ok(())
        }
        DrCommand::Show {
            id,
            watch,
            json,
            target,
        } => {
            let client = ControlClient::from_target(&target)?;
            let path = format!("/dr-events/{id}");
            if watch {
                return follow(&client, &path).await;
            }
            let report: DrEventReport = client.get(&path).await?;
            if json {
                return print_json(&report);
            }
            print_report(&report);
            Ok(())
        }
        DrCommand::Cancel { id, target } => {
            let event: DrEvent = ControlClient::from_target(&target)?
                .post(&format!("/dr-events/{id}/cancel"), &serde_json::json!({}))
                .await?;
            println!(
                "cancelled {} on {}: its miners wake in staggered waves",
                event.id, event.site
            );
            Ok(())
        }
    }
}

async fn create(args: DrCreateArgs) -> Result<()> {
    let spec = DrEventSpec {
        down_to_kw: args.down_to_kw,
        reduce_by_pct: args.by_pct,
        starts_at: args.start,
        duration_minutes: minutes(&args.duration)?,
        note: args.note,
    };
    // Checked before the event is made, so a typo makes nothing.
    let terms = DrTerms {
        pay_usd_per_mwh: rate("--pay-usd-per-mwh", args.pay_usd_per_mwh.as_deref())?,
        peak_charge_usd_per_kw: rate(
            "--peak-charge-usd-per-kw",
            args.peak_charge_usd_per_kw.as_deref(),
        )?,
    };
    let client = ControlClient::from_target(&args.target)?;
    let event: DrEvent = client
        .post(&format!("/sites/{}/dr-events", args.site), &spec)
        .await?;
    if terms.pay_usd_per_mwh.is_some() || terms.peak_charge_usd_per_kw.is_some() {
        let _: DrTerms = client
            .put(&format!("/dr-events/{}/terms", event.id), &terms)
            .await
            .with_context(|| {
                format!(
                    "event {} was made, but its terms were not set; set them with \
                     PUT /api/v1/dr-events/{}/terms",
                    event.id, event.id
                )
            })?;
    }
    if args.json {
        return print_json(&event);
    }
    println!(
        "{} {} on {}: down to {:.1} kW from {} to {}; sheds {}",
        event.id,
        status(event.status),
        event.site,
        event.target_kw,
        event.starts_at,
        event.ends_at,
        sheds(&event)
    );
    println!("follow it: wattmesh dr show {} --watch", event.id);
    Ok(())
}

/// A rate in USD as a decimal, zero or more.
fn rate(flag: &str, text: Option<&str>) -> Result<Option<Decimal>> {
    let Some(text) = text else {
        return Ok(None);
    };
    match text.trim().parse::<Decimal>() {
        Ok(d) if d >= Decimal::ZERO => Ok(Some(d)),
        _ => bail!("{flag} {text:?}: give a number of USD, zero or more, like 120 or 12.5"),
    }
}

/// `30m`, `2h`, `45` (minutes) → whole minutes.
fn minutes(text: &str) -> Result<u32> {
    let text = text.trim();
    let (number, per) = if let Some(n) = text.strip_suffix('h') {
        (n, 60)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 1)
    } else {
        (text, 1)
    };
    match number.trim().parse::<u32>() {
        Ok(n) if n > 0 => n
            .checked_mul(per)
            .ok_or_else(|| anyhow::anyhow!("--duration {text:?} is too long")),
        _ => bail!("--duration {text:?}: give whole minutes or hours, like 30m, 2h or 45"),
    }
}

/// Prints a line per new sample until the event is over, then its record.
async fn follow(client: &ControlClient, path: &str) -> Result<()> {
    let mut last_at = i64::MIN;
    loop {
        let report: DrEventReport = client.get(path).await?;
        if last_at == i64::MIN {
            print_head(&report.event);
        }
        let since = last_at;
        for s in report.samples.iter().filter(|s| s.at_ms > since) {
            println!("{}", sample_line(&report, s));
            last_at = s.at_ms;
        }
        if matches!(report.event.status, DrStatus::Ended | DrStatus::Cancelled) {
            print_outcome(&report);
            return Ok(());
        }
        tokio::time::sleep(WATCH_EVERY).await;
    }
}

fn sample_line(report: &DrEventReport, s: &PowerSample) -> String {
    let t = (s.at_ms - report.event.starts_at_ms) as f64 / 1e3;
    let meter = match (s.meter_kw, &s.meter_error) {
        (Some(kw), _) => format!("{kw:>9.1} kW"),
        (None, Some(e)) => format!("meter: {e}"),
        (None, None) => "meter: -".to_owned(),
    };
    let m = &s.miners;
    format!(
        "{t:>+8.1} s  {meter}  miners {} hashing, {} asleep, {} unreachable of {} ({:.1} kW)",
        m.hashing, m.asleep, m.unreachable, m.total, m.kw
    )
}

fn print_head(e: &DrEvent) {
    println!("event    {} ({})", e.id, status(e.status));
    println!("site     {}", e.site);
    let baseline = e
        .baseline_kw
        .map_or("-".to_owned(), |b| format!("{b:.1} kW"));
    println!(
        "target   {:.1} kW (baseline {baseline}); sheds {}",
        e.target_kw,
        sheds(e)
    );
    println!("window   {} to {}", e.starts_at, e.ends_at);
    if let Some(c) = &e.cancelled_at {
        println!("cancelled {c}");
    }
    if let Some(note) = &e.note {
        println!("note     {note}");
    }
}

fn print_outcome(r: &DrEventReport) {
    let o = &r.outcome;
    let secs = |s: Option<f64>| s.map_or("-".to_owned(), |s| format!("{s:.1} s"));
    println!(
        "miners   {} of {} acknowledged; all within {}",
        o.miners_acknowledged,
        o.miners_total,
        secs(o.all_acknowledged_after_s)
    );
    println!(
        "target   reached after {}; held: {}",
        secs(o.target_reached_after_s),
        match o.held {
            Some(true) => "yes",
            Some(false) => "no",
            None => "not over yet",
        }
    );
}

fn print_report(r: &DrEventReport) {
    print_head(&r.event);
    print_outcome(r);
    for e in r.miners.iter().filter(|m| m.error.is_some()) {
        println!(
            "miner    {}: {}",
            e.miner,
            e.error.as_deref().unwrap_or_default()
        );
    }
    if let Some(last) = r.samples.last() {
        println!("last     {}", sample_line(r, last).trim_start());
    }
}

fn status(s: DrStatus) -> &'static str {
    match s {
        DrStatus::Scheduled => "scheduled",
        DrStatus::Active => "active",
        DrStatus::Ended => "ended",
        DrStatus::Cancelled => "cancelled",
    }
}

fn sheds(e: &DrEvent) -> &'static str {
    if e.shed_inference {
        "mining and inference"
    } else {
        "mining"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(minutes("30m").unwrap(), 30);
        assert_eq!(minutes("2h").unwrap(), 120);
        assert_eq!(minutes(" 45 ").unwrap(), 45);
        for bad in ["", "0", "0m", "-5", "1.5h", "soon", "m", "99999999999h"] {
            assert!(minutes(bad).is_err(), "{bad:?}");
        }
    }
}
