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
    /// The last power sample its agent reported: meter and miners.
    #[serde(default)]
    pub power: Option<crate::energy::PowerSample>,
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
    /// The site's power plan for this interval has the node off: no replica is placed here,
    /// and those that ran here move to nodes that are on (unless nowhere else takes them).
    pub parked: bool,
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
    /// Most tokens (prompt plus completion) one request can use.
    #[serde(default = "default_context_tokens")]
    pub context_tokens: u32,
}

/// The embedded engine's usable context per request.
pub const DEFAULT_CONTEXT_TOKENS: u32 = 2048;

fn default_context_tokens() -> u32 {
    DEFAULT_CONTEXT_TOKENS
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeploymentSpec {
    pub name: String,
    pub model: String,
    pub replicas: u32,
    /// A tenant's own replicas: only its keys reach them, and it pays for them per
    /// replica-hour (`POST /api/v1/prices/dedicated`), used or not, instead of per token.
    #[serde(default)]
    pub dedicated_to: Option<String>,
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
    pub dedicated_to: Option<String>,
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

/// How a tenant pays: billed in arrears, or from credit bought ahead (requests stop when it
/// runs out).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BillingPlan {
    #[default]
    PayAsYouGo,
    Prepaid,
}

impl BillingPlan {
    pub fn as_str(self) -> &'static str {
        match self {
            BillingPlan::PayAsYouGo => "pay_as_you_go",
            BillingPlan::Prepaid => "prepaid",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pay_as_you_go" => Some(BillingPlan::PayAsYouGo),
            "prepaid" => Some(BillingPlan::Prepaid),
            _ => None,
        }
    }
}

/// Rate limits of a tenant or a key; an absent limit is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Requests per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u32>,
    /// Tokens per minute: prompt plus completion (the request's worst case while it runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u32>,
    /// Requests in flight at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
}

impl Limits {
    /// A limit of 0 would refuse everything forever: refused as a typo instead.
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("rpm", self.rpm),
            ("tpm", self.tpm),
            ("concurrency", self.concurrency),
        ] {
            if v == Some(0) {
                return Err(format!(
                    "limit {name} must be at least 1 (leave it out for no limit)"
                ));
            }
        }
        Ok(())
    }
}

/// `POST /api/v1/tenants`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantSpec {
    pub name: String,
    #[serde(default)]
    pub plan: BillingPlan,
    /// Who to reach about the account (an e-mail address, usually).
    #[serde(default)]
    pub contact: Option<String>,
    #[serde(default)]
    pub limits: Limits,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Tenant {
    pub name: String,
    pub plan: BillingPlan,
    pub contact: Option<String>,
    pub limits: Limits,
    /// Credit bought minus everything billed, in `currency`: negative for a pay-as-you-go
    /// tenant that owes.
    #[schema(value_type = String, example = "12.50")]
    pub balance: Decimal,
    pub currency: String,
    pub created_at: String,
}

/// `PUT /api/v1/tenants/{name}/limits`: replaces the tenant's limits.
pub type LimitsPatch = Limits;

/// `POST /api/v1/tenants/{name}/top-ups`: credit bought.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TopUp {
    /// In the tenant's currency; must be positive.
    #[schema(value_type = String, example = "25.00")]
    pub amount: Decimal,
    /// The payment it came from (an invoice or transaction id); a repeated reference is a
    /// conflict, so a retried top-up is never counted twice.
    #[serde(default)]
    pub reference: Option<String>,
}

/// The scheduling class of a key's requests: interactive keys run before batch keys on a
/// busy replica.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum KeyPriority {
    #[default]
    Interactive,
    Batch,
}

impl KeyPriority {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyPriority::Interactive => "interactive",
            KeyPriority::Batch => "batch",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "interactive" => Some(KeyPriority::Interactive),
            "batch" => Some(KeyPriority::Batch),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySpec {
    /// The tenant must exist (`POST /api/v1/tenants`).
    pub tenant: String,
    /// A label for the operator; not secret.
    #[serde(default)]
    pub name: Option<String>,
    /// Models the key may call; absent means every model.
    #[serde(default)]
    pub models: Option<Vec<String>>,
    /// RFC 3339 time after which the key is refused.
    #[serde(default)]
    pub expires_at: Option<String>,
    #[serde(default)]
    pub priority: KeyPriority,
    #[serde(default)]
    pub limits: Limits,
}

/// Where a key is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatus {
    Active,
    Revoked,
    Expired,
}

/// An API key as listed: never the secret, only its id and visible prefix. Revoked and
/// expired keys stay listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ApiKey {
    pub id: String,
    pub tenant: String,
    pub name: Option<String>,
    /// The first characters of the key, to recognise it.
    pub prefix: String,
    pub created_at: String,
    pub status: KeyStatus,
    pub models: Option<Vec<String>>,
    pub expires_at: Option<String>,
    pub priority: KeyPriority,
    pub limits: Limits,
    pub revoked_at: Option<String>,
    /// Who revoked it (the operator credential's name).
    pub revoked_by: Option<String>,
    /// When a gateway last served a request with it (as of the last usage shipped).
    pub last_used_at: Option<String>,
}

/// The answer to creating a key: the only time the secret is shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyCreated {
    #[serde(flatten)]
    pub key: ApiKey,
    pub secret: String,
}

/// `POST /api/v1/gateways`: a gateway credential, scoped to reading the gateway config,
/// leasing credit and writing usage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GatewaySpec {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Gateway {
    pub name: String,
    pub created_at: String,
    /// When its token was last replaced.
    pub rotated_at: Option<String>,
}

/// The answer to creating or rotating a gateway: the only time its token is shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GatewayCreated {
    #[serde(flatten)]
    pub gateway: Gateway,
    pub token: String,
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
