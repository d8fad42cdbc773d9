//! `wattmesh status`: sites, nodes, deployments and replicas as tables, or `--json`.

use anyhow::Result;
use wattmesh_proto::api::FleetStatus;

use crate::cli::StatusArgs;
use crate::client::ControlClient;
use crate::commands::{print_json, table};

pub async fn run(args: StatusArgs) -> Result<()> {
    let status: FleetStatus = ControlClient::from_target(&args.target)?
        .get("/status")
        .await?;
    if args.json {
        return print_json(&status);
    }
    print!("{}", render(&status));
    Ok(())
}

fn ready(ok: bool) -> String {
    if ok {
        "Ready".into()
    } else {
        "NotReady".into()
    }
}

pub fn render(status: &FleetStatus) -> String {
    let mut sites = table(&[
        "site",
        "region",
        "status",
        "power $/MWh",
        "meter kW",
        "miners",
        "last heartbeat",
    ]);
    for s in &status.sites {
        let (meter, miners) = match &s.power {
            Some(p) => (
                p.meter_kw
                    .map_or_else(|| "-".into(), |kw| format!("{kw:.1}")),
                format!(
                    "{} hashing, {} asleep of {}",
                    p.miners.hashing, p.miners.asleep, p.miners.total
                ),
            ),
            None => ("-".into(), "-".into()),
        };
        sites.add_row(vec![
            s.name.clone(),
            s.region.clone(),
            ready(s.ready),
            s.power_price_usd_per_mwh.to_string(),
            meter,
            miners,
            s.last_heartbeat.clone().unwrap_or_else(|| "never".into()),
        ]);
    }
    let mut nodes = table(&["node", "site", "region", "status", "memory"]);
    for n in &status.nodes {
        nodes.add_row(vec![
            n.name.clone(),
            n.site.clone(),
            n.region.clone(),
            match (ready(n.ready), n.parked) {
                // As `kubectl get nodes` shows a cordoned node: Ready,SchedulingDisabled.
                (status, true) => format!("{status},Parked"),
                (status, false) => status,
            },
            format!("{:.1} GiB", n.memory_bytes as f64 / (1u64 << 30) as f64),
        ]);
    }
    let mut deployments = table(&["deployment", "model", "replicas", "unschedulable"]);
    for d in &status.deployments {
        deployments.add_row(vec![
            d.name.clone(),
            d.model.clone(),
            d.replicas.to_string(),
            d.unschedulable.to_string(),
        ]);
    }
    let mut replicas = table(&[
        "replica",
        "deployment",
        "site",
        "region",
        "state",
        "endpoint",
    ]);
    for r in &status.replicas {
        replicas.add_row(vec![
            r.id.chars().take(8).collect(),
            r.deployment.clone(),
            r.site.clone(),
            r.region.clone(),
            match &r.message {
                Some(m) => format!("{} ({m})", r.state.as_str()),
                None => r.state.as_str().to_owned(),
            },
            r.endpoint.clone().unwrap_or_default(),
        ]);
    }
    format!("{sites}\n\n{nodes}\n\n{deployments}\n\n{replicas}\n")
}
