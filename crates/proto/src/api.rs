//! The operator REST API of the control plane, under `/api/v1`.
//!
//! Resources are named like Kubernetes objects: a region, site, node, model, deployment or
//! tenant is addressed by its unique `name`; replicas and API keys get generated ids. Every
//! error is an [`ApiError`] body with a stable `code`.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use wattmesh_domain::ModelKind;

/// The prefix every operator route lives under.
pub const API_PREFIX: &str = "/api/v1";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Region {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SiteSpec {
    pub name: String,
    pub region: String,
    /// What the site pays for power; cheaper sites win ties in placement.
    #[schema(value_type = String, example = "30.5")]
    pub power_price_usd_per_mwh: Decimal,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Site {
    pub name: String,
    pub region: String,
    #[schema(value_type = String)]
    pub power_price_usd_per_mwh: Decimal,
    /// True while the site's agent heartbeats on time.
    pub ready: bool,
    /// RFC 3339 time of the last heartbeat, if any.
    pub last_heartbeat: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    pub name: String,
    pub site: String,
    /// Memory available to replicas, in bytes.
    pub memory_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Node {
    pub name: String,
    pub site: String,
    pub region: String,
    pub memory_bytes: u64,
    pub ready: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Model {
    /// The name customers pass as `model`.
    pub name: String,
    #[schema(value_type = String, example = "chat")]
    pub kind: ModelKind,
    /// The catalog entry whose files the agents fetch and load.
    pub artifact: String,
    /// Memory one replica needs, in bytes.
    pub memory_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeploymentSpec {
    pub name: String,
    pub model: String,
    pub replicas: u32,
}

/// `PATCH /api/v1/deployments/{name}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeploymentPatch {
    pub replicas: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Deployment {
    pub name: String,
    pub model: String,
    pub replicas: u32,
    /// Replicas the scheduler could not place right now.
    pub unschedulable: u32,
}

/// Where a replica is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReplicaState {
    /// Placed; its agent has not reported it yet.
    Pending,
    /// The agent is fetching or loading the model.
    Starting,
    /// Serving; `endpoint` takes requests.
    Ready,
    /// The agent could not start it; `message` says why.
    Failed,
    /// Its site stopped heartbeating; its state is unknown.
    Lost,
}

impl ReplicaState {
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicaState::Pending => "pending",
            ReplicaState::Starting => "starting",
            ReplicaState::Ready => "ready",
            ReplicaState::Failed => "failed",
            ReplicaState::Lost => "lost",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Replica {
    pub id: String,
    pub deployment: String,
    pub model: String,
    pub node: String,
    pub site: String,
    pub region: String,
    pub state: ReplicaState,
    /// Base URL of the replica's OpenAI server, once it serves.
    pub endpoint: Option<String>,
    pub message: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Tenant {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySpec {
    pub tenant: String,
    /// A label for the operator; not secret.
    #[serde(default)]
    pub name: Option<String>,
}

/// An API key as listed: never the secret, only its id and visible prefix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ApiKey {
    pub id: String,
    pub tenant: String,
    pub name: Option<String>,
    /// The first characters of the key, to recognise it.
    pub prefix: String,
    pub created_at: String,
}

/// The answer to creating a key: the only time the secret is shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyCreated {
    #[serde(flatten)]
    pub key: ApiKey,
    pub secret: String,
}

/// `GET /api/v1/status`: everything `wattmesh status` prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FleetStatus {
    pub sites: Vec<Site>,
    pub nodes: Vec<Node>,
    pub deployments: Vec<Deployment>,
    pub replicas: Vec<Replica>,
}

/// The error body of every operator endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ApiError {
    pub error: ApiErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ApiErrorDetail {
    /// Stable, machine-readable: `bad_request`, `unauthorized`, `not_found`, `conflict`, …
    pub code: String,
    pub message: String,
}
