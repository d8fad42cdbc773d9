//! What a gateway watches from the control plane: the API keys it accepts and the replicas
//! each model is served by. The gateway keeps the last copy it got, so it keeps serving when
//! the control plane is unreachable.
//!
//! `GET /api/v1/gateway/config?after=V&wait_s=S` (admin token), long-polled like the agent's
//! desired state.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use wattmesh_domain::ModelKind;

/// The header on which the gateway tells a replica a request's scheduling class
/// (`high`, `normal` or `low`); the engine schedules FCFS within each class.
pub const PRIORITY_HEADER: &str = "x-wattmesh-priority";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GatewayConfig {
    pub version: u64,
    pub keys: Vec<GatewayKey>,
    pub models: Vec<ModelRoute>,
}

/// An accepted API key, by the hex SHA-256 of its secret: the gateway never holds secrets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GatewayKey {
    pub id: String,
    pub tenant: String,
    pub secret_sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ModelRoute {
    pub model: String,
    #[schema(value_type = String)]
    pub kind: ModelKind,
    /// Replicas the control plane believes ready, with where they are.
    pub replicas: Vec<RouteReplica>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RouteReplica {
    pub id: String,
    pub endpoint: String,
    pub site: String,
    pub region: String,
}
