//! The HTTP surface: every route under `/api/v1`, the OpenAPI document, and the JSON answers
//! for unknown routes and wrong methods. One module per area:
//! - `fleet`: regions, sites, nodes; `workloads`: models, deployments, replicas, status;
//! - `access`: tenants, API keys, gateway credentials; `billing`: prices, top-ups, ledgers,
//!   usage reports;
//! - `energy`: demand-response events (and their agents' acknowledgements);
//! - `plans`: sites' power models and the live power plan (and their agents' reports);
//! - `pnl`: Bitcoin market snapshots, what DR events pay, the P&L per site and fleet;
//! - `agent`: the agent protocol (agent tokens); `gateway`: the config feed, credit leases and
//!   usage ingest (gateway tokens).

mod access;
mod agent;
mod billing;
mod customer;
mod energy;
mod fleet;
mod gateway;
mod plans;
mod pnl;
mod workloads;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post, put};
use axum::{Json, Router, middleware};
use tokio::sync::watch;
use wattmesh_proto::agent::WatchQuery;
use wattmesh_proto::api::API_PREFIX;

use crate::ControlError;
use crate::extract::require_admin;
use crate::openapi::openapi_json;
use crate::reconciler::Published;
use crate::service::{AppState, BODY_LIMIT_BYTES, MAX_WATCH};

pub(crate) use access::*;
pub(crate) use agent::*;
pub(crate) use billing::*;
pub(crate) use energy::*;
pub(crate) use fleet::*;
pub(crate) use gateway::*;
pub(crate) use plans::*;
pub(crate) use pnl::*;
pub(crate) use workloads::*;

fn v1(path: &str) -> String {
    format!("{API_PREFIX}{path}")
}

pub(crate) fn router(state: AppState) -> Router {
    let operator = Router::new()
        .route(&v1("/regions"), post(create_region).get(list_regions))
        .route(&v1("/regions/{name}"), delete(delete_region))
        .route(&v1("/sites"), post(create_site).get(list_sites))
        .route(&v1("/sites/{name}"), get(get_site))
        .route(&v1("/nodes"), post(create_node).get(list_nodes))
        .route(&v1("/models"), post(create_model).get(list_models))
        .route(
            &v1("/deployments"),
            post(create_deployment).get(list_deployments),
        )
        .route(
            &v1("/deployments/{name}"),
            get(get_deployment)
                .patch(scale_deployment)
                .delete(delete_deployment),
        )
        .route(&v1("/replicas"), get(list_replicas))
        .route(&v1("/tenants"), post(create_tenant).get(list_tenants))
        .route(&v1("/tenants/{name}"), get(get_tenant))
        .route(&v1("/tenants/{name}/limits"), put(set_tenant_limits))
        .route(&v1("/tenants/{name}/top-ups"), post(top_up))
        .route(&v1("/tenants/{name}/ledger"), get(ledger))
        .route(&v1("/keys"), post(create_key).get(list_keys))
        .route(&v1("/keys/{id}"), delete(revoke_key))
        .route(&v1("/gateways"), post(create_gateway).get(list_gateways))
        .route(&v1("/gateways/{name}/rotate"), post(rotate_gateway))
        .route(&v1("/prices"), post(set_price).get(list_prices))
        .route(
            &v1("/prices/dedicated"),
            post(set_dedicated_price).get(list_dedicated_prices),
        )
        .route(&v1("/tenants/{name}/invoices"), get(list_invoices))
        .route(&v1("/tenants/{name}/invoices/{period}"), get(get_invoice))
        .route(&v1("/usage"), get(usage_report))
        .route(&v1("/status"), get(status))
        .route(&v1("/sites/{name}/dr-events"), post(create_dr_event))
        .route(&v1("/dr-events"), get(list_dr_events))
        .route(&v1("/dr-events/{id}"), get(get_dr_event))
        .route(&v1("/dr-events/{id}/cancel"), post(cancel_dr_event))
        .route(&v1("/dr-events/{id}/terms"), put(set_dr_terms))
        .route(&v1("/market"), post(set_market).get(list_market))
        .route(&v1("/pnl"), get(pnl_report))
        .route(
            &v1("/sites/{name}/power-model"),
            put(set_power_model).get(get_power_model),
        )
        .route(
            &v1("/sites/{name}/prices"),
            put(import_prices).get(get_prices),
        )
        .route(&v1("/sites/{name}/plans"), post(plan_now).get(list_plans))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin));
    let agents = Router::new()
        .route(&v1("/agent/register"), post(register))
        .route(&v1("/agent/heartbeat"), post(heartbeat))
        .route(&v1("/agent/desired"), get(desired))
        .route(&v1("/agent/dr-events/{id}/acks"), post(dr_acks))
        .route(&v1("/agent/plans/{id}/report"), post(plan_report));
    // Each of these authenticates its gateway itself (`GatewayCaller`).
    let gateways = Router::new()
        .route(&v1("/gateway/config"), get(gateway_config))
        .route(&v1("/gateway/instances/{instance}"), delete(leave_gateway))
        .route(&v1("/gateway/leases"), post(lease))
        .route(&v1("/usage/batches"), post(ingest_usage));
    // Customers' own usage and costs, with their API key (passed through by the gateway).
    let customers = Router::new()
        .route(
            "/v1/organization/usage/completions",
            get(customer::usage_completions),
        )
        .route(
            "/v1/organization/usage/embeddings",
            get(customer::usage_embeddings),
        )
        .route("/v1/organization/costs", get(customer::costs));
    operator
        .merge(agents)
        .merge(gateways)
        .merge(customers)
        .route("/api/openapi.json", get(openapi_json))
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

async fn unknown_route() -> ControlError {
    ControlError::NotFound("no such route".into())
}

async fn wrong_method() -> ControlError {
    ControlError::MethodNotAllowed
}

/// Waits while the watched version equals `after` (at most `wait_s`, capped at
/// [`MAX_WATCH`], or until shutdown), then returns what is published. Without `after` it
/// answers at once.
async fn long_poll(
    state: &AppState,
    query: WatchQuery,
    version: impl Fn(&Published) -> u64,
) -> Arc<Published> {
    let mut rx: watch::Receiver<Arc<Published>> = state.reconciler.subscribe();
    let Some(after) = query.after else {
        return rx.borrow().clone();
    };
    let wait = Duration::from_secs(query.wait_s.unwrap_or(MAX_WATCH.as_secs())).min(MAX_WATCH);
    let changed = async {
        // An error means the reconciler is gone (shutdown); answer with what we have.
        let _ = rx.wait_for(|p| version(p) != after).await;
    };
    tokio::select! {
        _ = tokio::time::timeout(wait, changed) => {}
        _ = state.stop.cancelled() => {}
    }
    rx.borrow().clone()
}

/// `Json` of a list of API objects: a named alias keeps handler signatures short.
type JsonList<T> = Json<Vec<T>>;
