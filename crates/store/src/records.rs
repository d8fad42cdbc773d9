//! What the store returns and takes. Specs the operator sends (`proto::api`) are taken as they
//! are; rows carry what joins add (a node's region, a replica's model) so callers need no
//! second query, and leave out what only the control plane knows (readiness).

use rust_decimal::Decimal;
use wattmesh_domain::ModelKind;
use wattmesh_proto::agent::{NodeReport, ReplicaReport};
use wattmesh_proto::api::{BillingPlan, KeyPriority, Limits, ReplicaState};
use wattmesh_proto::usage::UsageEvent;

use crate::StoreError;

/// Longest accepted name of any object.
pub const MAX_NAME_LEN: usize = 128;

/// Checks a name of an object addressed by name (region, site, node, model, deployment,
/// tenant). Names appear in URL paths and logs, so they stay to a URL- and shell-safe set.
pub fn validate_name(kind: &str, name: &str) -> Result<(), StoreError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    let starts_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    if name.is_empty() || name.len() > MAX_NAME_LEN || !starts_ok || !name.chars().all(ok_char) {
        return Err(StoreError::Invalid(format!(
            "invalid {kind} name {name:?}: use 1 to {MAX_NAME_LEN} letters, digits, '-', '_' or \
             '.', starting with a letter or digit"
        )));
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq)]
pub struct SiteRecord {
    pub name: String,
    pub region: String,
    pub power_price_usd_per_mwh: Decimal,
    /// RFC 3339 wall time of the last heartbeat, for display.
    pub last_heartbeat: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NodeRecord {
    pub name: String,
    pub site: String,
    pub region: String,
    pub memory_bytes: u64,
    /// The site's price, joined in because the scheduler ranks nodes by it.
    pub power_price_usd_per_mwh: Decimal,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeploymentRecord {
    pub name: String,
    pub model: String,
    pub replicas: u32,
    /// The model's memory per replica, joined in for the scheduler's demand.
    pub memory_bytes: u64,
    /// The tenant whose own replicas these are, for a dedicated deployment.
    pub dedicated_to: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaRecord {
    pub id: String,
    pub deployment: String,
    pub model: String,
    pub kind: ModelKind,
    pub artifact: String,
    pub node: String,
    pub site: String,
    pub region: String,
    /// The state the agent last reported (or `pending`); the control plane shows `lost` on
    /// top of it while the site is not ready.
    pub state: ReplicaState,
    pub endpoint: Option<String>,
    pub message: Option<String>,
}

/// A replica the reconciler decided to create.
#[derive(Debug, Clone, PartialEq)]
pub struct NewReplica {
    pub id: String,
    pub deployment: String,
    pub node: String,
}

/// An API key to store; the secret itself never reaches the store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewApiKey {
    pub id: String,
    pub tenant: String,
    pub name: Option<String>,
    pub prefix: String,
    pub secret_sha256: String,
    pub models: Option<Vec<String>>,
    /// RFC 3339 as given, and the same instant in unix milliseconds.
    pub expires_at: Option<(String, i64)>,
    pub priority: KeyPriority,
    pub limits: Limits,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ApiKeyRecord {
    pub id: String,
    pub tenant: String,
    pub name: Option<String>,
    pub prefix: String,
    pub secret_sha256: String,
    pub created_at: String,
    pub models: Option<Vec<String>>,
    pub expires_at: Option<String>,
    pub expires_at_ms: Option<i64>,
    pub priority: KeyPriority,
    pub limits: Limits,
    /// Set when revoked, with who revoked it.
    pub revoked_at: Option<String>,
    pub revoked_by: Option<String>,
    /// The latest start of a request with this key among ingested usage.
    pub last_used_ms: Option<i64>,
}

impl ApiKeyRecord {
    pub fn revoked(&self) -> bool {
        self.revoked_at.is_some()
    }

    /// Whether the key is accepted at `now_ms`: not revoked, not expired.
    pub fn live(&self, now_ms: i64) -> bool {
        !self.revoked() && self.expires_at_ms.is_none_or(|t| t > now_ms)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TenantRecord {
    pub name: String,
    pub plan: BillingPlan,
    pub contact: Option<String>,
    pub limits: Limits,
    /// Top-ups minus rated usage.
    pub balance: Decimal,
    pub created_at: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GatewayRecord {
    pub name: String,
    pub created_at: String,
    pub rotated_at: Option<String>,
}

/// A price version to add; the store assigns its version number.
#[derive(Debug, Clone, PartialEq)]
pub struct NewPrice {
    pub model: String,
    pub tenant: Option<String>,
    pub input_per_1m: Decimal,
    pub output_per_1m: Decimal,
    pub currency: String,
    pub effective_from: String,
    pub effective_from_ms: i64,
}

/// A usage event with the price the control plane rated it at.
#[derive(Debug, Clone, PartialEq)]
pub struct RatedEvent {
    pub event: UsageEvent,
    /// `None` when no price was in force: the usage is recorded at cost 0.
    pub price_version: Option<u64>,
    pub cost: Decimal,
}

/// How usage totals are grouped besides time buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageGroup {
    None,
    Model,
    Key,
    /// Per (model, key) pair, as `model` U+001F `key id`.
    ModelAndKey,
    /// Per (model, deployment) pair, as `model` U+001F `deployment`: invoice lines.
    ModelAndDeployment,
    /// Per site that served the requests (the energy layer's inference revenue and demand).
    Site,
    /// Per region that served the requests.
    Region,
    /// Per (region, priority class) pair, as `region` U+001F `priority`: the live planner's
    /// interactive and batch demand.
    RegionAndPriority,
}

/// What joins the two names of a pair group in [`UsageTotal::group`].
pub(crate) const PAIR_SEPARATOR: char = '\u{1f}';

impl UsageGroup {
    /// A total's group as (first name, second name): the model (or the site or region for
    /// those groups) first; the key id for [`UsageGroup::Key`] and [`UsageGroup::ModelAndKey`],
    /// the deployment for [`UsageGroup::ModelAndDeployment`], the priority class for
    /// [`UsageGroup::RegionAndPriority`] second.
    pub fn split(self, group: Option<&str>) -> (Option<String>, Option<String>) {
        let group = group.map(str::to_owned);
        match self {
            UsageGroup::None => (None, None),
            UsageGroup::Model | UsageGroup::Site | UsageGroup::Region => (group, None),
            UsageGroup::Key => (None, group),
            UsageGroup::ModelAndKey
            | UsageGroup::ModelAndDeployment
            | UsageGroup::RegionAndPriority => {
                match group.as_deref().and_then(|g| g.split_once(PAIR_SEPARATOR)) {
                    Some((model, other)) => (Some(model.to_owned()), Some(other.to_owned())),
                    None => (group, None),
                }
            }
        }
    }
}

/// Replica time a dedicated deployment held in one hour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaSeconds {
    pub deployment: String,
    pub tenant: String,
    pub hour_start_ms: i64,
    pub seconds: u64,
}

/// A dedicated price version to add.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDedicatedPrice {
    pub deployment: String,
    pub per_replica_hour: Decimal,
    pub currency: String,
    pub effective_from: String,
    pub effective_from_ms: i64,
}

/// A usage query: one tenant's (or every tenant's) events with `from_ms <= started_at_ms <
/// to_ms`, summed per time bucket (when `bucket_ms` is set, buckets start at `from_ms`) and
/// per group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageQuery {
    pub tenant: Option<String>,
    /// Only these models, when set.
    pub models: Option<Vec<String>>,
    pub from_ms: i64,
    pub to_ms: i64,
    pub bucket_ms: Option<i64>,
    pub group: UsageGroup,
}

/// One bucket and group of a [`UsageQuery`]; buckets and groups without usage are absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageTotal {
    /// The bucket's start, when the query has buckets.
    pub bucket_start_ms: Option<i64>,
    /// The model or key id, when grouped.
    pub group: Option<String>,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost: Decimal,
}

/// An agent joining: its site (created with its region if missing), its nodes, and the hash
/// of the token issued to it, which replaces any earlier token of the site.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentRegistration {
    pub site: String,
    pub region: String,
    /// `None` keeps a known site's price, or 0 for a new site.
    pub power_price_usd_per_mwh: Option<Decimal>,
    pub nodes: Vec<NodeReport>,
    pub token_sha256: String,
}

/// One heartbeat of a site's agent.
#[derive(Debug, Clone, Copy)]
pub struct SiteHeartbeat<'a> {
    pub site: &'a str,
    pub nodes: &'a [NodeReport],
    pub replicas: &'a [ReplicaReport],
}

/// A demand-response event to store, its target and shedding already decided.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDrEvent {
    pub id: String,
    pub site: String,
    pub target_kw: f64,
    pub reduce_by_pct: Option<f64>,
    pub baseline_kw: Option<f64>,
    pub shed_inference: bool,
    pub starts_at_ms: i64,
    pub ends_at_ms: i64,
    pub note: Option<String>,
    pub created_at_ms: i64,
    pub created_by: String,
}

/// A stored demand-response event.
#[derive(Debug, Clone, PartialEq)]
pub struct DrEventRecord {
    pub id: String,
    pub site: String,
    pub target_kw: f64,
    pub reduce_by_pct: Option<f64>,
    pub baseline_kw: Option<f64>,
    pub shed_inference: bool,
    pub starts_at_ms: i64,
    pub ends_at_ms: i64,
    pub note: Option<String>,
    pub created_at_ms: i64,
    pub created_by: String,
    pub cancelled_at_ms: Option<i64>,
}

impl DrEventRecord {
    /// When the event stops: its end, or its cancellation if that came first.
    pub fn effective_end_ms(&self) -> i64 {
        self.cancelled_at_ms
            .map_or(self.ends_at_ms, |c| c.min(self.ends_at_ms))
    }
}

pub(crate) fn replica_state_from_str(s: &str) -> Result<ReplicaState, StoreError> {
    Ok(match s {
        "pending" => ReplicaState::Pending,
        "starting" => ReplicaState::Starting,
        "ready" => ReplicaState::Ready,
        "failed" => ReplicaState::Failed,
        "lost" => ReplicaState::Lost,
        other => {
            return Err(StoreError::Invalid(format!(
                "stored replica state {other:?}"
            )));
        }
    })
}

/// A Bitcoin market snapshot to store, in force from `effective_from_ms`.
#[derive(Debug, Clone, PartialEq)]
pub struct NewMarketSnapshot {
    pub btc_usd: Decimal,
    pub difficulty: f64,
    pub subsidy_btc: f64,
    pub fees_btc_per_block: f64,
    pub effective_from: String,
    pub effective_from_ms: i64,
}

/// A stored market snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct MarketRecord {
    pub version: u64,
    pub btc_usd: Decimal,
    pub difficulty: f64,
    pub subsidy_btc: f64,
    pub fees_btc_per_block: f64,
    pub effective_from: String,
    pub effective_from_ms: i64,
}

/// What a demand-response event pays; `None` pays nothing for that part.
#[derive(Debug, Clone, PartialEq)]
pub struct DrTermsRecord {
    pub event_id: String,
    pub pay_usd_per_mwh: Option<Decimal>,
    pub peak_charge_usd_per_kw: Option<Decimal>,
}

/// One imported electricity price of a site: `usd_per_mwh` for `interval_s` seconds from
/// `starts_at_ms`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SitePricePoint {
    pub starts_at_ms: i64,
    pub interval_s: i64,
    pub usd_per_mwh: f64,
}

/// A site's power model as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct PowerModelRecord {
    pub site: String,
    pub spec: wattmesh_domain::planner::SiteSpec,
    pub updated_at_ms: i64,
}

/// One plan made for a site and interval, with its agent's report once it came.
#[derive(Debug, Clone, PartialEq)]
pub struct PowerPlanRecord {
    pub id: String,
    pub site: String,
    pub starts_at_ms: i64,
    pub ends_at_ms: i64,
    pub created_at_ms: i64,
    pub interval: wattmesh_domain::planner::IntervalPlan,
    pub directive: wattmesh_proto::plan::PlanDirective,
    pub report: Option<wattmesh_proto::plan::PlanReport>,
}
