//! Command-line flags, declared with clap's derive API. Defaults match the README: gateway on
//! 127.0.0.1:8080, control API on 127.0.0.1:8081, state in ./wattmesh-data.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "wattmesh",
    version,
    about = "One AI inference network over power-constrained mining sites"
)]
pub struct Cli {
    /// Log filter, e.g. `info` or `wattmesh_gateway=debug` (also RUST_LOG).
    #[arg(long, global = true, env = "WATTMESH_LOG", default_value = "info")]
    pub log: String,
    /// Log format: text or json (one object per line, request ids included).
    #[arg(long, global = true, env = "WATTMESH_LOG_FORMAT", default_value = "text",
          value_parser = ["text", "json"])]
    pub log_format: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run everything on this machine: control plane, gateway and simulated sites.
    Up(UpArgs),
    /// Run the control plane alone.
    Control(ControlArgs),
    /// Run a gateway alone, against a control plane.
    Gateway(GatewayArgs),
    /// Run one site's agent as a process of its own.
    Agent(AgentArgs),
    /// Manage customers' API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Manage tenants: plans, limits, credit.
    #[command(subcommand)]
    Tenants(TenantsCommand),
    /// Manage gateway credentials.
    #[command(subcommand)]
    Gateways(GatewaysCommand),
    /// Manage the price book.
    #[command(subcommand)]
    Prices(PricesCommand),
    /// Show a tenant's usage and cost.
    Usage(UsageArgs),
    /// Show tenants' monthly invoices.
    #[command(subcommand)]
    Invoices(InvoicesCommand),
    /// Show sites, nodes, deployments and replicas.
    Status(StatusArgs),
    /// Fetch and list models.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Manage deployments.
    #[command(subcommand)]
    Deployments(DeploymentsCommand),
    /// The power planner: each site's power model and live plan, and backtests over price
    /// series offline.
    #[command(subcommand)]
    Planner(PlannerCommand),
    /// Miners on their own protocol (CGMiner API, LuxOS): status, sleep, wake, a simulator.
    #[command(subcommand)]
    Miners(MinersCommand),
    /// Grid demand-response events: shed a site's load, watch the meter follow.
    #[command(subcommand)]
    Dr(DrCommand),
    /// One P&L per site and for the fleet: energy and its cost, BTC mined, inference revenue,
    /// DR income, margin per MWh; `--treasury` for BTC mined.
    Pnl(PnlArgs),
    /// The Bitcoin market the P&L values mining at: BTC price, difficulty, subsidy, fees.
    #[command(subcommand)]
    Market(MarketCommand),
}

#[derive(Debug, Args)]
pub struct PnlArgs {
    /// One site (default the fleet, with a total per site).
    #[arg(long)]
    pub site: Option<String>,
    /// From this RFC 3339 time or date (default the start of this month, UTC).
    #[arg(long)]
    pub from: Option<String>,
    /// Until this RFC 3339 time or date, exclusive (default now).
    #[arg(long)]
    pub to: Option<String>,
    /// interval (15 minutes), day or month.
    #[arg(long, default_value = "day")]
    pub by: String,
    /// Show BTC mined per site and fleet, valued when mined and at the latest price.
    #[arg(long)]
    pub treasury: bool,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub target: ControlTarget,
}

#[derive(Debug, Subcommand)]
pub enum MarketCommand {
    /// Set the market from now on (a new snapshot; earlier ones keep valuing the past).
    Set(MarketSetArgs),
    /// Every snapshot, oldest first, with its hashprice.
    Show {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: ControlTarget,
    },
}

#[derive(Debug, Args)]
pub struct MarketSetArgs {
    /// BTC price, USD.
    #[arg(long)]
    pub btc_usd: String,
    /// Network difficulty, e.g. 144.4e12.
    #[arg(long)]
    pub difficulty: f64,
    /// Block subsidy, BTC.
    #[arg(long, default_value_t = 3.125)]
    pub subsidy_btc: f64,
    /// Average fees per block over the last 144 blocks, BTC.
    #[arg(long)]
    pub fees_btc_per_block: f64,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub target: ControlTarget,
}

#[derive(Debug, Subcommand)]
pub enum DrCommand {
    /// Start (or schedule) an event: the site's miners sleep, then inference is shed if the
    /// rest of its load is still above the target.
    Create(DrCreateArgs),
    /// List events, newest start last.
    List {
        /// Only this site's events.
        #[arg(long)]
        site: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: ControlTarget,
    },
    /// An event's record: target, metered load, miners' acknowledgements, whether it held.
    Show {
        id: String,
        /// Follow the event: print the meter and the miners every 2 s until it is over.
        #[arg(long, conflicts_with = "json")]
        watch: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: ControlTarget,
    },
    /// End an event now: the site's miners are woken in staggered waves.
    Cancel {
        id: String,
        #[command(flatten)]
        target: ControlTarget,
    },
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("ask").required(true).args(["down_to_kw", "by_pct"])))]
pub struct DrCreateArgs {
    pub site: String,
    /// Keep the site's metered load at or below this many kW.
    #[arg(long)]
    pub down_to_kw: Option<f64>,
    /// Shed this percent of the site's metered load now.
    #[arg(long)]
    pub by_pct: Option<f64>,
    /// When it starts: RFC 3339 (2026-12-02T18:00:00Z); now when absent.
    #[arg(long)]
    pub start: Option<String>,
    /// How long: `30m`, `2h`, or minutes.
    #[arg(long)]
    pub duration: String,
    /// Free text for the record, e.g. the grid operator's dispatch id.
    #[arg(long)]
    pub note: Option<String>,
    /// What the grid program pays per MWh curtailed below the baseline (set as the event's
    /// terms; the P&L books it once the event is held).
    #[arg(long)]
    pub pay_usd_per_mwh: Option<String>,
    /// The peak (demand) charge the event avoids, USD per kW shed.
    #[arg(long)]
    pub peak_charge_usd_per_kw: Option<String>,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub target: ControlTarget,
}

#[derive(Debug, Subcommand)]
pub enum MinersCommand {
    /// Each miner's power and hashrate, read from the miner itself.
    Status(MinerStatusArgs),
    /// Put miners to sleep (LuxOS `curtail sleep`), each confirmed by its own telemetry.
    Sleep(MinerOpArgs),
    /// Wake miners in staggered waves, each confirmed by its own telemetry.
    Wake(MinerOpArgs),
    /// Run simulated miners on their own ports and a simulated site meter, until Ctrl-C.
    Sim(MinerSimArgs),
}

/// Which miners, and how to talk to them.
#[derive(Debug, Args)]
pub struct MinerTargets {
    /// Miners: `IP:PORT`, or `IP:FIRST-LAST` for a run of ports; comma-separated or repeated.
    #[arg(long, required = true)]
    pub miners: Vec<String>,
    /// Miners talked to at once.
    #[arg(long, default_value_t = 64)]
    pub parallelism: usize,
    /// Seconds each exchange with a miner may take.
    #[arg(long, default_value_t = 5.0)]
    pub timeout_s: f64,
}

#[derive(Debug, Args)]
pub struct MinerStatusArgs {
    #[command(flatten)]
    pub target: MinerTargets,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct MinerOpArgs {
    #[command(flatten)]
    pub target: MinerTargets,
    /// Seconds a miner has, after acknowledging, to show the new state in its telemetry
    /// (longer than its ramp: an S21 takes 120 s from asleep to hashing).
    #[arg(long, default_value_t = 180.0)]
    pub confirm_within_s: f64,
    /// Miners woken together (wake only).
    #[arg(long, default_value_t = 50)]
    pub wave_size: usize,
    /// Seconds between waves (wake only).
    #[arg(long, default_value_t = 30.0)]
    pub wave_gap_s: f64,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct MinerSimArgs {
    #[arg(long, default_value_t = 100)]
    pub units: u32,
    /// An ASIC model of FACTS.md's table.
    #[arg(long, default_value = "Antminer S21")]
    pub model: String,
    #[arg(long, default_value = "127.0.0.1")]
    pub ip: std::net::IpAddr,
    /// Unit `i` listens on this port + `i`; 0 gives each unit a free port of the OS's choosing
    /// (with --list to learn them).
    #[arg(long, default_value_t = 40280)]
    pub base_port: u16,
    /// Write the miners' addresses to this file, one per line, for `--miners @FILE`.
    #[arg(long)]
    pub list: Option<PathBuf>,
    /// Where the simulated site meter serves Modbus TCP.
    #[arg(long, default_value = "127.0.0.1:1502")]
    pub meter_listen: SocketAddr,
    /// The meter reads the miners' draw times this (cooling, conversion).
    #[arg(long, default_value_t = 1.05)]
    pub pue: f64,
}

#[derive(Debug, Subcommand)]
pub enum PlannerCommand {
    /// Run the planner, the fleet tools' baselines (always mine, strike-price curtailment, a
    /// static GPU/ASIC split) and the perfect-foresight optimum over a price series for one
    /// site, and print each one's margin.
    Backtest(BacktestArgs),
    /// Write a synthetic electricity price series (CSV on stdout), shaped to ERCOT's
    /// statistics: a lognormal base, negative nights, spikes up to the $5,000 cap.
    Prices(PricesArgs),
    /// A site's power model (the same site file `backtest` reads): set or show it. The control
    /// plane plans every site with a model at the start of each interval.
    #[command(subcommand)]
    Model(PlannerModelCommand),
    /// A site's electricity prices as its market publishes them: import a CSV (the format
    /// `backtest --prices` reads) or show them. The planner prices what they cover and uses
    /// the site's fixed tariff elsewhere.
    #[command(subcommand, name = "site-prices")]
    SitePrices(SitePricesCommand),
    /// Plan a site now, for the interval at hand; its agent applies the plan.
    Run {
        site: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: ControlTarget,
    },
    /// A site's plans, newest first, with what its agent confirmed of each.
    Plans {
        site: String,
        /// How many (1–1000).
        #[arg(long, default_value_t = 10)]
        limit: u32,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: ControlTarget,
    },
}

#[derive(Debug, Subcommand)]
pub enum SitePricesCommand {
    /// Import a price CSV for a site (replacing the prices it overlaps) and replan the site.
    Import {
        site: String,
        /// CSV of `timestamp,usd_per_mwh` (unix seconds or RFC 3339 interval starts, 5 or 15
        /// minutes apart, no gaps).
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: ControlTarget,
    },
    /// Show a site's imported prices over a range.
    Show {
        site: String,
        /// RFC 3339 time or date [default: now].
        #[arg(long)]
        from: Option<String>,
        /// RFC 3339 time or date, exclusive [default: a day after --from].
        #[arg(long)]
        to: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: ControlTarget,
    },
}

#[derive(Debug, Subcommand)]
pub enum PlannerModelCommand {
    /// Set (or replace) a site's power model from a site file (TOML; its `name` must be the
    /// site's).
    Set {
        site: String,
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: ControlTarget,
    },
    /// Show a site's power model.
    Show {
        site: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: ControlTarget,
    },
}

#[derive(Debug, Args)]
pub struct BacktestArgs {
    /// Price series: CSV of `timestamp,usd_per_mwh` (unix seconds or RFC 3339, interval
    /// starts, 5 or 15 minutes apart, no gaps).
    #[arg(long)]
    pub prices: PathBuf,
    /// The site: interconnect, PUE, ASIC and GPU groups, demand, market (see the README).
    #[arg(long)]
    pub site: PathBuf,
    /// Intervals the planner looks ahead [default: one day].
    #[arg(long)]
    pub horizon: Option<usize>,
    /// Intervals between replans [default: one hour].
    #[arg(long)]
    pub step: Option<usize>,
    /// The optimum is solved over windows of this many intervals [default: one week]; a
    /// series no longer than one window gets the exact optimum.
    #[arg(long)]
    pub optimum_window: Option<usize>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PricesArgs {
    /// Seed of the generator: the same seed gives the same series.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long, default_value_t = 7)]
    pub days: u32,
    /// 5 or 15.
    #[arg(long, default_value_t = 15)]
    pub interval_minutes: u32,
    /// Start, unix seconds [default: 2024-01-01T00:00:00Z].
    #[arg(long, default_value_t = 1_704_067_200)]
    pub start_unix_s: i64,
}

/// Where the state lives and how to reach the control API.
#[derive(Debug, Clone, Args)]
pub struct ControlTarget {
    /// Data directory (holds the admin token written on first start).
    #[arg(long, env = "WATTMESH_DATA_DIR", default_value = "./wattmesh-data")]
    pub data_dir: PathBuf,
    /// Control plane URL.
    #[arg(
        long,
        env = "WATTMESH_CONTROL_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    pub control_url: String,
    /// Admin token; read from DATA_DIR/admin-token when absent.
    #[arg(long, env = "WATTMESH_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub gateway_listen: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub control_listen: SocketAddr,
    /// Where the gateway's Prometheus `/metrics` is served.
    #[arg(long, default_value = "127.0.0.1:8082")]
    pub gateway_metrics_listen: SocketAddr,
    #[arg(long, env = "WATTMESH_DATA_DIR", default_value = "./wattmesh-data")]
    pub data_dir: PathBuf,
    /// Where model files are cached (default DATA_DIR/models).
    #[arg(long)]
    pub models_dir: Option<PathBuf>,
    /// Seconds without a heartbeat before a site is marked not ready.
    #[arg(long, default_value_t = 10)]
    pub heartbeat_timeout_s: u64,
    /// Simulated miners per site (Antminer S21, each on its own port), with a simulated site
    /// meter; 0 for none.
    #[arg(long, default_value_t = 100)]
    pub miners_per_site: u32,
    /// Length of the live planner's interval, minutes: 5 or 15 (the markets' settlement
    /// intervals). Each site with a power model is planned at the start of every interval.
    #[arg(long, default_value_t = 15)]
    pub plan_interval_minutes: u32,
}

#[derive(Debug, Args)]
pub struct ControlArgs {
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,
    #[arg(long, env = "WATTMESH_DATA_DIR", default_value = "./wattmesh-data")]
    pub data_dir: PathBuf,
    #[arg(long, default_value_t = 10)]
    pub heartbeat_timeout_s: u64,
    /// Length of the live planner's interval, minutes: 5 or 15 (the markets' settlement
    /// intervals). Each site with a power model is planned at the start of every interval.
    #[arg(long, default_value_t = 15)]
    pub plan_interval_minutes: u32,
}

#[derive(Debug, Args)]
pub struct GatewayArgs {
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Control plane URL.
    #[arg(
        long,
        env = "WATTMESH_CONTROL_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    pub control_url: String,
    /// This gateway's token, from `wattmesh gateways create NAME`.
    #[arg(long, env = "WATTMESH_GATEWAY_TOKEN", hide_env_values = true)]
    pub token: String,
    /// The usage spool, a directory (made if missing; its parent must exist); usage waits
    /// here until the control plane has it. Keep it on durable storage: what is in it is
    /// unbilled money. One gateway per spool.
    #[arg(
        long,
        env = "WATTMESH_SPOOL",
        default_value = "./wattmesh-gateway-spool"
    )]
    pub spool: PathBuf,
    /// Where Prometheus scrapes `/metrics` (kept off the customers' port).
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub metrics_listen: SocketAddr,
    #[command(flatten)]
    pub serving: GatewayServing,
}

/// How the gateway treats clients: sizes, timeouts, connections.
#[derive(Debug, Clone, Args)]
pub struct GatewayServing {
    /// Largest request body accepted, in bytes (at most 4 MiB: replicas take twice that).
    #[arg(long, default_value_t = 4 << 20)]
    pub max_body_bytes: usize,
    /// Seconds a client may take to send a request's headers.
    #[arg(long, default_value_t = 10)]
    pub header_timeout_s: u64,
    /// Seconds a client may take to send a request's body (408 after).
    #[arg(long, default_value_t = 30)]
    pub body_timeout_s: u64,
    /// Seconds a kept-alive connection may sit idle.
    #[arg(long, default_value_t = 60)]
    pub idle_timeout_s: u64,
    /// Connections served at once; more wait in the listen backlog.
    #[arg(long, default_value_t = 1024)]
    pub max_connections: usize,
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    #[arg(
        long,
        env = "WATTMESH_CONTROL_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    pub control_url: String,
    /// Site name, unique in the fleet.
    #[arg(long)]
    pub site: String,
    /// Region the site belongs to.
    #[arg(long)]
    pub region: String,
    /// The site's power price in USD/MWh.
    #[arg(long)]
    pub power_price: Option<String>,
    /// Data directory: its bootstrap-token file is read when --bootstrap-token is absent, and
    /// the agent keeps its state under DATA_DIR/agents/SITE.
    #[arg(long, env = "WATTMESH_DATA_DIR", default_value = "./wattmesh-data")]
    pub data_dir: PathBuf,
    /// Where model files are cached (default DATA_DIR/models).
    #[arg(long)]
    pub models_dir: Option<PathBuf>,
    #[arg(long, env = "WATTMESH_BOOTSTRAP_TOKEN", hide_env_values = true)]
    pub bootstrap_token: Option<String>,
    /// Memory this site's node offers to replicas, in GiB.
    #[arg(long, default_value_t = 4)]
    pub node_memory_gib: u64,
    /// The site's miners, driven for demand-response events: `IP:PORT`, `IP:FIRST-LAST`,
    /// comma-separated or repeated, or `@FILE` with one or more per line.
    #[arg(long)]
    pub miners: Vec<String>,
    /// The site meter (Modbus TCP, unit 1), read for every power sample.
    #[arg(long)]
    pub meter: Option<SocketAddr>,
    /// Seconds between two power samples (meter and every miner's telemetry).
    #[arg(long, default_value_t = 2.0)]
    pub sample_every_s: f64,
    /// The site power model's GPU group this host's NVIDIA GPUs belong to: the live plan caps
    /// them (through NVML) at that group's planned share [default: the plan's only group].
    #[arg(long)]
    pub gpu_group: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create an API key for an existing tenant; the key is the last line of stdout.
    Create {
        #[arg(long)]
        tenant: String,
        /// A label for the key.
        #[arg(long)]
        name: Option<String>,
        /// A model the key may call (repeat for several; default every model).
        #[arg(long = "model")]
        models: Vec<String>,
        /// When the key stops working (RFC 3339, or a date).
        #[arg(long)]
        expires_at: Option<String>,
        /// Scheduling class: interactive or batch.
        #[arg(long, default_value = "interactive")]
        priority: String,
        #[command(flatten)]
        limits: LimitArgs,
        #[command(flatten)]
        target: ControlTarget,
    },
    /// List API keys (never their secrets).
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: ControlTarget,
    },
    /// Revoke an API key by its id or prefix, as `keys list` shows them.
    Revoke {
        id: String,
        #[command(flatten)]
        target: ControlTarget,
    },
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print the raw JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub target: ControlTarget,
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Fetch model files from the catalog (all when no name is given), checked by sha256.
    Pull {
        names: Vec<String>,
        #[arg(long, env = "WATTMESH_DATA_DIR", default_value = "./wattmesh-data")]
        data_dir: PathBuf,
        /// Where model files are cached (default DATA_DIR/models).
        #[arg(long)]
        models_dir: Option<PathBuf>,
    },
    /// List the models of the built-in catalog.
    Catalog {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum DeploymentsCommand {
    /// Create a deployment of a model.
    Create {
        name: String,
        #[arg(long)]
        model: String,
        #[arg(long, default_value_t = 1)]
        replicas: u32,
        /// Dedicate it to a tenant: only its keys reach these replicas, billed per replica-hour
        /// (`wattmesh prices set-dedicated`), used or not.
        #[arg(long)]
        dedicated_to: Option<String>,
        #[command(flatten)]
        target: ControlTarget,
    },
    /// List deployments.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: ControlTarget,
    },
    /// Set a deployment's replica count.
    Scale {
        name: String,
        #[arg(long)]
        replicas: u32,
        #[command(flatten)]
        target: ControlTarget,
    },
}

impl UpArgs {
    pub fn models_dir(&self) -> PathBuf {
        self.models_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("models"))
    }
}

impl AgentArgs {
    pub fn models_dir(&self) -> PathBuf {
        self.models_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("models"))
    }
}

/// Rate limits; an absent one is no limit.
#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Requests per minute.
    #[arg(long)]
    pub rpm: Option<u32>,
    /// Tokens per minute (prompt plus completion).
    #[arg(long)]
    pub tpm: Option<u32>,
    /// Requests in flight at once.
    #[arg(long)]
    pub concurrency: Option<u32>,
}

#[derive(Debug, Subcommand)]
pub enum TenantsCommand {
    /// Create a tenant.
    Create {
        name: String,
        /// pay-as-you-go or prepaid.
        #[arg(long, default_value = "pay-as-you-go")]
        plan: String,
        /// Who to reach about the account.
        #[arg(long)]
        contact: Option<String>,
        #[command(flatten)]
        limits: LimitArgs,
        #[command(flatten)]
        target: ControlTarget,
    },
    /// List tenants with their balances.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: ControlTarget,
    },
    /// Show a tenant and its ledger.
    Show {
        name: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: ControlTarget,
    },
    /// Add prepaid credit.
    TopUp {
        name: String,
        /// Amount in USD, e.g. 25.00.
        amount: String,
        /// The payment's reference; a repeated one is refused, so a retry never credits twice.
        #[arg(long)]
        reference: Option<String>,
        #[command(flatten)]
        target: ControlTarget,
    },
    /// Replace a tenant's rate limits (the flags given; none lifts them all).
    Limits {
        name: String,
        #[command(flatten)]
        limits: LimitArgs,
        #[command(flatten)]
        target: ControlTarget,
    },
}

#[derive(Debug, Subcommand)]
pub enum GatewaysCommand {
    /// Create a gateway credential; the token is the last line of stdout.
    Create {
        name: String,
        #[command(flatten)]
        target: ControlTarget,
    },
    /// List gateway credentials.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: ControlTarget,
    },
    /// Replace a gateway's token (the old one stops working now); the new token is the last
    /// line of stdout.
    Rotate {
        name: String,
        #[command(flatten)]
        target: ControlTarget,
    },
}

#[derive(Debug, Subcommand)]
pub enum PricesCommand {
    /// Set a model's price per million tokens, from now or from a later time.
    Set {
        model: String,
        /// USD per million prompt tokens.
        #[arg(long)]
        input: String,
        /// USD per million completion tokens.
        #[arg(long)]
        output: String,
        /// A tenant's own price (a contracted discount) instead of the list price.
        #[arg(long)]
        tenant: Option<String>,
        /// RFC 3339 time or date it takes effect (default now).
        #[arg(long)]
        from: Option<String>,
        #[command(flatten)]
        target: ControlTarget,
    },
    /// Set a dedicated deployment's price per replica-hour, from now or from a later time.
    SetDedicated {
        deployment: String,
        /// USD per replica-hour.
        #[arg(long)]
        per_replica_hour: String,
        /// RFC 3339 time or date it takes effect (default now).
        #[arg(long)]
        from: Option<String>,
        #[command(flatten)]
        target: ControlTarget,
    },
    /// List every price version (token prices, then replica-hour prices).
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: ControlTarget,
    },
}

#[derive(Debug, Subcommand)]
pub enum InvoicesCommand {
    /// A tenant's monthly invoices, newest first.
    List {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: ControlTarget,
    },
    /// One month's invoice with its lines.
    Show {
        #[arg(long)]
        tenant: String,
        /// The month, YYYY-MM.
        period: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: ControlTarget,
    },
}

#[derive(Debug, Args)]
pub struct UsageArgs {
    /// Tenant (default every tenant).
    #[arg(long)]
    pub tenant: Option<String>,
    /// From this RFC 3339 time or date (default the start of this month, UTC).
    #[arg(long)]
    pub from: Option<String>,
    /// Until this RFC 3339 time or date, exclusive (default now).
    #[arg(long)]
    pub to: Option<String>,
    /// model, key, site, region or day.
    #[arg(long)]
    pub group_by: Option<String>,
    #[arg(long, conflicts_with = "json")]
    pub csv: bool,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub target: ControlTarget,
}
