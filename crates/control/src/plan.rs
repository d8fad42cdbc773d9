//! The reconciler's decision, pure: store rows and the set of ready sites in, the scheduler
//! called, the replica rows to add and delete out. No I/O, no clock, so it is tested with
//! plain values like the scheduler itself.
//!
//! Beyond `wattmesh_domain::place`, two rules live here. A replica on a site that stopped
//! heartbeating, or on a node its site's power plan parks, is kept (shown `lost` in the first
//! case) while its deployment is short of replicas elsewhere, so when the site comes back its
//! still-running replica is reused instead of churned, and a plan never takes the last replicas
//! of a model offline. Once the deployment is whole again without it, it is deleted — for a
//! parked node of a live site, once its replacements are *ready* (make before break: the
//! replica serves until then). And the nodes a plan parks are the last ones of their site by
//! name: the plan says how many of the site's GPU nodes are on
//! ([`wattmesh_domain::fleet::nodes_powered`]), not which.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use wattmesh_domain::fleet::nodes_powered;
use wattmesh_domain::{DeploymentDemand, FleetView, NodeView, Placement, place};
use wattmesh_proto::api::ReplicaState;
use wattmesh_proto::plan::PlanDirective;
use wattmesh_store::{DeploymentRecord, NodeRecord, ReplicaRecord};

#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// New replicas to create, as (deployment, node).
    pub add: Vec<Placement>,
    /// Ids of replica rows to delete.
    pub remove: Vec<String>,
    /// Replicas per deployment the scheduler could not place.
    pub unschedulable: BTreeMap<String, u32>,
}

/// The nodes the power plans in force (by site) have off: of each site whose plan plans its
/// GPUs, those after the first [`nodes_powered`] by name. A plan without GPU groups (a power
/// model of miners only) parks nothing.
pub(crate) fn parked_nodes(
    nodes: &[NodeRecord],
    plans: &BTreeMap<String, PlanDirective>,
) -> BTreeSet<String> {
    let mut by_site: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for n in nodes {
        by_site
            .entry(n.site.as_str())
            .or_default()
            .push(n.name.as_str());
    }
    let mut parked = BTreeSet::new();
    for (site, mut names) in by_site {
        let Some(plan) = plans.get(site).filter(|p| !p.gpu_groups.is_empty()) else {
            continue;
        };
        names.sort_unstable();
        let on = nodes_powered(plan.gpu_groups.iter().map(|g| g.nodes_on), names.len());
        parked.extend(names[on..].iter().map(|n| (*n).to_owned()));
    }
    parked
}

pub(crate) fn fleet_view(
    nodes: &[NodeRecord],
    ready_sites: &BTreeSet<String>,
    parked: &BTreeSet<String>,
) -> FleetView {
    FleetView {
        nodes: nodes
            .iter()
            .map(|n| NodeView {
                name: n.name.clone(),
                site: n.site.clone(),
                region: n.region.clone(),
                memory_bytes: n.memory_bytes,
                power_price_usd_per_mwh: n.power_price_usd_per_mwh,
                ready: ready_sites.contains(&n.site),
                parked: parked.contains(&n.name),
            })
            .collect(),
    }
}

pub(crate) fn plan(
    nodes: &[NodeRecord],
    ready_sites: &BTreeSet<String>,
    parked: &BTreeSet<String>,
    deployments: &[DeploymentRecord],
    replicas: &[ReplicaRecord],
) -> Plan {
    let fleet = fleet_view(nodes, ready_sites, parked);
    let demands: Vec<DeploymentDemand> = deployments
        .iter()
        .map(|d| DeploymentDemand {
            name: d.name.clone(),
            replicas: d.replicas,
            memory_bytes: d.memory_bytes,
        })
        .collect();
    let current: Vec<Placement> = replicas
        .iter()
        .map(|r| Placement {
            deployment: r.deployment.clone(),
            node: r.node.clone(),
        })
        .collect();
    let schedule = place(&fleet, &demands, &current);

    let existing: HashSet<&Placement> = current.iter().collect();
    let wanted: HashSet<&Placement> = schedule.placements.iter().collect();
    let add = schedule
        .placements
        .iter()
        .filter(|p| !existing.contains(p))
        .cloned()
        .collect();

    // Per deployment, its replicas ready and staying: what a parked node's replica waits for.
    let mut ready_staying: BTreeMap<&str, u32> = BTreeMap::new();
    for (r, p) in replicas.iter().zip(&current) {
        if r.state == ReplicaState::Ready && wanted.contains(p) {
            *ready_staying.entry(r.deployment.as_str()).or_default() += 1;
        }
    }
    let desired: BTreeMap<&str, u32> = deployments
        .iter()
        .map(|d| (d.name.as_str(), d.replicas))
        .collect();

    // Replicas are sorted by deployment then node, so "the first lost ones" is deterministic.
    let mut lost_kept: BTreeMap<&str, u32> = BTreeMap::new();
    let mut remove = Vec::new();
    for (r, p) in replicas.iter().zip(&current) {
        if wanted.contains(p) {
            continue;
        }
        let node = fleet.node(&r.node);
        // Make before break: a replica on a parked node of a live site serves until its
        // deployment is whole and ready elsewhere (a lost site's replica cannot serve anyway).
        let parked_but_serving = node.is_some_and(|n| n.ready && n.parked);
        let whole_elsewhere = ready_staying
            .get(r.deployment.as_str())
            .copied()
            .unwrap_or(0)
            >= desired.get(r.deployment.as_str()).copied().unwrap_or(0);
        if parked_but_serving && !whole_elsewhere {
            continue;
        }
        let node_usable = node.is_some_and(NodeView::usable);
        let short = schedule
            .unschedulable
            .get(&r.deployment)
            .copied()
            .unwrap_or(0);
        let kept = lost_kept.entry(r.deployment.as_str()).or_default();
        if !node_usable && *kept < short {
            *kept += 1;
        } else {
            remove.push(r.id.clone());
        }
    }
    Plan {
        add,
        remove,
        unschedulable: schedule.unschedulable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::Decimal;
    use wattmesh_domain::ModelKind;

    fn node(name: &str, site: &str, region: &str) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            site: site.into(),
            region: region.into(),
            memory_bytes: 8,
            power_price_usd_per_mwh: Decimal::ONE,
        }
    }

    fn deployment(replicas: u32) -> DeploymentRecord {
        DeploymentRecord {
            name: "chat".into(),
            model: "m".into(),
            replicas,
            memory_bytes: 1,
            dedicated_to: None,
        }
    }

    fn replica(id: &str, node: &str, site: &str) -> ReplicaRecord {
        ReplicaRecord {
            id: id.into(),
            deployment: "chat".into(),
            model: "m".into(),
            kind: ModelKind::Chat,
            artifact: "m".into(),
            node: node.into(),
            site: site.into(),
            region: "r".into(),
            state: ReplicaState::Ready,
            endpoint: None,
            message: None,
        }
    }

    fn ready(sites: &[&str]) -> BTreeSet<String> {
        sites.iter().map(|s| s.to_string()).collect()
    }

    fn placed(plan: &Plan) -> Vec<&str> {
        plan.add.iter().map(|p| p.node.as_str()).collect()
    }

    #[test]
    fn new_deployment_gets_replicas_in_two_regions() {
        let nodes = [node("a", "sa", "r1"), node("b", "sb", "r2")];
        let p = plan(
            &nodes,
            &ready(&["sa", "sb"]),
            &BTreeSet::new(),
            &[deployment(2)],
            &[],
        );
        assert_eq!(placed(&p), vec!["a", "b"]);
        assert!(p.remove.is_empty() && p.unschedulable.is_empty());
    }

    #[test]
    fn nodes_of_sites_that_never_heartbeated_get_nothing() {
        let nodes = [node("a", "sa", "r1"), node("b", "sb", "r2")];
        let p = plan(
            &nodes,
            &ready(&["sa"]),
            &BTreeSet::new(),
            &[deployment(2)],
            &[],
        );
        assert_eq!(placed(&p), vec!["a"]);
        assert_eq!(p.unschedulable.get("chat"), Some(&1));
    }

    #[test]
    fn a_lost_replica_is_kept_while_the_deployment_is_short_and_dropped_once_whole() {
        let nodes = [node("a", "sa", "r1"), node("b", "sb", "r2")];
        let current = [replica("ra", "a", "sa"), replica("rb", "b", "sb")];
        let p = plan(
            &nodes,
            &ready(&["sa"]),
            &BTreeSet::new(),
            &[deployment(2)],
            &current,
        );
        assert_eq!(
            p,
            Plan {
                unschedulable: [("chat".into(), 1)].into(),
                ..Plan::default()
            }
        );

        let with_c = [
            node("a", "sa", "r1"),
            node("b", "sb", "r2"),
            node("c", "sc", "r3"),
        ];
        let p = plan(
            &with_c,
            &ready(&["sa", "sc"]),
            &BTreeSet::new(),
            &[deployment(2)],
            &current,
        );
        assert_eq!(placed(&p), vec!["c"]);
        assert_eq!(p.remove, vec!["rb".to_owned()]);
    }

    fn directive(nodes_on: &[f64]) -> PlanDirective {
        PlanDirective {
            plan_id: "p".into(),
            starts_at_ms: 0,
            ends_at_ms: 900_000,
            asic_groups: vec![],
            gpu_groups: nodes_on
                .iter()
                .map(|&on| wattmesh_proto::plan::GpuTarget {
                    name: "h100".into(),
                    nodes: 2,
                    nodes_on: on,
                    kw: on * 5.0,
                    node_max_kw: 5.0,
                })
                .collect(),
            expected_meter_kw: 1.0,
        }
    }

    #[test]
    fn a_plan_parks_its_sites_last_nodes_by_name_and_a_plan_of_miners_parks_none() {
        let nodes = [
            node("a2", "sa", "r1"),
            node("a1", "sa", "r1"),
            node("a3", "sa", "r1"),
            node("b1", "sb", "r2"),
            node("c1", "sc", "r3"),
        ];
        let plans: BTreeMap<String, PlanDirective> = [
            ("sa".to_owned(), directive(&[0.4, 0.5])),
            ("sb".to_owned(), directive(&[0.0])),
            ("sc".to_owned(), directive(&[])),
        ]
        .into();
        let parked: Vec<String> = parked_nodes(&nodes, &plans).into_iter().collect();
        assert_eq!(parked, vec!["a2", "a3", "b1"]);
    }

    #[test]
    fn replicas_leave_parked_nodes_unless_nowhere_else_would_take_them() {
        let nodes = [node("a", "sa", "r1"), node("b", "sb", "r2")];
        let current = [replica("ra", "a", "sa")];
        let both = ready(&["sa", "sb"]);
        let parked: BTreeSet<String> = ["a".to_owned()].into();
        let p = plan(&nodes, &both, &parked, &[deployment(1)], &current);
        assert_eq!(placed(&p), vec!["b"]);
        assert!(
            p.remove.is_empty(),
            "serving until its replacement is ready"
        );
        // The replacement placed, not ready yet: nothing changes.
        let moving = [replica("ra", "a", "sa"), replica("rb", "b", "sb")];
        let mut starting = moving.clone();
        starting[1].state = ReplicaState::Pending;
        let p = plan(&nodes, &both, &parked, &[deployment(1)], &starting);
        assert_eq!(p, Plan::default());
        // Ready: the parked node's replica goes.
        let p = plan(&nodes, &both, &parked, &[deployment(1)], &moving);
        assert_eq!(p.remove, vec!["ra".to_owned()]);
        assert!(p.add.is_empty());
        // Every node parked: the running replica stays (the model stays up), reported short.
        let all: BTreeSet<String> = ["a".to_owned(), "b".to_owned()].into();
        let p = plan(&nodes, &both, &all, &[deployment(1)], &current);
        assert!(p.add.is_empty() && p.remove.is_empty(), "{p:?}");
        assert_eq!(p.unschedulable.get("chat"), Some(&1));
    }

    #[test]
    fn scaling_down_removes_replicas() {
        let nodes = [node("a", "sa", "r1"), node("b", "sb", "r2")];
        let current = [replica("ra", "a", "sa"), replica("rb", "b", "sb")];
        let p = plan(
            &nodes,
            &ready(&["sa", "sb"]),
            &BTreeSet::new(),
            &[deployment(1)],
            &current,
        );
        assert_eq!(p.remove, vec!["rb".to_owned()]);
        assert!(p.add.is_empty());
    }
}
