//! The wattmesh domain: the nouns of the fleet and the pure decisions made over them.
//!
//! Layout:
//! - [`model`]: models and what they need to run (kind, memory).
//! - [`fleet`]: a plain-data snapshot of regions, sites and nodes, as the scheduler sees them.
//! - [`scheduler`]: places deployment replicas on nodes.
//! - [`pricing`]: rating usage, a request's worst case, the price in force, credit leases.
//! - [`limits`]: rate-limit token buckets (requests and tokens per minute).
//! - [`mining`]: ASIC models and their physics; hashprice, hashcost, break-even power price.
//! - [`market`]: electricity price series (tariff, CSV, synthetic ERCOT-like traces) and the
//!   Bitcoin market's hashprice per interval.
//! - [`dr`]: demand-response events: targets, windows, what to shed, whether a target held.
//! - [`gpu`]: GPU power caps from a plan's GPU group draw.
//! - [`planner`]: the linear program that splits a site's power among GPUs, ASICs and the grid,
//!   its rolling horizon, and the baselines it is measured against.
//! - [`pnl`]: one P&L per site and for the fleet, booked from the meter, the miners, billed
//!   usage and DR events at the Bitcoin market in force.
//!
//! **Architecture invariant:** nothing here performs I/O, reads a clock or spawns a task. Every
//! decision is a deterministic function of its inputs, so the control plane, the gateway and
//! simulators run the same code and tests need no fixtures beyond plain values.

pub mod dr;
pub mod fleet;
pub mod gpu;
pub mod limits;
pub mod market;
pub mod mining;
pub mod model;
pub mod planner;
pub mod pnl;
pub mod pricing;
pub mod scheduler;

pub use fleet::{FleetView, NodeView};
pub use model::ModelKind;
pub use scheduler::{DeploymentDemand, Placement, Schedule, place};
