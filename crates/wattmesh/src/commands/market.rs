//! `wattmesh market`: the Bitcoin market inputs the P&L values mining at — set a snapshot in
//! force from now, show them all with their hashprice.

use anyhow::{Result, bail};
use rust_decimal::Decimal;
use wattmesh_proto::pnl::{MarketSnapshot, MarketSpec};

use super::{print_json, table};
use crate::cli::MarketCommand;
use crate::client::ControlClient;

pub async fn run(cmd: MarketCommand) -> Result<()> {
    match cmd {
        MarketCommand::Set(args) => {
            let btc_usd = match args.btc_usd.trim().parse::<Decimal>() {
                Ok(p) if p > Decimal::ZERO => p,
                _ => bail!(
                    "--btc-usd {:?}: give the BTC price in USD, like 68500",
                    args.btc_usd
                ),
            };
            let spec = MarketSpec {
                btc_usd,
                difficulty: args.difficulty,
                subsidy_btc: args.subsidy_btc,
                fees_btc_per_block: args.fees_btc_per_block,
            };
            let snap: MarketSnapshot = ControlClient::from_target(&args.target)?
                .post("/market", &spec)
                .await?;
            if args.json {
                return print_json(&snap);
            }
            println!(
                "market version {} in force from {}: BTC {} USD, hashprice {:.2} USD/PH/day",
                snap.version, snap.effective_from, snap.btc_usd, snap.hashprice_usd_per_ph_day
            );
            Ok(())
        }
        MarketCommand::Show { json, target } => {
            let all: Vec<MarketSnapshot> =
                ControlClient::from_target(&target)?.get("/market").await?;
            if json {
                return print_json(&all);
            }
            let mut t = table(&[
                "version",
                "from",
                "btc usd",
                "difficulty",
                "subsidy btc",
                "fees btc",
                "hashprice usd/ph/day",
            ]);
            for m in &all {
                t.add_row(vec![
                    m.version.to_string(),
                    m.effective_from.clone(),
                    m.btc_usd.to_string(),
                    format!("{:e}", m.difficulty),
                    m.subsidy_btc.to_string(),
                    m.fees_btc_per_block.to_string(),
                    format!("{:.2}", m.hashprice_usd_per_ph_day),
                ]);
            }
            println!("{t}");
            if all.is_empty() {
                println!("no market snapshot yet: set one with `wattmesh market set`");
            }
            Ok(())
        }
    }
}
