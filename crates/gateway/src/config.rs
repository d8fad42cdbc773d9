//! The config in force: accepted keys by secret hash, tenants' plans and limits, the prices in
//! force, and each model's ready replicas. Built from the control plane's [`GatewayConfig`] and
//! swapped whole when a new one arrives, so a request sees one consistent version from start to
//! end.

use std::collections::HashMap;
use std::sync::Arc;

use wattmesh_domain::pricing::TokenPrice;
use wattmesh_proto::gateway::{GatewayConfig, GatewayKey, GatewayTenant, ModelRoute};

#[derive(Debug, Default)]
pub struct Snapshot {
    /// False until the first config arrives: requests then get 503, not 401.
    pub loaded: bool,
    pub version: u64,
    /// This gateway's name, as the control plane knows it.
    pub gateway: String,
    /// Keys by the hex SHA-256 of their secret.
    pub keys: HashMap<String, Arc<GatewayKey>>,
    pub tenants: HashMap<String, GatewayTenant>,
    /// By (model, tenant); `None` is the list price.
    prices: HashMap<(String, Option<String>), TokenPrice>,
    /// Routes by model name.
    pub models: HashMap<String, ModelRoute>,
}

impl Snapshot {
    pub fn from_config(config: GatewayConfig) -> Self {
        Self {
            loaded: true,
            version: config.version,
            gateway: config.gateway,
            keys: config
                .keys
                .into_iter()
                .map(|k| (k.secret_sha256.clone(), Arc::new(k)))
                .collect(),
            tenants: config
                .tenants
                .into_iter()
                .map(|t| (t.name.clone(), t))
                .collect(),
            prices: config
                .prices
                .into_iter()
                .map(|p| {
                    (
                        (p.model, p.tenant),
                        TokenPrice {
                            input_per_1m: p.input_per_1m,
                            output_per_1m: p.output_per_1m,
                        },
                    )
                })
                .collect(),
            models: config
                .models
                .into_iter()
                .map(|m| (m.model.clone(), m))
                .collect(),
        }
    }

    /// What `tenant` pays for `model` now: its override, else the list price, else nothing
    /// (no price set: the model is free).
    pub fn price_for(&self, model: &str, tenant: &str) -> TokenPrice {
        let key = |t: Option<&str>| (model.to_owned(), t.map(str::to_owned));
        self.prices
            .get(&key(Some(tenant)))
            .or_else(|| self.prices.get(&key(None)))
            .copied()
            .unwrap_or(TokenPrice::FREE)
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
