//! The config in force: accepted keys by secret hash, tenants' plans and limits, the prices in
//! force, and each model's ready replicas. Built from the control plane's [`GatewayConfig`] and
//! swapped whole when a new one arrives, so a request sees one consistent version from start to
//! end.

use std::collections::HashMap;
use std::sync::Arc;

use wattmesh_domain::pricing::TokenPrice;
use wattmesh_proto::gateway::{GatewayConfig, GatewayKey, GatewayTenant, ModelRoute};

/// One model's prices in force.
#[derive(Debug, Default)]
struct ModelPrices {
    list: Option<TokenPrice>,
    tenants: HashMap<String, TokenPrice>,
}

#[derive(Debug, Default)]
pub struct Snapshot {
    /// False until the first config arrives: requests then get 503, not 401.
    pub loaded: bool,
    pub version: u64,
    /// This gateway's name, as the control plane knows it.
    pub gateway: String,
    /// How many live gateways share every rate limit (at least 1).
    pub gateways: u32,
    /// Keys by the hex SHA-256 of their secret.
    pub keys: HashMap<String, Arc<GatewayKey>>,
    pub tenants: HashMap<String, GatewayTenant>,
    /// By model: its list price and tenants' overrides (looked up per request, without
    /// building a key).
    prices: HashMap<String, ModelPrices>,
    /// Routes by model name.
    pub models: HashMap<String, ModelRoute>,
}

impl Snapshot {
    pub fn from_config(config: GatewayConfig) -> Self {
        Self {
            loaded: true,
            version: config.version,
            gateway: config.gateway,
            gateways: config.gateways.max(1),
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
            prices: config.prices.into_iter().fold(
                HashMap::<String, ModelPrices>::new(),
                |mut by_model, p| {
                    let price = TokenPrice {
                        input_per_1m: p.input_per_1m,
                        output_per_1m: p.output_per_1m,
                    };
                    let slot = by_model.entry(p.model).or_default();
                    match p.tenant {
                        Some(t) => {
                            slot.tenants.insert(t, price);
                        }
                        None => slot.list = Some(price),
                    }
                    by_model
                },
            ),
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
        self.prices
            .get(model)
            .and_then(|m| m.tenants.get(tenant).copied().or(m.list))
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

#[cfg(test)]
mod tests {
    use super::*;
    use wattmesh_proto::gateway::GatewayPrice;

    #[test]
    fn a_tenant_pays_its_override_else_the_list_price_else_nothing() {
        let price = |model: &str, tenant: Option<&str>, input: i64| GatewayPrice {
            model: model.into(),
            tenant: tenant.map(str::to_owned),
            input_per_1m: input.into(),
            output_per_1m: input.into(),
        };
        let snap = Snapshot::from_config(GatewayConfig {
            prices: vec![
                price("m", None, 2),
                price("m", Some("acme"), 1),
                price("n", Some("acme"), 5),
            ],
            ..GatewayConfig::default()
        });
        let input = |model, tenant| snap.price_for(model, tenant).input_per_1m;
        assert_eq!(input("m", "acme"), 1.into());
        assert_eq!(input("m", "globex"), 2.into());
        assert_eq!(input("n", "globex"), 0.into());
        assert_eq!(input("other", "acme"), 0.into());
    }
}
