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
