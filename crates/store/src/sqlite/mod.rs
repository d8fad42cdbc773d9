//! The SQLite implementation of [`Store`]: the embedded default of `wattmesh up`, one file in
//! the data directory, WAL mode so readers never wait for the writer.
//!
//! A PostgreSQL implementation is not written yet; it will run the same `migrations/` (kept to
//! portable SQL) and implement the same trait. Queries here use `sqlx::query` at run time (no
//! compile-time `query!`), so building needs no database.
//!
//! Layout: `fleet` (regions, sites, nodes), `workloads` (models, deployments, replicas),
//! `access` (tenants, API keys, gateways, agents, secrets, versions), `billing` (prices, the
//! ledger, usage events, credit leases), `dedicated` (replica-hour prices and accrued replica
//! time of dedicated deployments), `energy` (sites' power samples, demand-response events and
//! their miners' acknowledgements), `pnl` (Bitcoin market snapshots and what DR events pay). The
//! trait impl below only delegates.

mod access;
mod billing;
mod dedicated;
mod energy;
mod fleet;
mod plans;
mod pnl;
mod prices;
mod workloads;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use rust_decimal::Decimal;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Connection, Sqlite, Transaction};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use wattmesh_domain::planner::SiteSpec as PowerSiteSpec;
use wattmesh_domain::pricing::LeaseView;
use wattmesh_proto::api::{DeploymentSpec, Limits, Model, NodeSpec, Region, SiteSpec, TenantSpec};
use wattmesh_proto::billing::{DedicatedPrice, LedgerEntry, Price};
use wattmesh_proto::energy::{MinerAck, PowerSample};
use wattmesh_proto::plan::PlanReport;
use wattmesh_proto::usage::{IngestReceipt, LeaseGrant};

use crate::records::{
    AgentRegistration, ApiKeyRecord, DeploymentRecord, DrEventRecord, DrTermsRecord, GatewayRecord,
    MarketRecord, NewApiKey, NewDedicatedPrice, NewDrEvent, NewMarketSnapshot, NewPrice,
    NewReplica, NodeRecord, PowerModelRecord, PowerPlanRecord, RatedEvent, ReplicaRecord,
    ReplicaSeconds, SiteHeartbeat, SitePricePoint, SiteRecord, TenantRecord, UsageQuery,
    UsageTotal,
};
use crate::{Store, StoreError};

/// The control plane's state in one SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `path` and runs pending migrations.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL is durable across process crashes in WAL mode; only an OS crash can lose
            // the last transactions, which the reconciler and agents re-derive.
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            // sqlx 0.8 can hand a connection back inside a transaction: a `begin_with` future
            // dropped after SQLite ran the BEGIN but before the `Transaction` existed (a
            // handler whose client hung up) leaves it open with the write lock held, and every
            // later writer then fails. Such a connection is closed, which rolls it back.
            .after_release(|conn, _| Box::pin(async move { Ok(!conn.is_in_transaction()) }))
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Self { pool })
    }

    /// Closes the pool, waiting for connections to finish (so the file can be reopened).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Starts a write transaction that takes the write lock at once. SQLite's default (deferred)
/// transaction that reads before it writes can fail with `SQLITE_BUSY` without waiting when
/// another writer commits in between; `IMMEDIATE` waits on the busy timeout instead.
async fn begin_write(pool: &SqlitePool) -> Result<Transaction<'static, Sqlite>, StoreError> {
    Ok(pool.begin_with("BEGIN IMMEDIATE").await?)
}

/// Now, as the RFC 3339 text stored for display.
fn now() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_else(|_| String::from("unknown"))
}

/// SQL integers are signed 64-bit; larger byte counts are refused rather than wrapped.
fn to_i64(what: &str, v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Invalid(format!("{what} {v} is too large")))
}

fn from_i64(what: &str, v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Invalid(format!("stored {what} {v} is negative")))
}

/// Reads a decimal stored as text; a value that does not parse is a corrupt row.
fn parse_decimal(what: &str, s: &str) -> Result<Decimal, StoreError> {
    s.parse()
        .map_err(|_| StoreError::Invalid(format!("stored {what} {s:?} is not a decimal")))
}

/// Maps a unique-key violation of an insert to `Conflict`, leaving other errors as they are.
fn conflict_on_duplicate(e: sqlx::Error, kind: &str, name: &str) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::Conflict(format!("{kind} {name:?} already exists"))
        }
        _ => StoreError::Db(e),
    }
}

// === impl Store for SqliteStore ===

#[async_trait]
impl Store for SqliteStore {
    async fn create_region(&self, name: &str) -> Result<Region, StoreError> {
        fleet::create_region(&self.pool, name).await
    }
    async fn list_regions(&self) -> Result<Vec<Region>, StoreError> {
        fleet::list_regions(&self.pool).await
    }
    async fn delete_region(&self, name: &str) -> Result<(), StoreError> {
        fleet::delete_region(&self.pool, name).await
    }
    async fn create_site(&self, site: &SiteSpec) -> Result<SiteRecord, StoreError> {
        fleet::create_site(&self.pool, site).await
    }
    async fn list_sites(&self) -> Result<Vec<SiteRecord>, StoreError> {
        fleet::list_sites(&self.pool).await
    }
    async fn get_site(&self, name: &str) -> Result<SiteRecord, StoreError> {
        fleet::get_site(&self.pool, name).await
    }
    async fn create_node(&self, node: &NodeSpec) -> Result<NodeRecord, StoreError> {
        fleet::create_node(&self.pool, node).await
    }
    async fn list_nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        fleet::list_nodes(&self.pool).await
    }

    async fn create_model(&self, model: &Model) -> Result<Model, StoreError> {
        workloads::create_model(&self.pool, model).await
    }
    async fn list_models(&self) -> Result<Vec<Model>, StoreError> {
        workloads::list_models(&self.pool).await
    }
    async fn create_deployment(
        &self,
        spec: &DeploymentSpec,
    ) -> Result<DeploymentRecord, StoreError> {
        workloads::create_deployment(&self.pool, spec).await
    }
    async fn list_deployments(&self) -> Result<Vec<DeploymentRecord>, StoreError> {
        workloads::list_deployments(&self.pool).await
    }
    async fn get_deployment(&self, name: &str) -> Result<DeploymentRecord, StoreError> {
        workloads::get_deployment(&self.pool, name).await
    }
    async fn scale_deployment(
        &self,
        name: &str,
        replicas: u32,
    ) -> Result<DeploymentRecord, StoreError> {
        workloads::scale_deployment(&self.pool, name, replicas).await
    }
    async fn delete_deployment(&self, name: &str) -> Result<(), StoreError> {
        workloads::delete_deployment(&self.pool, name).await
    }
    async fn list_replicas(&self) -> Result<Vec<ReplicaRecord>, StoreError> {
        workloads::list_replicas(&self.pool).await
    }
    async fn forget_replica_reports(&self) -> Result<(), StoreError> {
        workloads::forget_replica_reports(&self.pool).await
    }
    async fn apply_placements(
        &self,
        add: &[NewReplica],
        remove: &[String],
    ) -> Result<(), StoreError> {
        workloads::apply_placements(&self.pool, add, remove).await
    }

    async fn create_tenant(&self, spec: &TenantSpec) -> Result<TenantRecord, StoreError> {
        access::create_tenant(&self.pool, spec).await
    }
    async fn list_tenants(&self) -> Result<Vec<TenantRecord>, StoreError> {
        access::list_tenants(&self.pool).await
    }
    async fn get_tenant(&self, name: &str) -> Result<TenantRecord, StoreError> {
        access::get_tenant(&self.pool, name).await
    }
    async fn set_tenant_limits(
        &self,
        name: &str,
        limits: &Limits,
    ) -> Result<TenantRecord, StoreError> {
        access::set_tenant_limits(&self.pool, name, limits).await
    }
    async fn create_api_key(&self, key: &NewApiKey) -> Result<ApiKeyRecord, StoreError> {
        access::create_api_key(&self.pool, key).await
    }
    async fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        access::list_api_keys(&self.pool).await
    }
    async fn revoke_api_key(&self, id: &str, by: &str) -> Result<ApiKeyRecord, StoreError> {
        access::revoke_api_key(&self.pool, id, by).await
    }

    async fn create_gateway(
        &self,
        name: &str,
        token_sha256: &str,
    ) -> Result<GatewayRecord, StoreError> {
        access::create_gateway(&self.pool, name, token_sha256).await
    }
    async fn rotate_gateway(
        &self,
        name: &str,
        token_sha256: &str,
    ) -> Result<GatewayRecord, StoreError> {
        access::rotate_gateway(&self.pool, name, token_sha256).await
    }
    async fn list_gateways(&self) -> Result<Vec<GatewayRecord>, StoreError> {
        access::list_gateways(&self.pool).await
    }
    async fn gateway_by_token(&self, token_sha256: &str) -> Result<Option<String>, StoreError> {
        access::gateway_by_token(&self.pool, token_sha256).await
    }

    async fn add_price(&self, price: &NewPrice) -> Result<Price, StoreError> {
        billing::add_price(&self.pool, price).await
    }
    async fn list_prices(&self) -> Result<Vec<Price>, StoreError> {
        billing::list_prices(&self.pool).await
    }
    async fn top_up(
        &self,
        tenant: &str,
        amount: Decimal,
        reference: &str,
    ) -> Result<LedgerEntry, StoreError> {
        billing::top_up(&self.pool, tenant, amount, reference).await
    }
    async fn ledger(&self, tenant: &str) -> Result<Vec<LedgerEntry>, StoreError> {
        billing::ledger(&self.pool, tenant).await
    }
    async fn ingest_usage(
        &self,
        gateway: &str,
        events: &[RatedEvent],
    ) -> Result<IngestReceipt, StoreError> {
        billing::ingest_usage(&self.pool, gateway, events).await
    }
    async fn usage_totals(&self, query: &UsageQuery) -> Result<Vec<UsageTotal>, StoreError> {
        billing::usage_totals(&self.pool, query).await
    }
    async fn add_dedicated_price(
        &self,
        price: &NewDedicatedPrice,
    ) -> Result<DedicatedPrice, StoreError> {
        dedicated::add_dedicated_price(&self.pool, price).await
    }
    async fn list_dedicated_prices(&self) -> Result<Vec<DedicatedPrice>, StoreError> {
        dedicated::list_dedicated_prices(&self.pool).await
    }
    async fn accrue_replica_seconds(&self, accrued: &[ReplicaSeconds]) -> Result<(), StoreError> {
        dedicated::accrue_replica_seconds(&self.pool, accrued).await
    }
    async fn replica_seconds(
        &self,
        tenant: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<ReplicaSeconds>, StoreError> {
        dedicated::replica_seconds(&self.pool, tenant, from_ms, to_ms).await
    }
    async fn lease_credit(
        &self,
        gateway: &str,
        tenant: &str,
        need: Decimal,
        decide: fn(LeaseView) -> Decimal,
    ) -> Result<LeaseGrant, StoreError> {
        billing::lease_credit(&self.pool, gateway, tenant, need, decide).await
    }

    async fn register_agent(&self, registration: &AgentRegistration) -> Result<(), StoreError> {
        fleet::register_agent(&self.pool, registration).await
    }
    async fn agent_site(&self, token_sha256: &str) -> Result<Option<String>, StoreError> {
        access::agent_site(&self.pool, token_sha256).await
    }
    async fn record_heartbeat(&self, heartbeat: SiteHeartbeat<'_>) -> Result<bool, StoreError> {
        fleet::record_heartbeat(&self.pool, heartbeat).await
    }

    async fn record_power_samples(
        &self,
        site: &str,
        samples: &[PowerSample],
    ) -> Result<(), StoreError> {
        energy::record_power_samples(&self.pool, site, samples).await
    }
    async fn power_samples(
        &self,
        site: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<PowerSample>, StoreError> {
        energy::power_samples(&self.pool, site, from_ms, to_ms).await
    }
    async fn last_power_sample(&self, site: &str) -> Result<Option<PowerSample>, StoreError> {
        energy::last_power_sample(&self.pool, site).await
    }
    async fn create_dr_event(&self, event: &NewDrEvent) -> Result<DrEventRecord, StoreError> {
        energy::create_dr_event(&self.pool, event).await
    }
    async fn list_dr_events(&self, site: Option<&str>) -> Result<Vec<DrEventRecord>, StoreError> {
        energy::list_dr_events(&self.pool, site).await
    }
    async fn get_dr_event(&self, id: &str) -> Result<DrEventRecord, StoreError> {
        energy::get_dr_event(&self.pool, id).await
    }
    async fn cancel_dr_event(&self, id: &str, at_ms: i64) -> Result<DrEventRecord, StoreError> {
        energy::cancel_dr_event(&self.pool, id, at_ms).await
    }
    async fn open_dr_events(&self, now_ms: i64) -> Result<Vec<DrEventRecord>, StoreError> {
        energy::open_dr_events(&self.pool, now_ms).await
    }
    async fn record_dr_acks(
        &self,
        event_id: &str,
        site: &str,
        acks: &[MinerAck],
    ) -> Result<(), StoreError> {
        energy::record_dr_acks(&self.pool, event_id, site, acks).await
    }
    async fn dr_acks(&self, event_id: &str) -> Result<Vec<MinerAck>, StoreError> {
        energy::dr_acks(&self.pool, event_id).await
    }

    async fn add_market_snapshot(
        &self,
        snapshot: &NewMarketSnapshot,
    ) -> Result<MarketRecord, StoreError> {
        pnl::add_market_snapshot(&self.pool, snapshot).await
    }
    async fn list_market_snapshots(&self) -> Result<Vec<MarketRecord>, StoreError> {
        pnl::list_market_snapshots(&self.pool).await
    }
    async fn set_dr_terms(&self, terms: &DrTermsRecord) -> Result<DrTermsRecord, StoreError> {
        pnl::set_dr_terms(&self.pool, terms).await
    }
    async fn dr_terms(&self, site: Option<&str>) -> Result<Vec<DrTermsRecord>, StoreError> {
        pnl::dr_terms(&self.pool, site).await
    }

    async fn set_power_model(
        &self,
        site: &str,
        spec: &PowerSiteSpec,
        at_ms: i64,
    ) -> Result<PowerModelRecord, StoreError> {
        plans::set_power_model(&self.pool, site, spec, at_ms).await
    }
    async fn import_site_prices(
        &self,
        site: &str,
        points: &[SitePricePoint],
    ) -> Result<u64, StoreError> {
        prices::import_site_prices(&self.pool, site, points).await
    }
    async fn site_prices(
        &self,
        site: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<SitePricePoint>, StoreError> {
        prices::site_prices(&self.pool, site, from_ms, to_ms).await
    }
    async fn power_model(&self, site: &str) -> Result<PowerModelRecord, StoreError> {
        plans::power_model(&self.pool, site).await
    }
    async fn list_power_models(&self) -> Result<Vec<PowerModelRecord>, StoreError> {
        plans::list_power_models(&self.pool).await
    }
    async fn add_power_plan(&self, plan: &PowerPlanRecord) -> Result<(), StoreError> {
        plans::add_power_plan(&self.pool, plan).await
    }
    async fn report_power_plan(
        &self,
        id: &str,
        site: &str,
        report: &PlanReport,
    ) -> Result<(), StoreError> {
        plans::report_power_plan(&self.pool, id, site, report).await
    }
    async fn power_plans(
        &self,
        site: &str,
        limit: u32,
    ) -> Result<Vec<PowerPlanRecord>, StoreError> {
        plans::power_plans(&self.pool, site, limit).await
    }
    async fn current_power_plans(&self, now_ms: i64) -> Result<Vec<PowerPlanRecord>, StoreError> {
        plans::current_power_plans(&self.pool, now_ms).await
    }

    async fn secret(&self, name: &str) -> Result<Option<String>, StoreError> {
        access::secret(&self.pool, name).await
    }
    async fn insert_secret(&self, name: &str, sha256: &str) -> Result<(), StoreError> {
        access::insert_secret(&self.pool, name, sha256).await
    }
    async fn versions(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        access::versions(&self.pool).await
    }
    async fn set_version(&self, scope: &str, version: u64) -> Result<(), StoreError> {
        access::set_version(&self.pool, scope, version).await
    }
}
