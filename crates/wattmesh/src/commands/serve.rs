//! The single-role servers: `wattmesh control`, `wattmesh gateway`, `wattmesh agent`. Each is
//! the same code `up` runs in-process, started alone so a role can live (and die) on its own.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::net::TcpListener;
use wattmesh_agent::{AgentConfig, Catalog};

use crate::cli::{AgentArgs, ControlArgs, GatewayArgs, GatewayServing};
use crate::client::read_secret;
use crate::run::Services;

pub async fn control(args: ControlArgs) -> Result<()> {
    let plan_interval = crate::commands::plans::interval(args.plan_interval_minutes)?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let control = wattmesh_control::open(wattmesh_control::ControlConfig {
        data_dir: args.data_dir.clone(),
        heartbeat_timeout: Duration::from_secs(args.heartbeat_timeout_s),
        plan_interval,
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
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let metrics = TcpListener::bind(args.metrics_listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (--metrics-listen)",
                args.metrics_listen
            )
        })?;
    println!("gateway on http://{}/v1", listener.local_addr()?);
    println!(
        "gateway metrics on http://{}/metrics",
        metrics.local_addr()?
    );
    let mut options =
        wattmesh_gateway::GatewayOptions::new(args.control_url.clone(), args.token, args.spool);
    args.serving.apply(&mut options)?;
    options.metrics_listener = Some(metrics);
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
    let power = if args.miners.is_empty() && args.meter.is_none() {
        if args.gpu_group.is_some() {
            bail!(
                "--gpu-group needs --meter or --miners: an agent applies power plans only at a \
                 site whose power it reads"
            );
        }
        None
    } else {
        let miners = if args.miners.is_empty() {
            Vec::new()
        } else {
            super::miners::parse_miners(&args.miners)?
        };
        let every = Duration::try_from_secs_f64(args.sample_every_s)
            .ok()
            .filter(|d| !d.is_zero())
            .with_context(|| {
                format!(
                    "--sample-every-s must be a positive number of seconds, not {}",
                    args.sample_every_s
                )
            })?;
        Some(wattmesh_agent::PowerConfig {
            gpu_group: args.gpu_group.clone(),
            ..power_config(miners, args.meter, every)
        })
    };
    let config = site_agent_config(SiteAgent {
        control_url: args.control_url.clone(),
        bootstrap_token,
        site: args.site.clone(),
        region: args.region.clone(),
        power_price_usd_per_mwh: power_price,
        node_memory_bytes: args.node_memory_gib << 30,
        data_dir: args.data_dir.clone(),
        models_dir: args.models_dir(),
        catalog: Catalog::builtin(),
        power,
    });
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

/// What differs between one site's agent and the next.
pub struct SiteAgent {
    pub control_url: String,
    pub bootstrap_token: String,
    pub site: String,
    pub region: String,
    pub power_price_usd_per_mwh: Option<rust_decimal::Decimal>,
    pub node_memory_bytes: u64,
    pub data_dir: std::path::PathBuf,
    pub models_dir: std::path::PathBuf,
    pub catalog: Catalog,
    /// The site's miners and meter, if it has any.
    pub power: Option<wattmesh_agent::PowerConfig>,
}

/// One site's agent configuration, the same for `wattmesh agent` and the sites of `up`: one
/// CPU node named after the site, state under DATA_DIR/agents/SITE, a 2 s heartbeat.
pub fn site_agent_config(s: SiteAgent) -> AgentConfig {
    AgentConfig {
        node_name: format!("{}-cpu-0", s.site),
        state_dir: s.data_dir.join("agents").join(&s.site),
        heartbeat_interval: Duration::from_secs(2),
        control_url: s.control_url,
        bootstrap_token: s.bootstrap_token,
        site: s.site,
        region: s.region,
        power_price_usd_per_mwh: s.power_price_usd_per_mwh,
        node_memory_bytes: s.node_memory_bytes,
        models_dir: s.models_dir,
        catalog: s.catalog,
        power: s.power,
    }
}

/// The power part of an agent's configuration: its miners and meter, sampled every
/// `sample_every` (2 s for `up` and by default).
pub fn power_config(
    miners: Vec<std::net::SocketAddr>,
    meter: Option<std::net::SocketAddr>,
    sample_every: Duration,
) -> wattmesh_agent::PowerConfig {
    wattmesh_agent::PowerConfig {
        miners,
        meter,
        sample_every,
        fleet: wattmesh_agent::FleetOptions::default(),
        gpu_group: None,
    }
}

impl GatewayServing {
    /// Puts the flags into `options`, refusing a body limit the replicas would not take.
    pub fn apply(&self, options: &mut wattmesh_gateway::GatewayOptions) -> Result<()> {
        if self.max_body_bytes > wattmesh_gateway::DEFAULT_MAX_BODY_BYTES {
            anyhow::bail!(
                "--max-body-bytes {} is above {}: replicas must take every body the gateway \
                 admits",
                self.max_body_bytes,
                wattmesh_gateway::DEFAULT_MAX_BODY_BYTES
            );
        }
        if self.max_connections == 0 {
            anyhow::bail!("--max-connections must be at least 1");
        }
        options.max_body_bytes = self.max_body_bytes;
        options.header_read_timeout = Duration::from_secs(self.header_timeout_s);
        options.body_read_timeout = Duration::from_secs(self.body_timeout_s);
        options.idle_timeout = Duration::from_secs(self.idle_timeout_s);
        options.max_connections = self.max_connections;
        Ok(())
    }
}
