//! The single-role servers: `wattmesh control`, `wattmesh gateway`, `wattmesh agent`. Each is
//! the same code `up` runs in-process, started alone so a role can live (and die) on its own.

use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use wattmesh_agent::{AgentConfig, Catalog};

use crate::cli::{AgentArgs, ControlArgs, GatewayArgs};
use crate::client::{admin_token, read_secret};
use crate::run::Services;

pub async fn control(args: ControlArgs) -> Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let control = wattmesh_control::open(wattmesh_control::ControlConfig {
        data_dir: args.data_dir.clone(),
        heartbeat_timeout: Duration::from_secs(args.heartbeat_timeout_s),
    })
    .await
    .context("opening the control plane")?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    println!("control API on http://{}/api/v1", listener.local_addr()?);
    let services = Services::new();
    services.spawn(
        "control",
        control.run(listener, services.shutdown.child_token()),
    );
    services.run_until_signal().await
}

pub async fn gateway(args: GatewayArgs) -> Result<()> {
    let token = admin_token(&args.target)?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    println!("gateway on http://{}/v1", listener.local_addr()?);
    let options = wattmesh_gateway::GatewayOptions::new(args.target.control_url.clone(), token);
    let services = Services::new();
    services.spawn(
        "gateway",
        wattmesh_gateway::run(listener, options, services.shutdown.child_token()),
    );
    services.run_until_signal().await
}

pub async fn agent(args: AgentArgs) -> Result<()> {
    let bootstrap_token = match &args.bootstrap_token {
        Some(t) => t.clone(),
        None => read_secret(&args.data_dir.join("bootstrap-token")).context(
            "no bootstrap token: pass --bootstrap-token, or --data-dir of the control plane",
        )?,
    };
    let power_price = match &args.power_price {
        Some(p) => Some(
            p.parse()
                .with_context(|| format!("--power-price {p:?} is not a number"))?,
        ),
        None => None,
    };
    let config = AgentConfig {
        control_url: args.control_url.clone(),
        bootstrap_token,
        site: args.site.clone(),
        region: args.region.clone(),
        power_price_usd_per_mwh: power_price,
        node_name: format!("{}-cpu-0", args.site),
        node_memory_bytes: args.node_memory_gib << 30,
        models_dir: args.models_dir(),
        state_dir: args.data_dir.join("agents").join(&args.site),
        heartbeat_interval: Duration::from_secs(2),
        catalog: Catalog::builtin(),
    };
    println!(
        "agent for site {} ({}) → {}",
        args.site, args.region, args.control_url
    );
    let services = Services::new();
    services.spawn(
        "agent",
        wattmesh_agent::run(config, services.shutdown.child_token()),
    );
    services.run_until_signal().await
}
