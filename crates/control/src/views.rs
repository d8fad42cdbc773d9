//! Pure shaping of store rows into what callers see: API objects with readiness applied,
//! each site's desired assignments, and the gateway's keys and routes. Kept free of I/O so
//! the reconciler can compare two results to decide whether a version must move.

use std::collections::{BTreeMap, BTreeSet};

use wattmesh_domain::pricing::{PriceVersion, TokenPrice, in_force};
use wattmesh_proto::agent::ReplicaAssignment;
use wattmesh_proto::api::{self, KeyStatus, Model, ReplicaState};
use wattmesh_proto::billing::{CURRENCY, Price};
use wattmesh_proto::energy::{DrDirective, DrEvent, DrStatus, PowerSample};
use wattmesh_proto::gateway::{
    GatewayConfig, GatewayKey, GatewayPrice, GatewayTenant, ModelRoute, RouteReplica,
};
use wattmesh_store::{
    ApiKeyRecord, DeploymentRecord, DrEventRecord, GatewayRecord, NodeRecord, ReplicaRecord,
    SiteRecord, TenantRecord,
};

use crate::clock::format_ms;

pub(crate) fn site(r: &SiteRecord, ready: bool, power: Option<PowerSample>) -> api::Site {
    api::Site {
        name: r.name.clone(),
        region: r.region.clone(),
        power_price_usd_per_mwh: r.power_price_usd_per_mwh,
        ready,
        last_heartbeat: r.last_heartbeat.clone(),
        power,
    }
}

pub(crate) fn node(r: &NodeRecord, ready: bool, parked: &BTreeSet<String>) -> api::Node {
    api::Node {
        name: r.name.clone(),
        site: r.site.clone(),
        region: r.region.clone(),
        memory_bytes: r.memory_bytes,
        ready,
        parked: parked.contains(&r.name),
    }
}

pub(crate) fn deployment(
    r: &DeploymentRecord,
    unschedulable: &BTreeMap<String, u32>,
) -> api::Deployment {
    api::Deployment {
        name: r.name.clone(),
        model: r.model.clone(),
        replicas: r.replicas,
        dedicated_to: r.dedicated_to.clone(),
        unschedulable: unschedulable.get(&r.name).copied().unwrap_or(0),
    }
}

/// A replica as the operator sees it: whatever its agent last said, `lost` while its site
/// does not heartbeat (the last report can no longer be trusted).
pub(crate) fn replica(r: &ReplicaRecord, site_ready: bool) -> api::Replica {
    api::Replica {
        id: r.id.clone(),
        deployment: r.deployment.clone(),
        model: r.model.clone(),
        node: r.node.clone(),
        site: r.site.clone(),
        region: r.region.clone(),
        state: if site_ready {
            r.state
        } else {
            ReplicaState::Lost
        },
        endpoint: r.endpoint.clone(),
        message: r.message.clone(),
    }
}

/// A key as listed at `now_ms`: revoked wins over expired.
pub(crate) fn api_key(r: &ApiKeyRecord, now_ms: i64) -> api::ApiKey {
    let status = if r.revoked() {
        KeyStatus::Revoked
    } else if r.expires_at_ms.is_some_and(|t| t <= now_ms) {
        KeyStatus::Expired
    } else {
        KeyStatus::Active
    };
    api::ApiKey {
        id: r.id.clone(),
        tenant: r.tenant.clone(),
        name: r.name.clone(),
        prefix: r.prefix.clone(),
        created_at: r.created_at.clone(),
        status,
        models: r.models.clone(),
        expires_at: r.expires_at.clone(),
        priority: r.priority,
        limits: r.limits,
        revoked_at: r.revoked_at.clone(),
        revoked_by: r.revoked_by.clone(),
        last_used_at: r.last_used_ms.map(format_ms),
    }
}

pub(crate) fn tenant(r: &TenantRecord) -> api::Tenant {
    api::Tenant {
        name: r.name.clone(),
        plan: r.plan,
        contact: r.contact.clone(),
        limits: r.limits,
        balance: r.balance,
        currency: CURRENCY.to_owned(),
        created_at: r.created_at.clone(),
    }
}

pub(crate) fn gateway(r: &GatewayRecord) -> api::Gateway {
    api::Gateway {
        name: r.name.clone(),
        created_at: r.created_at.clone(),
        rotated_at: r.rotated_at.clone(),
    }
}

/// Price rows as the pure rater takes them.
pub(crate) fn price_versions(prices: &[Price]) -> Vec<PriceVersion> {
    prices
        .iter()
        .map(|p| PriceVersion {
            version: p.version,
            model: p.model.clone(),
            tenant: p.tenant.clone(),
            effective_from_ms: p.effective_from_ms,
            price: TokenPrice {
                input_per_1m: p.input_per_1m,
                output_per_1m: p.output_per_1m,
            },
        })
        .collect()
}

/// The prices in force at `now_ms` that a gateway needs for admission: each model's list
/// price and every tenant override, each its version in force.
fn prices_in_force(prices: &[Price], now_ms: i64) -> Vec<GatewayPrice> {
    let mut versions: BTreeMap<(&str, Option<&str>), Vec<&Price>> = BTreeMap::new();
    for p in prices {
        versions
            .entry((p.model.as_str(), p.tenant.as_deref()))
            .or_default()
            .push(p);
    }
    versions
        .into_values()
        .filter_map(|v| in_force(v, now_ms, |p| (p.effective_from_ms, p.version)))
        .map(|p| GatewayPrice {
            model: p.model.clone(),
            tenant: p.tenant.clone(),
            input_per_1m: p.input_per_1m,
            output_per_1m: p.output_per_1m,
        })
        .collect()
}

/// What each site should run: every replica row on its nodes. Every site has an entry, empty
/// or not, so an agent with nothing to run still gets an answer with a version.
pub(crate) fn assignments(
    sites: &[SiteRecord],
    replicas: &[ReplicaRecord],
) -> BTreeMap<String, Vec<ReplicaAssignment>> {
    let mut out: BTreeMap<String, Vec<ReplicaAssignment>> =
        sites.iter().map(|s| (s.name.clone(), Vec::new())).collect();
    for r in replicas {
        out.entry(r.site.clone())
            .or_default()
            .push(ReplicaAssignment {
                id: r.id.clone(),
                deployment: r.deployment.clone(),
                node: r.node.clone(),
                model: r.model.clone(),
                kind: r.kind,
                artifact: r.artifact.clone(),
            });
    }
    out
}

/// A DR event as the operator sees it, its status as of `now_ms`.
pub(crate) fn dr_event(r: &DrEventRecord, now_ms: i64) -> DrEvent {
    let status = if r.cancelled_at_ms.is_some() {
        DrStatus::Cancelled
    } else if now_ms >= r.ends_at_ms {
        DrStatus::Ended
    } else if now_ms >= r.starts_at_ms {
        DrStatus::Active
    } else {
        DrStatus::Scheduled
    };
    DrEvent {
        id: r.id.clone(),
        site: r.site.clone(),
        target_kw: r.target_kw,
        reduce_by_pct: r.reduce_by_pct,
        baseline_kw: r.baseline_kw,
        shed_inference: r.shed_inference,
        starts_at: format_ms(r.starts_at_ms),
        starts_at_ms: r.starts_at_ms,
        ends_at: format_ms(r.ends_at_ms),
        ends_at_ms: r.ends_at_ms,
        note: r.note.clone(),
        created_at: format_ms(r.created_at_ms),
        created_by: r.created_by.clone(),
        cancelled_at: r.cancelled_at_ms.map(format_ms),
        status,
    }
}

/// Each site's current or next DR event (`open` is by start time, none cancelled or over),
/// as its agent is told it.
pub(crate) fn dr_directives(open: &[DrEventRecord]) -> BTreeMap<String, DrDirective> {
    let mut out = BTreeMap::new();
    for e in open {
        out.entry(e.site.clone()).or_insert_with(|| DrDirective {
            event_id: e.id.clone(),
            target_kw: e.target_kw,
            starts_at_ms: e.starts_at_ms,
            ends_at_ms: e.ends_at_ms,
            shed_inference: e.shed_inference,
        });
    }
    out
}

/// The sites shedding inference at `now_ms`: an event that asks for it is under way.
pub(crate) fn shedding_sites(open: &[DrEventRecord], now_ms: i64) -> BTreeSet<String> {
    open.iter()
        .filter(|e| e.shed_inference && e.starts_at_ms <= now_ms && now_ms < e.effective_end_ms())
        .map(|e| e.site.clone())
        .collect()
}

/// What the gateway config is made of.
pub(crate) struct GatewayInputs<'a> {
    pub keys: &'a [ApiKeyRecord],
    pub tenants: &'a [TenantRecord],
    pub prices: &'a [Price],
    pub models: &'a [Model],
    pub deployments: &'a [DeploymentRecord],
    pub replicas: &'a [ReplicaRecord],
    pub ready_sites: &'a BTreeSet<String>,
    /// Sites shedding inference for a DR event: their replicas are marked `shedding`.
    pub shedding_sites: &'a BTreeSet<String>,
    /// Replicas' access tokens by (site, replica id).
    pub replica_tokens: &'a BTreeMap<(String, String), String>,
    pub now_ms: i64,
}

/// The gateway's view (version and gateway name left empty for the caller): keys neither
/// revoked nor expired, tenants' plans and limits, the prices in force, and for every deployed
/// model the replicas that serve — reported ready, with an endpoint, on a ready site.
pub(crate) fn gateway_config(inputs: &GatewayInputs<'_>) -> GatewayConfig {
    let GatewayInputs {
        keys,
        tenants,
        prices,
        models,
        deployments,
        replicas,
        ready_sites,
        shedding_sites,
        replica_tokens,
        now_ms,
    } = *inputs;
    let keys = keys
        .iter()
        .filter(|k| k.live(now_ms))
        .map(|k| GatewayKey {
            id: k.id.clone(),
            tenant: k.tenant.clone(),
            secret_sha256: k.secret_sha256.clone(),
            models: k.models.clone(),
            expires_at_ms: k.expires_at_ms,
            priority: k.priority,
            limits: k.limits,
        })
        .collect();
    let tenants = tenants
        .iter()
        .map(|t| GatewayTenant {
            name: t.name.clone(),
            plan: t.plan,
            limits: t.limits,
        })
        .collect();
    let by_name: BTreeMap<&str, &Model> = models.iter().map(|m| (m.name.as_str(), m)).collect();
    let dedicated: BTreeMap<&str, &str> = deployments
        .iter()
        .filter_map(|d| Some((d.name.as_str(), d.dedicated_to.as_deref()?)))
        .collect();
    let mut routes: BTreeMap<&str, Vec<RouteReplica>> = deployments
        .iter()
        .map(|d| (d.model.as_str(), Vec::new()))
        .collect();
    for r in replicas {
        let serving = r.state == ReplicaState::Ready && ready_sites.contains(&r.site);
        let (true, Some(endpoint)) = (serving, &r.endpoint) else {
            continue;
        };
        routes
            .entry(r.model.as_str())
            .or_default()
            .push(RouteReplica {
                id: r.id.clone(),
                deployment: r.deployment.clone(),
                dedicated_to: dedicated
                    .get(r.deployment.as_str())
                    .map(|t| (*t).to_owned()),
                access_token: replica_tokens.get(&(r.site.clone(), r.id.clone())).cloned(),
                endpoint: endpoint.clone(),
                site: r.site.clone(),
                region: r.region.clone(),
                shedding: shedding_sites.contains(&r.site),
            });
    }
    let models = routes
        .into_iter()
        .filter_map(|(model, mut replicas)| {
            let m = by_name.get(model)?;
            replicas.sort_by(|a, b| a.id.cmp(&b.id));
            Some(ModelRoute {
                model: model.to_owned(),
                kind: m.kind,
                context_tokens: m.context_tokens,
                replicas,
            })
        })
        .collect();
    GatewayConfig {
        version: 0,
        gateway: String::new(),
        // Counted by the reconciler, which knows the live gateways.
        gateways: 1,
        keys,
        tenants,
        prices: prices_in_force(prices, now_ms),
        models,
    }
}
