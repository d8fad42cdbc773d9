//! What a gateway watches from the control plane: the API keys it accepts with their tenants'
//! plans and limits, the prices in force, and the replicas each model is served by. The
//! gateway keeps the last copy it got, so it keeps serving when the control plane is
//! unreachable.
//!
//! `GET /api/v1/gateway/config?after=V&wait_s=S&instance=I` (gateway token), long-polled like
//! the agent's desired state; `instance` tells gateway processes apart, so the control plane
//! counts the live ones that share every rate limit.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use wattmesh_domain::ModelKind;

use crate::api::{BillingPlan, KeyPriority, Limits};

/// The header on which the gateway tells a replica a request's scheduling class
/// (`high`, `normal` or `low`); the engine schedules FCFS within each class.
pub const PRIORITY_HEADER: &str = "x-wattmesh-priority";

/// The deferrable (batch) class on [`PRIORITY_HEADER`] and in usage events: batch keys and
/// `service_tier: "flex"`.
pub const DEFERRABLE_PRIORITY: &str = "low";

/// The header on which a replica tells the gateway a streamed answer's prompt tokens, before
/// the first chunk: a stream cut before its usage chunk (the client went away) is still billed
/// its prompt. Never relayed to the client.
pub const PROMPT_TOKENS_HEADER: &str = "x-wattmesh-prompt-tokens";

/// Query of `GET /api/v1/gateway/config`: the long poll's, and which gateway process asks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatewayWatchQuery {
    /// The version the caller has; the call waits while the current one equals it.
    #[serde(default)]
    pub after: Option<u64>,
    /// Longest wait in seconds (capped by the server).
    #[serde(default)]
    pub wait_s: Option<u64>,
    /// This gateway process, picked at its start: processes sharing one token are counted
    /// apart. Without it the gateway's name stands for one process.
    #[serde(default)]
    pub instance: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GatewayConfig {
    pub version: u64,
    /// The gateway's own name, as its token says.
    pub gateway: String,
    /// How many gateways are live and share every rate limit: each enforces its
    /// `1/gateways` (0, from a control plane that does not count them, is taken as 1).
    #[serde(default)]
    pub gateways: u32,
    pub keys: Vec<GatewayKey>,
    pub tenants: Vec<GatewayTenant>,
    pub prices: Vec<GatewayPrice>,
    pub models: Vec<ModelRoute>,
}

/// An accepted API key, by the hex SHA-256 of its secret: the gateway never holds secrets.
/// Revoked keys are left out; expired ones too, and the gateway also checks `expires_at_ms`
/// itself so a key stops at its expiry, not at the next config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GatewayKey {
    pub id: String,
    pub tenant: String,
    pub secret_sha256: String,
    /// Models the key may call; `None` is every model.
    pub models: Option<Vec<String>>,
    pub expires_at_ms: Option<i64>,
    pub priority: KeyPriority,
    pub limits: Limits,
}

/// What admission needs of a tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GatewayTenant {
    pub name: String,
    pub plan: BillingPlan,
    pub limits: Limits,
}

/// The price in force for a model: the list price (`tenant` absent) or one tenant's override.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GatewayPrice {
    pub model: String,
    pub tenant: Option<String>,
    #[schema(value_type = String)]
    pub input_per_1m: Decimal,
    #[schema(value_type = String)]
    pub output_per_1m: Decimal,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ModelRoute {
    pub model: String,
    #[schema(value_type = String)]
    pub kind: ModelKind,
    /// Most tokens (prompt plus completion) one request can use: a request's worst case when
    /// it sets no `max_tokens`.
    pub context_tokens: u32,
    /// Replicas the control plane believes ready, with where they are.
    pub replicas: Vec<RouteReplica>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RouteReplica {
    pub id: String,
    pub deployment: String,
    /// Set for a dedicated deployment: only this tenant's keys reach the replica.
    pub dedicated_to: Option<String>,
    /// The bearer token the replica wants (see `agent::ReplicaReport::access_token`).
    pub access_token: Option<String>,
    pub endpoint: String,
    pub site: String,
    pub region: String,
    /// Its site is shedding inference for a demand-response event: interactive requests go
    /// elsewhere while anything else can take them, batch requests do not come here.
    #[serde(default)]
    pub shedding: bool,
}
