//! Scheduler v1: places each deployment's replicas on nodes.
//!
//! Rules, in order of strength:
//! 1. a replica lands only on a usable node (ready, and on in its site's power plan) with
//!    enough free memory;
//! 2. never two replicas of one deployment on one node;
//! 3. replicas already placed validly stay where they are (no churn on every reconcile);
//! 4. new replicas go to the region the deployment uses least (two replicas → two regions
//!    when the fleet has them), then to the cheaper site, then to the node with the most free
//!    memory, then by name, so the result is deterministic.
//!
//! A pure function: no I/O and no clock; the control plane's reconciler drives it.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::fleet::FleetView;

/// What a deployment wants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentDemand {
    pub name: String,
    pub replicas: u32,
    /// Memory one replica needs, in bytes.
    pub memory_bytes: u64,
}

/// One replica of a deployment on a node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Placement {
    pub deployment: String,
    pub node: String,
}

/// The scheduler's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    /// Every replica that should exist, existing ones first, sorted by deployment then node.
    pub placements: Vec<Placement>,
    /// Deployments that could not get all their replicas, with how many are missing.
    pub unschedulable: BTreeMap<String, u32>,
}

/// Places `want` on `fleet`, keeping the valid part of `current`.
pub fn place(fleet: &FleetView, want: &[DeploymentDemand], current: &[Placement]) -> Schedule {
    let mut free: HashMap<&str, u64> = fleet
        .nodes
        .iter()
        .filter(|n| n.usable())
        .map(|n| (n.name.as_str(), n.memory_bytes))
        .collect();

    let mut deployments: Vec<&DeploymentDemand> = want.iter().collect();
    deployments.sort_by(|a, b| a.name.cmp(&b.name));
    deployments.dedup_by(|a, b| a.name == b.name);

    // Existing placements are accounted first, so a new replica never evicts a running one.
    let mut kept: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut current_sorted: Vec<&Placement> = current.iter().collect();
    current_sorted.sort();
    for d in &deployments {
        let nodes = kept.entry(d.name.as_str()).or_default();
        for p in current_sorted.iter().filter(|p| p.deployment == d.name) {
            if nodes.len() as u32 >= d.replicas || nodes.contains(&p.node.as_str()) {
                continue;
            }
            let Some(room) = free.get_mut(p.node.as_str()) else {
                continue;
            };
            if *room < d.memory_bytes {
                continue;
            }
            *room -= d.memory_bytes;
            nodes.push(p.node.as_str());
        }
    }

    let mut schedule = Schedule::default();
    for d in &deployments {
        let mut on: Vec<&str> = kept.remove(d.name.as_str()).unwrap_or_default();
        while (on.len() as u32) < d.replicas {
            let used: HashSet<&str> = on.iter().copied().collect();
            let mut region_use: HashMap<&str, usize> = HashMap::new();
            for n in &on {
                if let Some(node) = fleet.node(n) {
                    *region_use.entry(node.region.as_str()).or_default() += 1;
                }
            }
            let best = fleet
                .nodes
                .iter()
                .filter(|n| n.usable() && !used.contains(n.name.as_str()))
                .filter(|n| {
                    free.get(n.name.as_str())
                        .is_some_and(|&m| m >= d.memory_bytes)
                })
                .min_by(|a, b| {
                    let ka = region_use.get(a.region.as_str()).copied().unwrap_or(0);
                    let kb = region_use.get(b.region.as_str()).copied().unwrap_or(0);
                    let fa = free.get(a.name.as_str()).copied().unwrap_or(0);
                    let fb = free.get(b.name.as_str()).copied().unwrap_or(0);
                    ka.cmp(&kb)
                        .then(a.power_price_usd_per_mwh.cmp(&b.power_price_usd_per_mwh))
                        .then(fb.cmp(&fa))
                        .then(a.name.cmp(&b.name))
                });
            let Some(node) = best else {
                schedule
                    .unschedulable
                    .insert(d.name.clone(), d.replicas - on.len() as u32);
                break;
            };
            if let Some(room) = free.get_mut(node.name.as_str()) {
                *room -= d.memory_bytes;
            }
            on.push(node.name.as_str());
        }
        schedule
            .placements
            .extend(on.into_iter().map(|n| Placement {
                deployment: d.name.clone(),
                node: n.to_owned(),
            }));
    }
    schedule.placements.sort();
    schedule
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::NodeView;
    use proptest::prelude::*;
    use rust_decimal::Decimal;

    const GIB: u64 = 1 << 30;

    fn node(name: &str, region: &str, mem_gib: u64, price: i64) -> NodeView {
        NodeView {
            name: name.into(),
            site: format!("site-{name}"),
            region: region.into(),
            memory_bytes: mem_gib * GIB,
            power_price_usd_per_mwh: Decimal::from(price),
            ready: true,
            parked: false,
        }
    }

    fn demand(name: &str, replicas: u32, mem_gib: u64) -> DeploymentDemand {
        DeploymentDemand {
            name: name.into(),
            replicas,
            memory_bytes: mem_gib * GIB,
        }
    }

    fn nodes_of(s: &Schedule, deployment: &str) -> Vec<String> {
        s.placements
            .iter()
            .filter(|p| p.deployment == deployment)
            .map(|p| p.node.clone())
            .collect()
    }

    #[test]
    fn two_replicas_go_to_two_regions_then_cheaper_site() {
        let fleet = FleetView {
            nodes: vec![
                node("us-a", "us", 8, 40),
                node("us-b", "us", 8, 20),
                node("me-a", "me", 8, 30),
                node("af-a", "af", 8, 25),
            ],
        };
        let s = place(&fleet, &[demand("chat", 2, 1)], &[]);
        // us-b is the cheapest overall; the second replica avoids region us and takes af-a.
        assert_eq!(nodes_of(&s, "chat"), vec!["af-a", "us-b"]);
        assert!(s.unschedulable.is_empty());
    }

    #[test]
    fn existing_placements_stay_and_lost_nodes_are_replaced() {
        let mut fleet = FleetView {
            nodes: vec![
                node("a", "r1", 8, 50),
                node("b", "r2", 8, 50),
                node("c", "r3", 8, 10),
            ],
        };
        let current = vec![
            Placement {
                deployment: "chat".into(),
                node: "a".into(),
            },
            Placement {
                deployment: "chat".into(),
                node: "b".into(),
            },
        ];
        let s = place(&fleet, &[demand("chat", 2, 1)], &current);
        assert_eq!(
            nodes_of(&s, "chat"),
            vec!["a", "b"],
            "no churn toward the cheaper node"
        );
        fleet.nodes[1].ready = false;
        let s = place(&fleet, &[demand("chat", 2, 1)], &current);
        assert_eq!(nodes_of(&s, "chat"), vec!["a", "c"]);
    }

    #[test]
    fn a_node_its_plan_parks_is_left_like_a_lost_one() {
        let mut fleet = FleetView {
            nodes: vec![node("a", "r1", 8, 50), node("b", "r2", 8, 10)],
        };
        let on_b = vec![Placement {
            deployment: "chat".into(),
            node: "b".into(),
        }];
        fleet.nodes[1].parked = true;
        let s = place(&fleet, &[demand("chat", 1, 1)], &on_b);
        assert_eq!(nodes_of(&s, "chat"), vec!["a"], "moved off the parked node");
        // Nowhere else to go: unschedulable, never placed on the parked node.
        fleet.nodes[0].parked = true;
        let s = place(&fleet, &[demand("chat", 1, 1)], &on_b);
        assert!(nodes_of(&s, "chat").is_empty());
        assert_eq!(s.unschedulable.get("chat"), Some(&1));
    }

    #[test]
    fn too_little_room_is_reported_not_overcommitted() {
        let fleet = FleetView {
            nodes: vec![node("a", "r1", 3, 1), node("b", "r2", 1, 1)],
        };
        let s = place(&fleet, &[demand("big", 3, 2)], &[]);
        assert_eq!(nodes_of(&s, "big"), vec!["a"]);
        assert_eq!(s.unschedulable.get("big"), Some(&2));
    }

    #[test]
    fn scale_down_keeps_the_first_replicas() {
        let fleet = FleetView {
            nodes: vec![node("a", "r1", 8, 1), node("b", "r2", 8, 1)],
        };
        let current = vec![
            Placement {
                deployment: "e".into(),
                node: "a".into(),
            },
            Placement {
                deployment: "e".into(),
                node: "b".into(),
            },
        ];
        let s = place(&fleet, &[demand("e", 1, 1)], &current);
        assert_eq!(nodes_of(&s, "e"), vec!["a"]);
    }

    fn arb_fleet() -> impl Strategy<Value = FleetView> {
        prop::collection::vec(
            (
                0u8..4,
                0u64..6,
                0i64..100,
                prop::bool::weighted(0.85),
                prop::bool::weighted(0.15),
            ),
            0..8,
        )
        .prop_map(|nodes| FleetView {
            nodes: nodes
                .into_iter()
                .enumerate()
                .map(|(i, (region, mem, price, ready, parked))| NodeView {
                    ready,
                    parked,
                    ..node(&format!("n{i}"), &format!("r{region}"), mem, price)
                })
                .collect(),
        })
    }

    fn arb_want() -> impl Strategy<Value = Vec<DeploymentDemand>> {
        prop::collection::vec((0u32..4, 0u64..3), 0..4).prop_map(|ds| {
            ds.into_iter()
                .enumerate()
                .map(|(i, (r, m))| demand(&format!("d{i}"), r, m))
                .collect()
        })
    }

    fn arb_current() -> impl Strategy<Value = Vec<Placement>> {
        prop::collection::vec((0usize..4, 0usize..8), 0..10).prop_map(|ps| {
            ps.into_iter()
                .map(|(d, n)| Placement {
                    deployment: format!("d{d}"),
                    node: format!("n{n}"),
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn placements_respect_every_hard_rule(
            fleet in arb_fleet(), want in arb_want(), current in arb_current()
        ) {
            let s = place(&fleet, &want, &current);
            let mut seen = HashSet::new();
            let mut used: HashMap<&str, u64> = HashMap::new();
            for p in &s.placements {
                prop_assert!(seen.insert((&p.deployment, &p.node)), "two replicas on one node");
                let n = fleet.node(&p.node).expect("placed on a known node");
                prop_assert!(n.usable(), "placed on a node that is not ready or is parked");
                let d = want.iter().find(|d| d.name == p.deployment).expect("wanted");
                *used.entry(n.name.as_str()).or_default() += d.memory_bytes;
            }
            for (n, bytes) in used {
                prop_assert!(bytes <= fleet.node(n).unwrap().memory_bytes, "memory overcommitted");
            }
            for d in &want {
                let placed = nodes_of(&s, &d.name).len() as u32;
                let missing = s.unschedulable.get(&d.name).copied().unwrap_or(0);
                prop_assert_eq!(placed + missing, d.replicas);
            }
        }

        #[test]
        fn deterministic_and_stable(
            fleet in arb_fleet(), want in arb_want(), current in arb_current()
        ) {
            let first = place(&fleet, &want, &current);
            prop_assert_eq!(&first, &place(&fleet, &want, &current));
            // Feeding the answer back changes nothing: a reconcile loop converges at once.
            prop_assert_eq!(&first, &place(&fleet, &want, &first.placements));
        }

        #[test]
        fn spreads_over_regions_when_it_can(fleet in arb_fleet(), mem in 0u64..2) {
            let s = place(&fleet, &[demand("d", 2, mem)], &[]);
            let fits: HashSet<&str> = fleet.nodes.iter()
                .filter(|n| n.usable() && n.memory_bytes >= mem * GIB)
                .map(|n| n.region.as_str()).collect();
            let regions: HashSet<String> = nodes_of(&s, "d").iter()
                .map(|n| fleet.node(n).unwrap().region.clone()).collect();
            prop_assert_eq!(regions.len(), fits.len().min(2));
        }
    }
}
