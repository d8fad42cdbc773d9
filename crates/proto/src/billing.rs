//! The operator's money API: the price book, tenants' ledgers, usage reports.
//!
//! Prices are versioned: setting a price adds a version in force from a time on, and usage is
//! rated at the version in force when it happened. A price for a tenant overrides the list
//! price of that model for that tenant (a contracted discount).

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The one currency prices and ledgers are kept in for now.
pub const CURRENCY: &str = "USD";

/// `POST /api/v1/prices`: a new version of a model's price, for everyone or for one tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PriceSpec {
    pub model: String,
    /// Absent: the list price; present: that tenant's override.
    #[serde(default)]
    pub tenant: Option<String>,
    /// Per million prompt tokens.
    #[schema(value_type = String, example = "0.10")]
    pub input_per_1m: Decimal,
    /// Per million completion tokens.
    #[schema(value_type = String, example = "0.40")]
    pub output_per_1m: Decimal,
    /// RFC 3339; absent means now. A time in the past is refused: usage already rated stays
    /// rated at the price it had.
    #[serde(default)]
    pub effective_from: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Price {
    /// Increases with every price set.
    pub version: u64,
    pub model: String,
    pub tenant: Option<String>,
    #[schema(value_type = String)]
    pub input_per_1m: Decimal,
    #[schema(value_type = String)]
    pub output_per_1m: Decimal,
    pub currency: String,
    pub effective_from: String,
    pub effective_from_ms: i64,
}

/// What a ledger entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LedgerKind {
    /// Credit bought.
    TopUp,
    /// Rated token usage (one entry per tenant per ingested batch).
    Usage,
}

impl LedgerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LedgerKind::TopUp => "top_up",
            LedgerKind::Usage => "usage",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "top_up" => Some(LedgerKind::TopUp),
            "usage" => Some(LedgerKind::Usage),
            _ => None,
        }
    }
}

/// One line of a tenant's ledger: credits positive, debits negative.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LedgerEntry {
    pub id: u64,
    pub tenant: String,
    pub kind: LedgerKind,
    #[schema(value_type = String)]
    pub amount: Decimal,
    /// The balance after this entry.
    #[schema(value_type = String)]
    pub balance: Decimal,
    /// Where it came from: a top-up's reference, or the usage batch.
    pub source: String,
    pub created_at: String,
}

/// `GET /api/v1/usage` rows: one per group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UsageRow {
    /// The group: a model, a key id, a site, a region, or a day (`YYYY-MM-DD`), by `group_by`.
    pub group: String,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    #[schema(value_type = String)]
    pub cost: Decimal,
    pub currency: String,
}

/// `POST /api/v1/prices/dedicated`: a new version of a dedicated deployment's price per
/// replica-hour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DedicatedPriceSpec {
    pub deployment: String,
    #[schema(value_type = String, example = "1.20")]
    pub per_replica_hour: Decimal,
    /// RFC 3339; absent means now. A time in the past is refused.
    #[serde(default)]
    pub effective_from: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DedicatedPrice {
    pub version: u64,
    pub deployment: String,
    #[schema(value_type = String)]
    pub per_replica_hour: Decimal,
    pub currency: String,
    pub effective_from: String,
    pub effective_from_ms: i64,
}

/// Whether an invoice can still change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum InvoiceStatus {
    /// The current month: usage still accrues.
    Open,
    /// A past month.
    Closed,
}

/// What an invoice line bills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LineKind {
    /// Tokens of a model served by a deployment.
    Tokens,
    /// A dedicated deployment's replica-hours.
    ReplicaHours,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InvoiceLine {
    pub kind: LineKind,
    pub model: Option<String>,
    pub deployment: String,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    #[schema(value_type = String)]
    pub replica_hours: Decimal,
    #[schema(value_type = String)]
    pub amount: Decimal,
}

/// A tenant's bill for one calendar month (UTC).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Invoice {
    pub tenant: String,
    /// `YYYY-MM`.
    pub period: String,
    pub from: String,
    pub to: String,
    pub status: InvoiceStatus,
    pub currency: String,
    pub lines: Vec<InvoiceLine>,
    #[schema(value_type = String)]
    pub total: Decimal,
}
