//! Pure shaping of store rows into what callers see: API objects with readiness applied,
//! each site's desired assignments, and the gateway's keys and routes. Kept free of I/O so
//! the reconciler can compare two results to decide whether a version must move.

use std::collections::{BTreeMap, BTreeSet};

use wattmesh_proto::agent::ReplicaAssignment;
use wattmesh_proto::api::{self, ReplicaState};
use wattmesh_proto::gateway::{GatewayConfig, GatewayKey, ModelRoute, RouteReplica};
use wattmesh_store::{ApiKeyRecord, DeploymentRecord, NodeRecord, ReplicaRecord, SiteRecord};

pub(crate) fn site(r: &SiteRecord, ready: bool) -> api::Site {
    api::Site {
        name: r.name.clone(),
        region: r.region.clone(),
        power_price_usd_per_mwh: r.power_price_usd_per_mwh,
        ready,
        last_heartbeat: r.last_heartbeat.clone(),
    }
}

pub(crate) fn node(r: &NodeRecord, ready: bool) -> api::Node {
    api::Node {
        name: r.name.clone(),
        site: r.site.clone(),
        region: r.region.clone(),
        memory_bytes: r.memory_bytes,
        ready,
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

pub(crate) fn api_key(r: &ApiKeyRecord) -> api::ApiKey {
    api::ApiKey {
        id: r.id.clone(),
        tenant: r.tenant.clone(),
        name: r.name.clone(),
        prefix: r.prefix.clone(),
        created_at: r.created_at.clone(),
    }
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

/// The gateway's view (version left 0 for the caller): live keys, and for every deployed
/// model the replicas that serve — reported ready, with an endpoint, on a ready site.
pub(crate) fn gateway_config(
    keys: &[ApiKeyRecord],
    deployments: &[DeploymentRecord],
    replicas: &[ReplicaRecord],
    ready_sites: &BTreeSet<String>,
    kinds: &BTreeMap<String, wattmesh_domain::ModelKind>,
) -> GatewayConfig {
    let keys = keys
        .iter()
        .filter(|k| !k.revoked)
        .map(|k| GatewayKey {
            id: k.id.clone(),
            tenant: k.tenant.clone(),
            secret_sha256: k.secret_sha256.clone(),
        })
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
                endpoint: endpoint.clone(),
                site: r.site.clone(),
                region: r.region.clone(),
            });
    }
    let models = routes
        .into_iter()
        .filter_map(|(model, mut replicas)| {
            let kind = *kinds.get(model)?;
            replicas.sort_by(|a, b| a.id.cmp(&b.id));
            Some(ModelRoute {
                model: model.to_owned(),
                kind,
                replicas,
            })
        })
        .collect();
    GatewayConfig {
        version: 0,
        keys,
        models,
    }
}
