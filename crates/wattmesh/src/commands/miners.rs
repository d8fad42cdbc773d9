//! `wattmesh miners`: miners on their own protocol, from the operator's shell. `status` reads
//! each miner's power and hashrate; `sleep` and `wake` run the fleet operations of
//! `wattmesh_miner::fleet` (bounded parallelism, each miner confirmed by its own telemetry,
//! wakes in staggered waves); `sim` runs simulated miners and a simulated site meter to try
//! them on.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::stream::{self, StreamExt};
use serde::Serialize;
use wattmesh_miner::fleet::{self, FleetOptions, FleetReport};
use wattmesh_miner::meter::{SimMeter, SiteLoad};
pub use wattmesh_miner::sim::SimOptions;
use wattmesh_miner::sim::{SimFleet, UnitSpec};
use wattmesh_miner::{MinerClient, fleet::telemetry};

use crate::cli::{MinerOpArgs, MinerSimArgs, MinerStatusArgs, MinersCommand};

pub async fn run(cmd: MinersCommand) -> Result<()> {
    match cmd {
        MinersCommand::Status(args) => status(args).await,
        MinersCommand::Sleep(args) => operate(args, Op::Sleep).await,
        MinersCommand::Wake(args) => operate(args, Op::Wake).await,
        MinersCommand::Sim(args) => sim(args).await,
    }
}

/// Reads `--miners` values: `IP:PORT`, or `IP:FIRST-LAST` for a run of ports; several
/// separated by commas; `@FILE` for the same, one or more per line (`wattmesh up` writes one
/// per site).
pub fn parse_miners(values: &[String]) -> Result<Vec<SocketAddr>> {
    let mut expanded = Vec::new();
    for value in values {
        match value.strip_prefix('@') {
            Some(path) => expanded.extend(
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read the miner list {path}"))?
                    .lines()
                    .map(str::to_owned),
            ),
            None => expanded.push(value.clone()),
        }
    }
    let mut out = Vec::new();
    for part in expanded.iter().flat_map(|v| v.split(',')).map(str::trim) {
        if part.is_empty() {
            continue;
        }
        let (host, ports) = part
            .rsplit_once(':')
            .with_context(|| format!("miner {part:?}: expected IP:PORT or IP:FIRST-LAST"))?;
        let ip: std::net::IpAddr = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .with_context(|| format!("miner {part:?}: {host:?} is not an IP address"))?;
        let (first, last) = match ports.split_once('-') {
            Some((a, b)) => (a, b),
            None => (ports, ports),
        };
        let port = |p: &str| -> Result<u16> {
            p.parse()
                .with_context(|| format!("miner {part:?}: {p:?} is not a port"))
        };
        let (first, last) = (port(first)?, port(last)?);
        if first > last {
            bail!("miner {part:?}: the port range runs backwards");
        }
        out.extend((first..=last).map(|p| SocketAddr::new(ip, p)));
    }
    if out.is_empty() {
        bail!("no miners given: --miners IP:PORT[,IP:FIRST-LAST...]");
    }
    Ok(out)
}

/// A duration flag in seconds: `Duration::from_secs_f64` panics on negative or huge values.
fn seconds(flag: &str, value: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| format!("{flag} must be a positive number of seconds, not {value}"))
}

#[derive(Debug, Serialize)]
struct MinerStatus {
    addr: SocketAddr,
    state: &'static str,
    watts: Option<f64>,
    ths_5s: Option<f64>,
    error: Option<String>,
}

async fn status(args: MinerStatusArgs) -> Result<()> {
    let miners = parse_miners(&args.target.miners)?;
    let timeout = seconds("--timeout-s", args.target.timeout_s)?;
    let opts = &FleetOptions::default();
    let mut rows: Vec<MinerStatus> = stream::iter(miners.iter().copied())
        .map(|addr| async move {
            let client = MinerClient::new(addr, timeout);
            match telemetry(&client).await {
                Ok(t) => MinerStatus {
                    addr,
                    state: if opts.is_asleep(&t) {
                        "asleep"
                    } else if opts.is_hashing(&t) {
                        "hashing"
                    } else {
                        "not hashing"
                    },
                    watts: Some(t.watts),
                    ths_5s: Some(t.ths_5s),
                    error: None,
                },
                Err(e) => MinerStatus {
                    addr,
                    state: "unreachable",
                    watts: None,
                    ths_5s: None,
                    error: Some(e.to_string()),
                },
            }
        })
        .buffer_unordered(args.target.parallelism.max(1))
        .collect()
        .await;
    rows.sort_by_key(|r| r.addr);
    let unreachable = rows.iter().filter(|r| r.error.is_some()).count();
    if args.json {
        super::print_json(&rows)?;
    } else {
        let mut t = super::table(&["miner", "state", "watts", "th/s (5s)", "error"]);
        for r in &rows {
            t.add_row(vec![
                r.addr.to_string(),
                r.state.to_owned(),
                r.watts.map_or("-".into(), |w| format!("{w:.0}")),
                r.ths_5s.map_or("-".into(), |h| format!("{h:.1}")),
                r.error.clone().unwrap_or_default(),
            ]);
        }
        println!("{t}");
        let kw: f64 = rows.iter().filter_map(|r| r.watts).sum::<f64>() / 1e3;
        let phs: f64 = rows.iter().filter_map(|r| r.ths_5s).sum::<f64>() / 1e3;
        println!(
            "{} miners, {} unreachable; {kw:.1} kW, {phs:.3} PH/s",
            rows.len(),
            unreachable
        );
    }
    if unreachable > 0 {
        bail!("{unreachable} of {} miners did not answer", rows.len());
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Sleep,
    Wake,
}

#[derive(Debug, Serialize)]
struct OpRow {
    addr: SocketAddr,
    acknowledged_after_s: Option<f64>,
    confirmed_after_s: Option<f64>,
    watts: Option<f64>,
    error: Option<String>,
}

async fn operate(args: MinerOpArgs, op: Op) -> Result<()> {
    let miners = parse_miners(&args.target.miners)?;
    let opts = FleetOptions {
        parallelism: args.target.parallelism,
        timeout: seconds("--timeout-s", args.target.timeout_s)?,
        confirm_within: seconds("--confirm-within-s", args.confirm_within_s)?,
        wave_size: args.wave_size,
        wave_gap: seconds("--wave-gap-s", args.wave_gap_s)?,
        ..FleetOptions::default()
    };
    let verb = match op {
        Op::Sleep => "sleep",
        Op::Wake => "wake",
    };
    let bar = crate::progress::steps(verb, 1);
    bar.set_message(format!("{} miners", miners.len()));
    let report = match op {
        Op::Sleep => fleet::sleep(&miners, &opts).await,
        Op::Wake => fleet::wake(&miners, &opts).await,
    }
    .with_context(|| format!("miners {verb}"))?;
    bar.finish_and_clear();
    let rows = rows(&report);
    let failed = rows.iter().filter(|r| r.error.is_some()).count();
    if args.json {
        super::print_json(&rows)?;
    } else {
        for r in rows.iter().filter(|r| r.error.is_some()) {
            println!("{}: {}", r.addr, r.error.as_deref().unwrap_or_default());
        }
        let done = rows.len() - failed;
        let last = |f: fn(&OpRow) -> Option<f64>| rows.iter().filter_map(f).fold(0.0_f64, f64::max);
        println!(
            "{verb}: {done} of {} miners confirmed; last acknowledgement after {:.1} s, last confirmation after {:.1} s",
            rows.len(),
            last(|r| r.acknowledged_after_s),
            last(|r| r.confirmed_after_s),
        );
    }
    if failed > 0 {
        bail!("{failed} of {} miners did not {verb}", rows.len());
    }
    Ok(())
}

fn rows(report: &FleetReport) -> Vec<OpRow> {
    let after = |at: Option<tokio::time::Instant>| at.map(|at| (at - report.started).as_secs_f64());
    report
        .miners
        .iter()
        .map(|m| OpRow {
            addr: m.addr,
            acknowledged_after_s: after(m.acknowledged_at),
            confirmed_after_s: after(m.confirmed_at),
            watts: m.last.map(|t| t.watts),
            error: m.error.as_ref().map(ToString::to_string),
        })
        .collect()
}

/// Simulated miners and a simulated site meter that reads their draw times the PUE: what
/// `wattmesh miners sim` runs, and `wattmesh up` runs for each of its sites.
pub struct SiteSim {
    fleet: SimFleet,
    meter: SimMeter,
    load: SiteLoad,
    pue: f64,
}

impl SiteSim {
    /// Starts `units` × `model` (each on its own port) and a meter on `meter`.
    pub async fn start(
        model: &str,
        units: u32,
        options: SimOptions,
        meter: tokio::net::TcpListener,
        pue: f64,
    ) -> Result<SiteSim> {
        let model = wattmesh_domain::mining::asic_model(model).with_context(|| {
            let known: Vec<&str> = wattmesh_domain::mining::ASIC_MODELS
                .iter()
                .map(|m| m.name)
                .collect();
            format!("unknown model {model:?}; known: {}", known.join(", "))
        })?;
        if units == 0 {
            bail!("at least one miner is needed");
        }
        if !(pue >= 1.0 && pue.is_finite()) {
            bail!("the PUE must be at least 1");
        }
        let fleet = SimFleet::start_with(vec![UnitSpec::new(*model); units as usize], options)
            .await
            .context("starting the simulated miners")?;
        let load = SiteLoad::new(fleet.total_watts() / 1e3 * pue);
        let meter = SimMeter::start(meter, load.clone()).context("starting the simulated meter")?;
        Ok(SiteSim {
            fleet,
            meter,
            load,
            pue,
        })
    }

    pub fn miners(&self) -> &[SocketAddr] {
        self.fleet.addrs()
    }

    /// Writes the miners' addresses, one per line: the `@FILE` of `--miners`.
    pub fn write_list(&self, path: &std::path::Path) -> Result<()> {
        let lines: Vec<String> = self.miners().iter().map(ToString::to_string).collect();
        std::fs::write(path, lines.join("\n") + "\n")
            .with_context(|| format!("cannot write {}", path.display()))
    }

    pub fn meter_addr(&self) -> SocketAddr {
        self.meter.local_addr()
    }

    /// A line describing the miners: `N × MODEL on IP:FIRST-LAST` when their ports run on.
    pub fn describe(&self) -> String {
        let model = self.fleet.unit(0).map(|u| u.model).unwrap_or("miners");
        let addrs = self.fleet.addrs();
        let ports = || addrs.iter().map(SocketAddr::port);
        let (Some(first), Some(low), Some(high)) = (addrs.first(), ports().min(), ports().max())
        else {
            return format!("{} × {model}", addrs.len());
        };
        let one_ip = addrs.iter().all(|a| a.ip() == first.ip());
        if one_ip && usize::from(high - low) + 1 == addrs.len() {
            format!("{} × {model} on {}:{low}-{high}", addrs.len(), first.ip())
        } else {
            format!("{} × {model}", addrs.len())
        }
    }

    /// Keeps the meter on the miners' draw until `shutdown`, then stops both.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = tick.tick() => self.load.set_kw(self.fleet.total_watts() / 1e3 * self.pue),
                () = &mut shutdown => break,
            }
        }
        self.meter.shutdown().await;
        self.fleet.shutdown().await;
    }
}

async fn sim(args: MinerSimArgs) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(args.meter_listen)
        .await
        .with_context(|| format!("--meter-listen {}", args.meter_listen))?;
    let options = SimOptions {
        ip: args.ip,
        base_port: (args.base_port != 0).then_some(args.base_port),
        speed: 1.0,
    };
    let site = SiteSim::start(&args.model, args.units, options, listener, args.pue).await?;
    if let Some(path) = &args.list {
        site.write_list(path)?;
    }
    println!("{}", site.describe());
    println!("meter {} (Modbus TCP, unit 1)", site.meter_addr());
    println!("Ctrl-C to stop");
    site.run(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn miner_lists() {
        let addrs = parse_miners(&[
            "127.0.0.1:4028".into(),
            "10.0.0.2:40001-40003, 10.0.0.3:1".into(),
        ])
        .unwrap();
        let shown: Vec<String> = addrs.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "127.0.0.1:4028",
                "10.0.0.2:40001",
                "10.0.0.2:40002",
                "10.0.0.2:40003",
                "10.0.0.3:1"
            ]
        );
        for bad in [
            "",
            "127.0.0.1",
            "host:4028",
            "127.0.0.1:x",
            "127.0.0.1:5-4",
            "127.0.0.1:1-99999",
        ] {
            assert!(parse_miners(&[bad.into()]).is_err(), "{bad:?}");
        }
    }
}
