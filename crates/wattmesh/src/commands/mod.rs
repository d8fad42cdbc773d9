//! One function per subcommand; [`dispatch`] picks it.

pub mod deployments;
pub mod dr;
pub mod keys;
pub mod market;
pub mod miners;
pub mod models;
pub mod money;
pub mod planner;
pub mod plans;
pub mod pnl;
pub mod serve;
pub mod status;

use anyhow::Result;

use crate::cli::{Cli, Command};

pub async fn dispatch(cli: Cli) -> Result<()> {
    crate::run::init_logging(&cli.log, cli.log_format == "json");
    match cli.command {
        Command::Up(args) => crate::up::up(args).await,
        Command::Control(args) => serve::control(args).await,
        Command::Gateway(args) => serve::gateway(args).await,
        Command::Agent(args) => serve::agent(args).await,
        Command::Keys(cmd) => keys::run(cmd).await,
        Command::Tenants(cmd) => money::tenants(cmd).await,
        Command::Gateways(cmd) => money::gateways(cmd).await,
        Command::Prices(cmd) => money::prices(cmd).await,
        Command::Usage(args) => money::usage(args).await,
        Command::Invoices(cmd) => money::invoices(cmd).await,
        Command::Status(args) => status::run(args).await,
        Command::Models(cmd) => models::run(cmd).await,
        Command::Deployments(cmd) => deployments::run(cmd).await,
        Command::Planner(cmd) => planner::run(cmd).await,
        Command::Miners(cmd) => miners::run(cmd).await,
        Command::Dr(cmd) => dr::run(cmd).await,
        Command::Pnl(args) => pnl::run(args).await,
        Command::Market(cmd) => market::run(cmd).await,
    }
}

/// A table in the style of `kubectl get`: no borders, header in capitals.
pub fn table(header: &[&str]) -> comfy_table::Table {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING);
    t.set_header(header.iter().map(|h| h.to_uppercase()));
    t
}

pub fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}
