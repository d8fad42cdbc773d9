//! What gateways send the control plane about money: usage events (one per finished request,
//! shipped in batches, at least once) and credit leases (the slice of a prepaid tenant's credit
//! a gateway may spend without asking).
//!
//! - `POST /api/v1/usage/batches` (gateway token): a [`UsageBatch`] → [`IngestReceipt`]. Ingest
//!   is idempotent by event id: a replayed or overlapping batch adds nothing twice.
//! - `POST /api/v1/gateway/leases` (gateway token): a [`LeaseRequest`] → [`LeaseGrant`].

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The answer reached its end.
    Completed,
    /// The client went away before the end.
    Cancelled,
    /// The replica failed, or answered an error.
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Cancelled => "cancelled",
            Outcome::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "completed" => Some(Outcome::Completed),
            "cancelled" => Some(Outcome::Cancelled),
            "failed" => Some(Outcome::Failed),
            _ => None,
        }
    }
}

/// One finished request as its gateway saw it. The id is made by the gateway when the request
/// starts; it is what makes ingest idempotent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageEvent {
    pub id: String,
    /// The `x-request-id` the client got.
    pub request_id: String,
    pub tenant: String,
    pub key_id: String,
    pub model: String,
    /// Empty when no replica was reached.
    pub deployment: String,
    pub replica: String,
    pub site: String,
    pub region: String,
    /// The engine class it ran in: `high`, `normal` or `low`.
    pub priority: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Unix milliseconds when the gateway accepted the request.
    pub started_at_ms: i64,
    /// Milliseconds to the first byte of the answer, if one came.
    pub ttft_ms: Option<u64>,
    pub duration_ms: u64,
    /// The HTTP status the client got (0 when no answer was sent).
    pub status: u16,
    pub outcome: Outcome,
}

/// A gateway's batch of events, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageBatch {
    pub events: Vec<UsageEvent>,
}

/// What ingest did with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct IngestReceipt {
    /// Events stored and rated now.
    pub accepted: u64,
    /// Events seen before (by id), skipped.
    pub duplicates: u64,
}

/// A gateway asking for more of a prepaid tenant's credit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseRequest {
    pub tenant: String,
    /// Credit wanted beyond what the gateway holds unspent: at least what the request
    /// waiting on it lacks. The control plane may grant more (fewer round trips) or less
    /// (all that is left).
    #[schema(value_type = String)]
    pub need: Decimal,
}

/// The control plane's answer: the gateway's running total of credit granted for the tenant.
/// Totals, not increments, so a lost or repeated answer cannot be counted twice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LeaseGrant {
    pub tenant: String,
    /// Everything ever granted to this gateway for this tenant.
    #[schema(value_type = String)]
    pub granted_total: Decimal,
    /// Of that, what ingested usage from this gateway has already used. It lags what the
    /// gateway has spent (usage not shipped yet); a gateway that lost its own count takes it
    /// as a floor.
    #[schema(value_type = String)]
    pub spent_total: Decimal,
}
