//! The agent protocol: how a site agent joins the fleet, reports what it observes, and learns
//! what it should run.
//!
//! 1. `POST /api/v1/agent/register` with the fleet's bootstrap token → a per-agent token.
//! 2. `POST /api/v1/agent/heartbeat` with the agent token, every few seconds: observed state.
//! 3. `GET /api/v1/agent/desired?after=V&wait_s=S` with the agent token: long-polls until the
//!    site's desired state has a version other than `V` (or `S` seconds pass), then returns it.
//! 4. `POST /api/v1/agent/dr-events/{id}/acks` with the agent token: how the site's miners
//!    answered a demand-response event (see `energy`).
//! 5. `POST /api/v1/agent/plans/{id}/report` with the agent token: how applying the site's
//!    power plan went (see `plan`).
//!
//! The agent keeps its last desired state when the control plane is unreachable (static
//! stability) and converges its replicas to it.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use wattmesh_domain::ModelKind;

use crate::api::ReplicaState;
use crate::energy::{DrDirective, PowerSample};
use crate::plan::PlanDirective;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    pub site: String,
    pub region: String,
    /// Defaults to the site's stored price, or 0 for a new site.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub power_price_usd_per_mwh: Option<Decimal>,
    pub nodes: Vec<NodeReport>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RegisterResponse {
    /// Bearer token for every later call of this agent. Shown once; stored hashed.
    pub agent_token: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeReport {
    pub name: String,
    pub memory_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    pub nodes: Vec<NodeReport>,
    pub replicas: Vec<ReplicaReport>,
    /// The desired-state version the agent has converged to.
    pub desired_version: u64,
    /// The site's meter and miners, when the agent drives any: the newest sample.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power: Option<PowerSample>,
    /// Samples taken before `power` that the control plane has not taken yet (it was away,
    /// or heartbeats came slower than samples), oldest first; at most
    /// [`MAX_EARLIER_POWER`] a heartbeat.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier_power: Vec<PowerSample>,
}

/// Most earlier samples one heartbeat carries: a backlog drains over several heartbeats.
pub const MAX_EARLIER_POWER: usize = 300;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplicaReport {
    pub id: String,
    pub state: ReplicaState,
    /// Base URL of its OpenAI server when ready, e.g. `http://127.0.0.1:41234`.
    pub endpoint: Option<String>,
    pub message: Option<String>,
    /// The bearer token the replica's server wants on every `/v1` request, when ready: the
    /// agent made it for this run of the replica and tells only the control plane, which
    /// keeps it in memory and hands it to gateways, so nobody else can reach the replica
    /// around the gateway's auth and metering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HeartbeatAck {
    /// The current desired-state version, so an agent that missed a change re-fetches.
    pub desired_version: u64,
}

/// What one site should run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DesiredState {
    pub version: u64,
    pub replicas: Vec<ReplicaAssignment>,
    /// The site's current or next demand-response event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dr: Option<DrDirective>,
    /// The site's power plan for the current interval, when it has a power model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<PlanDirective>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReplicaAssignment {
    pub id: String,
    pub deployment: String,
    pub node: String,
    /// The name the replica serves under (the customer's `model`).
    pub model: String,
    #[schema(value_type = String)]
    pub kind: ModelKind,
    /// The catalog entry of the model's files.
    pub artifact: String,
}

/// Query of `GET /api/v1/agent/desired`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WatchQuery {
    /// The version the caller has; the call waits while the current one equals it.
    #[serde(default)]
    pub after: Option<u64>,
    /// Longest wait in seconds (capped by the server).
    #[serde(default)]
    pub wait_s: Option<u64>,
}
