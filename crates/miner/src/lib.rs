//! Wattmesh's miners: clients of their own protocols, fleet operations over hundreds of them,
//! and a simulator that speaks the same protocols.
//!
//! We wrote our own client rather than use `asic-rs` (ARCHITECTURE.md says why): it reuses
//! other sessions, never logs off, cannot join commands, drops error codes, and has no fleet
//! operations.
//!
//! Layout:
//! - [`api`]: the CGMiner API's wire format (requests, NUL-terminated JSON replies, codes). Pure.
//! - [`client`]: [`MinerClient`], one request per TCP connection, bounded by a timeout.
//! - [`luxos`]: LuxOS sessions (`logon`/`logoff`), `curtail` sleep/wakeup, `profileset`.
//! - [`fleet`]: sleep, staggered wake and hold-asleep over many miners, bounded in parallelism,
//!   each confirmed by the miner's own telemetry (`fleet::hold`: holding them asleep).
//! - [`meter`]: the site meter over Modbus TCP: register map, client, simulated meter.
//! - [`sim`]: the miner simulator: hundreds of units, each on its own port, with the physics
//!   of `wattmesh_domain::mining`.

pub mod api;
pub mod client;
pub mod fleet;
pub mod luxos;
pub mod meter;
pub mod sim;

pub use client::{MinerClient, MinerError};
pub use luxos::{Curtail, SessionId, with_session};
