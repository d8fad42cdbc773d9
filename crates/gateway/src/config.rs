//! The config in force: accepted keys by secret hash, and each model's ready replicas. Built
//! from the control plane's [`GatewayConfig`] and swapped whole when a new one arrives, so a
//! request sees one consistent version from start to end.

use std::collections::HashMap;

use wattmesh_proto::gateway::{GatewayConfig, GatewayKey, ModelRoute};

#[derive(Debug, Default)]
pub struct Snapshot {
    /// False until the first config arrives: requests then get 503, not 401.
    pub loaded: bool,
    pub version: u64,
    /// Keys by the hex SHA-256 of their secret.
    pub keys: HashMap<String, GatewayKey>,
    /// Routes by model name.
    pub models: HashMap<String, ModelRoute>,
}

impl Snapshot {
    pub fn from_config(config: GatewayConfig) -> Self {
        Self {
            loaded: true,
            version: config.version,
            keys: config
                .keys
                .into_iter()
                .map(|k| (k.secret_sha256.clone(), k))
                .collect(),
            models: config
                .models
                .into_iter()
                .map(|m| (m.model.clone(), m))
                .collect(),
        }
    }

    /// Every routed replica as `(id, endpoint)`, each once.
    pub fn replica_endpoints(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .models
            .values()
            .flat_map(|m| {
                m.replicas
                    .iter()
                    .map(|r| (r.id.clone(), r.endpoint.clone()))
            })
            .collect();
        out.sort();
        out.dedup_by(|a, b| a.0 == b.0);
        out
    }
}
