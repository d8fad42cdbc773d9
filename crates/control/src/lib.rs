//! wattmesh-control: the control plane service — operator REST API, agent protocol, gateway
//! config feed, and the reconciler that drives the pure scheduler.
//!
//! Layout:
//! - [`ControlConfig`] (`config.rs`), [`open`], [`Control`] (`service.rs`): what the CLI calls.
//! - `error.rs`: [`ControlError`], the one place errors become HTTP responses.
//! - `secrets.rs`: token and API key generation, hashing, the 0600 token files.
//! - `clock.rs`: reading and writing wall times at the edge (RFC 3339, dates, months).
//! - `liveness.rs`: which sites heartbeat on time, and which gateway processes poll the config
//!   (tokio's clock, so tests can pause it).
//! - `plan.rs`: pure — store rows in, `wattmesh_domain::place` called, the replica diff out.
//! - `views.rs`: pure — store rows to API, desired-state and gateway-config shapes.
//! - `invoice.rs`: pure — a month's usage and replica time to an invoice.
//! - `planning.rs`: the live planner's driver: each site with a power model planned every
//!   interval (`wattmesh_domain::planner::live`), the plan stored for its agent.
//! - `accrual.rs`: the task that charges dedicated deployments their replica time.
//! - `reconciler.rs`: the thin driver: snapshot, plan, apply, publish versioned watch state.
//! - `extract.rs`: JSON/query extractors with JSON errors, admin and agent authentication.
//! - `routes/`: the handlers, one module per area; `openapi.rs`: the OpenAPI document.
//!
//! **Architecture invariant:** placement decisions live in `wattmesh_domain`; this crate only
//! gathers snapshots, calls it, and writes the result. **API boundary:** every response body,
//! success or error, is a `wattmesh_proto` type.

mod accrual;
mod clock;
mod config;
mod error;
mod extract;
mod invoice;
mod liveness;
mod openapi;
mod plan;
mod planning;
mod reconciler;
mod routes;
mod secrets;
mod service;
mod views;

pub use config::{ControlConfig, DEFAULT_HEARTBEAT_TIMEOUT};
pub use error::ControlError;
pub use openapi::ApiDoc;
pub use service::{ADMIN_TOKEN_FILE, BOOTSTRAP_TOKEN_FILE, Control, DB_FILE, open};
