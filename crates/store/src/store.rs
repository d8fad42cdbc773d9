//! The [`Store`] trait: one async interface over the control plane's state, so the SQLite
//! default and a later PostgreSQL implementation are interchangeable behind `Arc<dyn Store>`.

use std::collections::BTreeMap;

use async_trait::async_trait;
use rust_decimal::Decimal;
use wattmesh_domain::planner::SiteSpec as PowerSiteSpec;
use wattmesh_domain::pricing::LeaseView;
use wattmesh_proto::api::{DeploymentSpec, Limits, Model, NodeSpec, Region, SiteSpec, TenantSpec};
use wattmesh_proto::billing::{DedicatedPrice, LedgerEntry, Price};
use wattmesh_proto::energy::{MinerAck, PowerSample};
use wattmesh_proto::plan::PlanReport;
use wattmesh_proto::usage::{IngestReceipt, LeaseGrant};

use crate::StoreError;
use crate::records::{
    AgentRegistration, ApiKeyRecord, DeploymentRecord, DrEventRecord, DrTermsRecord, GatewayRecord,
    MarketRecord, NewApiKey, NewDedicatedPrice, NewDrEvent, NewMarketSnapshot, NewPrice,
    NewReplica, NodeRecord, PowerModelRecord, PowerPlanRecord, RatedEvent, ReplicaRecord,
    ReplicaSeconds, SiteHeartbeat, SitePricePoint, SiteRecord, TenantRecord, UsageQuery,
    UsageTotal,
};

/// Everything the control plane persists. Creating an object that exists is
/// [`StoreError::Conflict`]; naming a missing one (or a missing parent) is
/// [`StoreError::NotFound`]. Lists are sorted by name (replicas by deployment, then node).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    // --- regions, sites, nodes ---
    async fn create_region(&self, name: &str) -> Result<Region, StoreError>;
    async fn list_regions(&self) -> Result<Vec<Region>, StoreError>;
    /// Fails with `Conflict` while sites are in the region.
    async fn delete_region(&self, name: &str) -> Result<(), StoreError>;
    async fn create_site(&self, site: &SiteSpec) -> Result<SiteRecord, StoreError>;
    async fn list_sites(&self) -> Result<Vec<SiteRecord>, StoreError>;
    async fn get_site(&self, name: &str) -> Result<SiteRecord, StoreError>;
    async fn create_node(&self, node: &NodeSpec) -> Result<NodeRecord, StoreError>;
    async fn list_nodes(&self) -> Result<Vec<NodeRecord>, StoreError>;

    // --- models, deployments, replicas ---
    async fn create_model(&self, model: &Model) -> Result<Model, StoreError>;
    async fn list_models(&self) -> Result<Vec<Model>, StoreError>;
    async fn create_deployment(
        &self,
        spec: &DeploymentSpec,
    ) -> Result<DeploymentRecord, StoreError>;
    async fn list_deployments(&self) -> Result<Vec<DeploymentRecord>, StoreError>;
    async fn get_deployment(&self, name: &str) -> Result<DeploymentRecord, StoreError>;
    async fn scale_deployment(
        &self,
        name: &str,
        replicas: u32,
    ) -> Result<DeploymentRecord, StoreError>;
    /// Deletes the deployment and its replicas.
    async fn delete_deployment(&self, name: &str) -> Result<(), StoreError>;
    async fn list_replicas(&self) -> Result<Vec<ReplicaRecord>, StoreError>;
    /// Forgets what agents reported about replicas (state back to pending, no endpoint). Called
    /// when the control plane starts: reports from before are stale until agents report again,
    /// and routing to a remembered endpoint would send customers to a port nobody holds.
    async fn forget_replica_reports(&self) -> Result<(), StoreError>;
    /// Applies one reconcile step atomically: inserts `add` (state pending), deletes `remove`
    /// by id. A racing duplicate (same deployment and node) fails the whole step.
    async fn apply_placements(
        &self,
        add: &[NewReplica],
        remove: &[String],
    ) -> Result<(), StoreError>;

    // --- tenants and API keys ---
    async fn create_tenant(&self, spec: &TenantSpec) -> Result<TenantRecord, StoreError>;
    async fn list_tenants(&self) -> Result<Vec<TenantRecord>, StoreError>;
    async fn get_tenant(&self, name: &str) -> Result<TenantRecord, StoreError>;
    /// Replaces the tenant's limits.
    async fn set_tenant_limits(
        &self,
        name: &str,
        limits: &Limits,
    ) -> Result<TenantRecord, StoreError>;
    async fn create_api_key(&self, key: &NewApiKey) -> Result<ApiKeyRecord, StoreError>;
    /// Every key, revoked ones included, oldest first.
    async fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError>;
    /// Marks the key revoked now, by `by`. Revoking a revoked key is `Conflict`.
    async fn revoke_api_key(&self, id: &str, by: &str) -> Result<ApiKeyRecord, StoreError>;

    // --- gateways ---
    /// `Conflict` if the name is taken.
    async fn create_gateway(
        &self,
        name: &str,
        token_sha256: &str,
    ) -> Result<GatewayRecord, StoreError>;
    /// Replaces the gateway's token; the old one stops working at once.
    async fn rotate_gateway(
        &self,
        name: &str,
        token_sha256: &str,
    ) -> Result<GatewayRecord, StoreError>;
    async fn list_gateways(&self) -> Result<Vec<GatewayRecord>, StoreError>;
    /// The gateway whose token has this hash.
    async fn gateway_by_token(&self, token_sha256: &str) -> Result<Option<String>, StoreError>;

    // --- money: prices, ledger, usage, leases ---
    /// Adds a price version; the model (and tenant, if any) must exist.
    async fn add_price(&self, price: &NewPrice) -> Result<Price, StoreError>;
    /// Every price version, oldest first.
    async fn list_prices(&self) -> Result<Vec<Price>, StoreError>;
    /// Credits the tenant. A `reference` the tenant used before is `Conflict`.
    async fn top_up(
        &self,
        tenant: &str,
        amount: Decimal,
        reference: &str,
    ) -> Result<LedgerEntry, StoreError>;
    /// The tenant's ledger, oldest first.
    async fn ledger(&self, tenant: &str) -> Result<Vec<LedgerEntry>, StoreError>;
    /// Stores the events not seen before (by id) in one transaction, and for those only:
    /// debits each tenant once with the batch's cost (a ledger entry), adds it to the
    /// gateway's spent credit of that tenant, and moves its keys' last use. Events of unknown
    /// tenants are stored and debited nowhere (their tenant was deleted). A tenant whose new
    /// events cost nothing in all (no price set) gets no ledger entry: ledgers list only what
    /// moved the balance. A negative cost fails the whole batch (`Invalid`).
    async fn ingest_usage(
        &self,
        gateway: &str,
        events: &[RatedEvent],
    ) -> Result<IngestReceipt, StoreError>;
    /// Usage summed per bucket and group, oldest bucket first, then by group. Costs are
    /// recomputed from token sums and the price versions the events were rated at, which equals
    /// the sum of their stored costs as long as each was rated as `TokenPrice::cost` does.
    async fn usage_totals(&self, query: &UsageQuery) -> Result<Vec<UsageTotal>, StoreError>;
    /// Adds a version of a dedicated deployment's price per replica-hour; the deployment must
    /// be dedicated (`Invalid` otherwise).
    async fn add_dedicated_price(
        &self,
        price: &NewDedicatedPrice,
    ) -> Result<DedicatedPrice, StoreError>;
    /// Every dedicated price version, oldest first.
    async fn list_dedicated_prices(&self) -> Result<Vec<DedicatedPrice>, StoreError>;
    /// Adds replica time to each (deployment, hour) in one transaction.
    async fn accrue_replica_seconds(&self, accrued: &[ReplicaSeconds]) -> Result<(), StoreError>;
    /// A tenant's replica time with `from_ms <= hour_start_ms < to_ms`.
    async fn replica_seconds(
        &self,
        tenant: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<ReplicaSeconds>, StoreError>;
    /// In one transaction: reads the tenant's balance and what every gateway holds, asks
    /// `decide` how much more to grant `gateway`, records it, and returns the gateway's totals.
    async fn lease_credit(
        &self,
        gateway: &str,
        tenant: &str,
        need: Decimal,
        decide: fn(LeaseView) -> Decimal,
    ) -> Result<LeaseGrant, StoreError>;

    // --- agents ---
    /// Creates the region, site and nodes if missing and replaces the site's agent token.
    /// Counts as a heartbeat.
    async fn register_agent(&self, registration: &AgentRegistration) -> Result<(), StoreError>;
    /// The site whose agent holds the token with this hash.
    async fn agent_site(&self, token_sha256: &str) -> Result<Option<String>, StoreError>;
    /// Records a heartbeat: the time, the nodes (added or resized; a node named by another
    /// site is skipped), the reports of replicas this site owns (others are ignored).
    /// Returns whether any node or replica changed.
    async fn record_heartbeat(&self, heartbeat: SiteHeartbeat<'_>) -> Result<bool, StoreError>;

    // --- energy: power samples and demand-response events ---
    /// Stores the site's power samples, all or none; a second sample of the site at the same
    /// `at_ms` is ignored (a retried heartbeat, a backlog sent again). `NotFound` for an
    /// unknown site, `Invalid` when any sample is not finite.
    async fn record_power_samples(
        &self,
        site: &str,
        samples: &[PowerSample],
    ) -> Result<(), StoreError>;
    /// [`Store::record_power_samples`] of one sample.
    async fn record_power_sample(
        &self,
        site: &str,
        sample: &PowerSample,
    ) -> Result<(), StoreError> {
        self.record_power_samples(site, std::slice::from_ref(sample))
            .await
    }
    /// The site's samples with `from_ms <= at_ms < to_ms`, oldest first.
    async fn power_samples(
        &self,
        site: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<PowerSample>, StoreError>;
    /// The site's newest sample.
    async fn last_power_sample(&self, site: &str) -> Result<Option<PowerSample>, StoreError>;
    /// Stores a new event. `NotFound` for an unknown site; `Conflict` when its window
    /// overlaps another event of the site that was not cancelled; both checked in the same
    /// transaction as the insert.
    async fn create_dr_event(&self, event: &NewDrEvent) -> Result<DrEventRecord, StoreError>;
    /// Every event (of one site, if given), by start time.
    async fn list_dr_events(&self, site: Option<&str>) -> Result<Vec<DrEventRecord>, StoreError>;
    async fn get_dr_event(&self, id: &str) -> Result<DrEventRecord, StoreError>;
    /// Marks the event cancelled at `at_ms`. `Conflict` if it was cancelled already or had
    /// ended by `at_ms`.
    async fn cancel_dr_event(&self, id: &str, at_ms: i64) -> Result<DrEventRecord, StoreError>;
    /// Events not cancelled whose end is after `now_ms`, by start time: what agents are told.
    async fn open_dr_events(&self, now_ms: i64) -> Result<Vec<DrEventRecord>, StoreError>;
    /// Stores how the site's miners answered the event, replacing an earlier row of the same
    /// miner. `NotFound` unless the event exists and is `site`'s.
    async fn record_dr_acks(
        &self,
        event_id: &str,
        site: &str,
        acks: &[MinerAck],
    ) -> Result<(), StoreError>;
    /// The event's miner rows, by miner.
    async fn dr_acks(&self, event_id: &str) -> Result<Vec<MinerAck>, StoreError>;

    // --- the P&L's inputs: Bitcoin market snapshots and DR event terms ---
    /// Adds a market snapshot. `Invalid` for a difficulty that is not positive, a negative
    /// subsidy or fee, or a BTC price that is not positive.
    async fn add_market_snapshot(
        &self,
        snapshot: &NewMarketSnapshot,
    ) -> Result<MarketRecord, StoreError>;
    /// Every market snapshot, by time in force (then version).
    async fn list_market_snapshots(&self) -> Result<Vec<MarketRecord>, StoreError>;
    /// Sets (or replaces) what a DR event pays. `NotFound` for an unknown event; `Invalid` for
    /// a negative rate.
    async fn set_dr_terms(&self, terms: &DrTermsRecord) -> Result<DrTermsRecord, StoreError>;
    /// The terms of every event (of one site, if given) that has some, by event id.
    async fn dr_terms(&self, site: Option<&str>) -> Result<Vec<DrTermsRecord>, StoreError>;

    // --- the live power plan ---
    /// Sets (or replaces) a site's power model. `NotFound` for an unknown site.
    async fn set_power_model(
        &self,
        site: &str,
        spec: &PowerSiteSpec,
        at_ms: i64,
    ) -> Result<PowerModelRecord, StoreError>;
    /// `NotFound` for an unknown site or a site without a model.
    async fn power_model(&self, site: &str) -> Result<PowerModelRecord, StoreError>;
    /// Every site's power model, by site.
    async fn list_power_models(&self) -> Result<Vec<PowerModelRecord>, StoreError>;
    /// Stores a new plan. `NotFound` for an unknown site; `Conflict` for a known id.
    async fn add_power_plan(&self, plan: &PowerPlanRecord) -> Result<(), StoreError>;
    /// Sets (or replaces) the agent's report of plan `id`. `NotFound` unless the plan exists
    /// and is `site`'s.
    async fn report_power_plan(
        &self,
        id: &str,
        site: &str,
        report: &PlanReport,
    ) -> Result<(), StoreError>;
    /// A site's newest plans first, at most `limit`.
    async fn power_plans(&self, site: &str, limit: u32)
    -> Result<Vec<PowerPlanRecord>, StoreError>;
    /// Each site's newest plan whose interval contains `now_ms`: what agents are told.
    async fn current_power_plans(&self, now_ms: i64) -> Result<Vec<PowerPlanRecord>, StoreError>;
    /// Stores a site's imported prices, removing every stored point they overlap; returns how
    /// many were removed. `NotFound` for an unknown site; `Invalid` for no points, a price not
    /// finite, or two points starting together.
    async fn import_site_prices(
        &self,
        site: &str,
        points: &[SitePricePoint],
    ) -> Result<u64, StoreError>;
    /// A site's imported prices overlapping `[from_ms, to_ms)`, by start.
    async fn site_prices(
        &self,
        site: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<SitePricePoint>, StoreError>;

    // --- the control plane's own secrets and watch versions ---
    async fn secret(&self, name: &str) -> Result<Option<String>, StoreError>;
    /// Stores the hash of a named secret once; `Conflict` if it exists.
    async fn insert_secret(&self, name: &str, sha256: &str) -> Result<(), StoreError>;
    async fn versions(&self) -> Result<BTreeMap<String, u64>, StoreError>;
    async fn set_version(&self, scope: &str, version: u64) -> Result<(), StoreError>;
}
