//! Wire types shared by every wattmesh component.
//!
//! Layout:
//! - [`openai`]: the customer-facing OpenAI protocol (requests, responses, stream chunks, errors).
//! - [`api`]: the operator REST API of the control plane (`/api/v1`).
//! - [`agent`]: the protocol between site agents and the control plane.
//! - [`gateway`]: what the gateway watches from the control plane (keys, routes, prices).
//! - [`usage`]: what gateways send back: usage events and credit leases.
//! - [`billing`]: the operator's price book, ledgers and usage reports.
//! - [`energy`]: site power samples and demand-response events.
//! - [`plan`]: sites' power models, the live power plan and what agents report of it.
//! - [`pnl`]: Bitcoin market snapshots, DR event terms, the P&L per site and fleet.
//!
//! Only data lives here: no I/O, no behaviour beyond constructors and validation helpers, so
//! that every side of a connection agrees on one definition.

pub mod agent;
pub mod api;
pub mod billing;
pub mod energy;
pub mod gateway;
pub mod openai;
pub mod plan;
pub mod pnl;
pub mod usage;
