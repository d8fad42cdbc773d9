//! The P&L on the wire: the Bitcoin market inputs the control plane values mining at, the
//! terms a demand-response event pays on, and one P&L per site and for the fleet.
//!
//! - `POST /api/v1/market` ([`MarketSpec`]) → [`MarketSnapshot`], in force from now;
//!   `GET /api/v1/market` → `[MarketSnapshot]`, oldest first.
//! - `PUT /api/v1/dr-events/{id}/terms` ([`DrTerms`]) → [`DrTerms`]: what a DR event pays
//!   (grid programs often settle after the event, so terms are set apart from the event).
//! - `GET /api/v1/pnl?site=S&from=T&to=T&by=interval|day|month` → [`PnlReport`].
//!
//! Money is `Decimal` (a string in JSON); energy and hashrate are measurements (`f64`); BTC is
//! `Decimal` to the satoshi (8 places).

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /api/v1/market`: the Bitcoin market from now on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MarketSpec {
    /// BTC price, USD.
    #[schema(value_type = String, example = "68500")]
    pub btc_usd: Decimal,
    /// Network difficulty, e.g. 144.4e12.
    pub difficulty: f64,
    /// Block subsidy, BTC (3.125 since April 2024).
    pub subsidy_btc: f64,
    /// Average fees per block over the last 144 blocks, BTC.
    pub fees_btc_per_block: f64,
}

/// A stored market snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MarketSnapshot {
    /// Increases with every snapshot set.
    pub version: u64,
    #[schema(value_type = String)]
    pub btc_usd: Decimal,
    pub difficulty: f64,
    pub subsidy_btc: f64,
    pub fees_btc_per_block: f64,
    /// USD a day that 1 PH/s earns at this snapshot (FACTS.md's formula).
    pub hashprice_usd_per_ph_day: f64,
    pub effective_from: String,
    pub effective_from_ms: i64,
}

/// `PUT /api/v1/dr-events/{id}/terms`: what a DR event pays. Both absent: it pays nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DrTerms {
    /// Paid per MWh curtailed below the baseline (the last metered load before the start)
    /// while the event is held.
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "120")]
    pub pay_usd_per_mwh: Option<Decimal>,
    /// The peak (demand) charge the event avoids, USD per kW shed below the baseline at the
    /// highest load after the target was reached.
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "12.5")]
    pub peak_charge_usd_per_kw: Option<Decimal>,
}

/// One bucket of a P&L (or a total).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PnlLine {
    /// The bucket's start, RFC 3339 UTC.
    pub start: String,
    pub start_ms: i64,
    pub end_ms: i64,
    /// Energy at the meter, kWh.
    pub energy_kwh: f64,
    #[schema(value_type = String)]
    pub energy_cost_usd: Decimal,
    #[schema(value_type = String)]
    pub btc_mined: Decimal,
    /// The BTC mined at the BTC price in force when it was mined.
    #[schema(value_type = String)]
    pub mining_revenue_usd: Decimal,
    /// Tokens served and billed (prompt and completion).
    pub tokens: u64,
    #[schema(value_type = String)]
    pub inference_revenue_usd: Decimal,
    /// Energy curtailed below the baseline during held, paid DR events, kWh.
    pub curtailed_kwh: f64,
    #[schema(value_type = String)]
    pub dr_payment_usd: Decimal,
    #[schema(value_type = String)]
    pub avoided_peak_charge_usd: Decimal,
    /// Mining + inference + DR payment + avoided peak charge − energy cost.
    #[schema(value_type = String)]
    pub margin_usd: Decimal,
    /// Absent where no energy was booked.
    #[schema(value_type = Option<String>)]
    pub margin_usd_per_mwh: Option<Decimal>,
}

/// How a site's energy was booked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Metering {
    /// From the meter's cumulative register.
    pub counter_kwh: f64,
    /// From the meter's kW integrated over short gaps, where the register was missing.
    pub integrated_kwh: f64,
    /// Time in the range with no energy booked.
    pub unmetered_s: f64,
}

/// One site's P&L.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SitePnl {
    pub site: String,
    /// The site's fixed tariff: energy costs it wherever no imported price
    /// (`PUT /api/v1/sites/{name}/prices`) was in force.
    #[schema(value_type = String)]
    pub power_price_usd_per_mwh: Decimal,
    pub lines: Vec<PnlLine>,
    pub total: PnlLine,
    pub metering: Metering,
    /// What could not be booked and why.
    pub notes: Vec<String>,
}

/// BTC mined over the range, per site and for the fleet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Treasury {
    /// The newest market snapshot's price; absent without any.
    #[schema(value_type = Option<String>)]
    pub latest_btc_usd: Option<Decimal>,
    pub sites: Vec<TreasuryRow>,
    pub fleet: TreasuryRow,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TreasuryRow {
    /// The site, or `fleet`.
    pub name: String,
    #[schema(value_type = String)]
    pub btc_mined: Decimal,
    #[schema(value_type = String)]
    pub usd_when_mined: Decimal,
    #[schema(value_type = Option<String>)]
    pub usd_at_latest: Option<Decimal>,
}

/// `GET /api/v1/pnl`: the P&L of one site, or of the fleet with a P&L per site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PnlReport {
    /// The site asked for; absent for the fleet.
    pub site: Option<String>,
    /// `interval` (15 minutes), `day` or `month`, UTC.
    pub by: String,
    /// The range, widened to whole buckets.
    pub from: String,
    pub to: String,
    /// The site's lines, or the fleet's (the sum of its sites').
    pub lines: Vec<PnlLine>,
    pub total: PnlLine,
    pub sites: Vec<SitePnl>,
    pub treasury: Treasury,
}
