//! `wattmesh up`: the whole network on one machine — control plane, gateway and three
//! simulated sites, each with its own agent — wired over loopback HTTP exactly as they talk
//! across the WAN. First start fetches the default models and seeds a demo fleet (each site with
//! simulated miners, a meter and a power model the planner plans every interval); later starts
//! keep the state in the data directory.

use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use wattmesh_agent::Catalog;
use wattmesh_domain::market::NetworkSpec;
use wattmesh_domain::planner::{AsicGroupSpec, SiteSpec as PowerSiteSpec};
use wattmesh_proto::api::{
    ApiKey, ApiKeyCreated, ApiKeySpec, DeploymentSpec, FleetStatus, GatewayCreated, GatewaySpec,
    Model, ReplicaState, Site, Tenant, TenantSpec,
};
use wattmesh_proto::billing::{Price, PriceSpec};
use wattmesh_proto::plan::{PowerModel, PowerPlan};

use crate::cli::UpArgs;
use crate::client::{ControlClient, Created, read_secret};
use crate::commands::models::pull_all;
use crate::commands::serve::{SiteAgent, power_config, site_agent_config};
use crate::run::Services;

/// The simulated sites of `up`: three regions of the fleet, with plausible power prices.
const DEMO_SITES: [(&str, &str, &str); 3] = [
    ("georgia-1", "north-america", "42.0"),
    ("asuncion-1", "south-america", "33.5"),
    ("addis-1", "east-africa", "31.0"),
];
const DEMO_TENANT: &str = "demo";
const DEMO_KEY_NAME: &str = "demo";
const DEMO_REPLICAS: u32 = 2;
const NODE_MEMORY_BYTES: u64 = 4 << 30;
/// The gateway `up` runs, and where its token and usage spool live in the data directory.
const GATEWAY_NAME: &str = "local";
const GATEWAY_TOKEN_FILE: &str = "gateway-token";
const GATEWAY_SPOOL_DIR: &str = "gateway-spool";
/// The simulated miners `up` gives each site, and the meter's PUE over their draw.
const SIM_MINER_MODEL: &str = "Antminer S21";
const SIM_PUE: f64 = 1.05;
/// How often each site's agent reads its meter and miners.
const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// Where gateways before the segment-log spool kept it.
const OLD_GATEWAY_SPOOL_FILE: &str = "gateway-spool.db";
/// List prices per million prompt and completion tokens set on first start, so the demo's
/// usage has a cost; `wattmesh prices set` changes them.
const DEMO_PRICES: [(&str, &str, &str); 2] = [
    ("smollm2-135m-instruct", "0.10", "0.40"),
    ("all-minilm-l6-v2", "0.02", "0"),
];

pub async fn up(args: UpArgs) -> Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let catalog = Catalog::builtin();
    let models_dir = args.models_dir();
    pull_all(&catalog, &[], &models_dir).await?;

    let services = Services::new();
    let control = wattmesh_control::open(wattmesh_control::ControlConfig {
        data_dir: args.data_dir.clone(),
        heartbeat_timeout: Duration::from_secs(args.heartbeat_timeout_s),
        plan_interval: crate::commands::plans::interval(args.plan_interval_minutes)?,
    })
    .await
    .context("opening the control plane")?;
    let control_listener = bind(args.control_listen, "--control-listen").await?;
    let control_url = format!("http://{}", control_listener.local_addr()?);
    services.spawn(
        "control",
        control.run(control_listener, services.shutdown.child_token()),
    );

    let admin_token = read_secret(&args.data_dir.join("admin-token"))?;
    let bootstrap_token = read_secret(&args.data_dir.join("bootstrap-token"))?;
    let client = ControlClient::new(&control_url, admin_token)?;
    seed(&client, &catalog).await?;
    let demo_key = demo_key(&client).await?;

    // The gateway gets a credential of its own, good for its config and usage only.
    let gateway_token = gateway_token(&client, &args.data_dir).await?;
    let gateway_listener = bind(args.gateway_listen, "--gateway-listen").await?;
    let gateway_url = format!("http://{}", gateway_listener.local_addr()?);
    let metrics_listener = bind(args.gateway_metrics_listen, "--gateway-metrics-listen").await?;
    let metrics_url = format!("http://{}/metrics", metrics_listener.local_addr()?);
    let old_spool = args.data_dir.join(OLD_GATEWAY_SPOOL_FILE);
    if old_spool.exists() {
        tracing::warn!(
            path = %old_spool.display(),
            "an older gateway's SQLite usage spool is in the data directory; this gateway \
             spools to {GATEWAY_SPOOL_DIR}/ and does not read it (its usage reached the control \
             plane if that gateway's wattmesh_gateway_spool_depth was 0 when it stopped)"
        );
    }
    let mut options = wattmesh_gateway::GatewayOptions::new(
        control_url.clone(),
        gateway_token,
        args.data_dir.join(GATEWAY_SPOOL_DIR),
    );
    options.metrics_listener = Some(metrics_listener);
    services.spawn(
        "gateway",
        wattmesh_gateway::run(gateway_listener, options, services.shutdown.child_token()),
    );

    // Each site's simulated miners and meter, started before its agent, which drives them.
    let mut miner_lines = Vec::new();
    let mut powers = std::collections::BTreeMap::new();
    if args.miners_per_site > 0 {
        for (site, _, _) in DEMO_SITES {
            let meter = bind("127.0.0.1:0".parse()?, "the simulated meter").await?;
            let sim = crate::commands::miners::SiteSim::start(
                SIM_MINER_MODEL,
                args.miners_per_site,
                crate::commands::miners::SimOptions::default(),
                meter,
                SIM_PUE,
            )
            .await?;
            // The miners' addresses, for `wattmesh miners ... --miners @FILE`.
            let list = args.data_dir.join(format!("miners-{site}.txt"));
            sim.write_list(&list)?;
            miner_lines.push(format!(
                "  miners       {site}: {}, meter {} (wattmesh miners status --miners @{})",
                sim.describe(),
                sim.meter_addr(),
                list.display()
            ));
            powers.insert(
                site,
                power_config(sim.miners().to_vec(), Some(sim.meter_addr()), SAMPLE_EVERY),
            );
            let shutdown = services.shutdown.child_token();
            services.spawn("miners", async move {
                sim.run(shutdown.cancelled()).await;
                Ok::<(), std::convert::Infallible>(())
            });
        }
    }

    for (site, region, price) in DEMO_SITES {
        let config = site_agent_config(SiteAgent {
            control_url: control_url.clone(),
            bootstrap_token: bootstrap_token.clone(),
            site: site.to_owned(),
            region: region.to_owned(),
            power_price_usd_per_mwh: Some(price.parse().context("demo power price")?),
            node_memory_bytes: NODE_MEMORY_BYTES,
            data_dir: args.data_dir.clone(),
            models_dir: models_dir.clone(),
            catalog: catalog.clone(),
            power: powers.remove(site),
        });
        services.spawn(
            "agent",
            wattmesh_agent::run(config, services.shutdown.child_token()),
        );
    }

    println!("wattmesh is up");
    println!("  gateway      {gateway_url}/v1");
    println!("  control API  {control_url}/api/v1   (OpenAPI: {control_url}/api/openapi.json)");
    println!("  metrics      {metrics_url}   (gateway, Prometheus)");
    println!("  data         {}", args.data_dir.display());
    for line in &miner_lines {
        println!("{line}");
    }
    match &demo_key {
        DemoKey::New(secret) => {
            println!("  demo API key (tenant {DEMO_TENANT}; shown once, stored hashed):");
            println!("{secret}");
        }
        DemoKey::Existing(prefix) => println!(
            "  demo API key {prefix}… was shown on first start; a new one: \
             wattmesh keys create --tenant {DEMO_TENANT}"
        ),
    }

    if args.miners_per_site > 0 {
        let (client, shutdown) = (client.clone(), services.shutdown.clone());
        let miners = args.miners_per_site;
        services.tracker.spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                () = seed_power_models(&client, miners) => {}
            }
        });
    }
    let watch = report_readiness(client, services.shutdown.clone());
    services.tracker.spawn(watch);
    services.run_until_signal().await
}

async fn bind(addr: std::net::SocketAddr, flag: &str) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (change {flag})"))
}

/// The token of the gateway `up` runs: created on first start and kept (mode 0600) in the
/// data directory, as an agent keeps its own; rotated if the file was lost.
async fn gateway_token(client: &ControlClient, data_dir: &std::path::Path) -> Result<String> {
    let path = data_dir.join(GATEWAY_TOKEN_FILE);
    if let Ok(token) = read_secret(&path) {
        return Ok(token);
    }
    let spec = GatewaySpec {
        name: GATEWAY_NAME.to_owned(),
    };
    let created = match client
        .create::<_, GatewayCreated>("/gateways", &spec)
        .await?
    {
        Created::New(created) => created,
        Created::Exists => {
            client
                .post(
                    &format!("/gateways/{GATEWAY_NAME}/rotate"),
                    &serde_json::json!({}),
                )
                .await?
        }
    };
    crate::client::write_secret(&path, &created.token)?;
    Ok(created.token)
}

/// Creates the demo tenant, the catalog's models with list prices and one deployment per
/// model, unless a previous start already did.
async fn seed(client: &ControlClient, catalog: &Catalog) -> Result<()> {
    let _: Created<Tenant> = client
        .create(
            "/tenants",
            &TenantSpec {
                name: DEMO_TENANT.to_owned(),
                plan: Default::default(),
                contact: None,
                limits: Default::default(),
            },
        )
        .await?;
    for m in catalog.models() {
        let model = Model {
            name: m.name.clone(),
            kind: m.kind,
            artifact: m.name.clone(),
            memory_bytes: m.memory_bytes,
            context_tokens: wattmesh_proto::api::DEFAULT_CONTEXT_TOKENS,
        };
        if let Created::New(_) = client.create::<_, Model>("/models", &model).await?
            && let Some((_, input, output)) = DEMO_PRICES.iter().find(|p| p.0 == m.name)
        {
            let price = PriceSpec {
                model: m.name.clone(),
                tenant: None,
                input_per_1m: input.parse().context("demo price")?,
                output_per_1m: output.parse().context("demo price")?,
                effective_from: None,
            };
            let _: Price = client.post("/prices", &price).await?;
        }
        let deployment = DeploymentSpec {
            name: m.name.clone(),
            model: m.name.clone(),
            replicas: DEMO_REPLICAS,
            dedicated_to: None,
        };
        let _: Created<serde_json::Value> = client.create("/deployments", &deployment).await?;
    }
    Ok(())
}

enum DemoKey {
    New(String),
    Existing(String),
}

/// The demo key is created once; its secret exists only in that first start's output.
async fn demo_key(client: &ControlClient) -> Result<DemoKey> {
    let keys: Vec<ApiKey> = client.get("/keys").await?;
    if let Some(k) = keys
        .iter()
        .find(|k| k.tenant == DEMO_TENANT && k.name.as_deref() == Some(DEMO_KEY_NAME))
    {
        return Ok(DemoKey::Existing(k.prefix.clone()));
    }
    let spec = ApiKeySpec {
        tenant: DEMO_TENANT.to_owned(),
        name: Some(DEMO_KEY_NAME.to_owned()),
        models: None,
        expires_at: None,
        priority: Default::default(),
        limits: Default::default(),
    };
    let created: ApiKeyCreated = client.post("/keys", &spec).await?;
    Ok(DemoKey::New(created.secret))
}

/// Gives each demo site a power model of its simulated miners (unless one was set before) once
/// its agent has registered it, and plans it at once, so its agent applies a plan from the
/// start; the control plane plans it again at every interval.
async fn seed_power_models(client: &ControlClient, miners: u32) {
    for (site, _, _) in DEMO_SITES {
        // The agent registers its site; until then there is nothing to set a model on.
        while client.get::<Site>(&format!("/sites/{site}")).await.is_err() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        if client
            .get::<PowerModel>(&format!("/sites/{site}/power-model"))
            .await
            .is_err()
        {
            let spec = demo_power_model(site, miners);
            if let Err(e) = client
                .put::<_, PowerModel>(&format!("/sites/{site}/power-model"), &spec)
                .await
            {
                eprintln!("cannot set the power model of {site}: {e:#}");
                continue;
            }
        }
        match client
            .post::<_, PowerPlan>(&format!("/sites/{site}/plans"), &serde_json::json!({}))
            .await
        {
            Ok(plan) => {
                let hashing = plan.directive.units_hashing();
                println!(
                    "planned {site}: {hashing} of {miners} miners hashing, {:.0} kW at the meter (wattmesh planner plans {site})",
                    plan.directive.expected_meter_kw
                );
            }
            Err(e) => eprintln!("cannot plan {site}: {e:#}"),
        }
    }
}

/// A demo site's power model: its simulated miners behind the simulated meter's PUE, an
/// interconnect with room for all of them at their highest profile, and February 2026's
/// Bitcoin market (FACTS.md) until `wattmesh market set` says otherwise.
fn demo_power_model(site: &str, miners: u32) -> PowerSiteSpec {
    let max_kw =
        wattmesh_domain::mining::asic_model(SIM_MINER_MODEL).map_or(4.0, |m| m.max_w / 1_000.0);
    PowerSiteSpec {
        name: site.to_owned(),
        interconnect_kw: (f64::from(miners) * max_kw * SIM_PUE).ceil() + 10.0,
        pue: SIM_PUE,
        utc_offset_hours: 0,
        asic_groups: vec![AsicGroupSpec {
            name: None,
            model: SIM_MINER_MODEL.to_owned(),
            units: miners,
            ramp_up_s: None,
            hosting_usd_per_mwh: None,
        }],
        gpu_groups: Vec::new(),
        inference: Default::default(),
        demand: Default::default(),
        bitcoin: Some(NetworkSpec {
            btc_usd: 68_500.0,
            difficulty: 144.4e12,
            subsidy_btc: 3.125,
            fees_btc_per_block: 0.02,
        }),
        coincident_peak: None,
        dr_events: Vec::new(),
        curve_segments: wattmesh_domain::planner::DEFAULT_CURVE_SEGMENTS,
        baselines: Default::default(),
    }
}

/// Prints replica readiness as it changes, so the first start (models loading) is visible.
/// Replicas on sites that stopped heartbeating (`lost`) are counted apart: they wait for their
/// site, not for a model to load.
async fn report_readiness(client: ControlClient, shutdown: tokio_util::sync::CancellationToken) {
    let mut last = None;
    loop {
        if let Ok(status) = client.get::<FleetStatus>("/status").await {
            let count = |s: ReplicaState| status.replicas.iter().filter(|r| r.state == s).count();
            let (ready, lost) = (count(ReplicaState::Ready), count(ReplicaState::Lost));
            let live = status.replicas.len() - lost;
            let now = (ready, live, lost);
            if last != Some(now) && live > 0 {
                let lost_note = match lost {
                    0 => String::new(),
                    n => format!(" ({n} lost on sites that are not ready)"),
                };
                if ready == live {
                    println!("all {ready} replicas ready{lost_note}");
                } else {
                    println!("replicas ready: {ready}/{live}{lost_note}");
                }
                last = Some(now);
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}
