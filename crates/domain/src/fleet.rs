//! A snapshot of the fleet's capacity, taken by the control plane from its store and handed
//! to the pure decision functions.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// One node that can host replicas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    /// Unique across the fleet.
    pub name: String,
    pub site: String,
    pub region: String,
    /// Memory available to replicas on this node, in bytes.
    pub memory_bytes: u64,
    /// The site's power price, used to prefer cheaper sites.
    pub power_price_usd_per_mwh: Decimal,
    /// False when the node's agent has missed its heartbeats; nothing new lands there and
    /// what ran there is placed elsewhere.
    pub ready: bool,
    /// True when the site's power plan for the interval has this node off (see
    /// [`nodes_powered`]): like a node that is not ready, nothing lands there and what ran
    /// there is placed elsewhere — the plan gave its power to mining or the grid.
    #[serde(default)]
    pub parked: bool,
}

impl NodeView {
    /// Whether replicas may run here: its agent is heard from and its site's plan has it on.
    pub fn usable(&self) -> bool {
        self.ready && !self.parked
    }
}

/// All nodes the scheduler may use.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FleetView {
    pub nodes: Vec<NodeView>,
}

impl FleetView {
    pub fn node(&self, name: &str) -> Option<&NodeView> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

/// How many of a site's nodes its power plan has on, given each GPU group's planned nodes on
/// (continuous, as the program plans them): their sum rounded up — a node partly used is a
/// node on, its GPUs capped to the part — and at most `nodes`. A sum that is not a number ≥ 0
/// parks nothing: a broken plan must not take a site's replicas away.
pub fn nodes_powered(nodes_on: impl IntoIterator<Item = f64>, nodes: usize) -> usize {
    // Within a millionth of a whole node is that node: the solver's 2.0000000001 is 2.
    const SLACK: f64 = 1e-6;
    let total: f64 = nodes_on.into_iter().sum();
    if !(total.is_finite() && total >= 0.0) {
        return nodes;
    }
    let whole = (total - SLACK).max(0.0).ceil();
    // `whole` is a finite, non-negative integer here; past `nodes` it is capped anyway.
    if whole >= nodes as f64 {
        nodes
    } else {
        whole as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_partly_on_is_on_and_solver_noise_is_not_a_node() {
        let cases: [(&[f64], usize, usize); 9] = [
            (&[], 4, 0),
            (&[0.0], 4, 0),
            (&[1e-9], 4, 0),
            (&[0.3], 4, 1),
            (&[2.0000000001], 4, 2),
            (&[1.5, 1.2], 4, 3),
            (&[9.0], 4, 4),
            (&[f64::NAN], 4, 4),
            (&[-1.0], 3, 3),
        ];
        for (on, nodes, want) in cases {
            assert_eq!(
                nodes_powered(on.iter().copied(), nodes),
                want,
                "{on:?} of {nodes}"
            );
        }
    }
}
