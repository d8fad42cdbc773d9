//! The OpenAPI document of the control plane, served without auth at `/api/openapi.json` so
//! clients can be generated from it. Paths come from the handlers' `#[utoipa::path]`s, schemas
//! from the `wattmesh_proto` DTOs.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use wattmesh_proto::{agent, api, billing, energy, gateway, plan, pnl, usage};

use crate::routes;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "wattmesh control plane",
        description = "Operator REST API, agent protocol and gateway config feed. Every error \
                       is an `ApiError` with a stable `code`."
    ),
    paths(
        routes::create_region, routes::list_regions, routes::delete_region,
        routes::create_site, routes::list_sites, routes::get_site,
        routes::create_node, routes::list_nodes,
        routes::create_model, routes::list_models,
        routes::create_deployment, routes::list_deployments, routes::get_deployment,
        routes::scale_deployment, routes::delete_deployment,
        routes::list_replicas, routes::status,
        routes::create_tenant, routes::list_tenants, routes::get_tenant,
        routes::set_tenant_limits, routes::top_up, routes::ledger,
        routes::create_key, routes::list_keys, routes::revoke_key,
        routes::create_gateway, routes::list_gateways, routes::rotate_gateway,
        routes::set_price, routes::list_prices, routes::usage_report,
        routes::set_dedicated_price, routes::list_dedicated_prices,
        routes::list_invoices, routes::get_invoice,
        routes::create_dr_event, routes::list_dr_events, routes::get_dr_event,
        routes::cancel_dr_event,
        routes::set_market, routes::list_market, routes::set_dr_terms, routes::pnl_report,
        routes::set_power_model, routes::get_power_model, routes::import_prices, routes::get_prices, routes::plan_now, routes::list_plans,
        routes::plan_report,
        routes::register, routes::heartbeat, routes::desired, routes::dr_acks,
        routes::gateway_config, routes::leave_gateway, routes::lease, routes::ingest_usage,
    ),
    components(schemas(
        api::Region, api::SiteSpec, api::Site, api::NodeSpec, api::Node, api::Model,
        api::DeploymentSpec, api::DeploymentPatch, api::Deployment, api::ReplicaState,
        api::Replica, api::BillingPlan, api::Limits, api::TenantSpec, api::Tenant, api::TopUp,
        api::KeyPriority, api::KeyStatus, api::ApiKeySpec, api::ApiKey, api::ApiKeyCreated,
        api::GatewaySpec, api::Gateway, api::GatewayCreated,
        api::FleetStatus, api::ApiError, api::ApiErrorDetail,
        billing::PriceSpec, billing::Price, billing::LedgerKind, billing::LedgerEntry,
        billing::UsageRow, billing::DedicatedPriceSpec, billing::DedicatedPrice,
        billing::InvoiceStatus, billing::LineKind, billing::InvoiceLine, billing::Invoice,
        usage::UsageEvent, usage::Outcome, usage::UsageBatch, usage::IngestReceipt,
        usage::LeaseRequest, usage::LeaseGrant,
        agent::RegisterRequest, agent::RegisterResponse, agent::NodeReport, agent::Heartbeat,
        agent::ReplicaReport, agent::HeartbeatAck, agent::DesiredState, agent::ReplicaAssignment,
        energy::PowerSample, energy::MinerCounts, energy::DrEventSpec, energy::DrStatus,
        energy::DrEvent, energy::DrEventReport, energy::DrOutcome, energy::DrDirective,
        energy::DrAcks, energy::MinerAck,
        pnl::MarketSpec, pnl::MarketSnapshot, pnl::DrTerms, pnl::PnlLine, pnl::Metering,
        pnl::SitePnl, pnl::Treasury, pnl::TreasuryRow, pnl::PnlReport,
        plan::PowerModel, plan::PowerPlan, plan::PriceImport, plan::PriceImportReceipt,
        plan::SitePrice, plan::SitePrices, plan::PlanDirective, plan::AsicTarget, plan::GpuTarget,
        plan::PlanOutcome, plan::PlanReport, plan::GpuCapReport,
        gateway::GatewayConfig, gateway::GatewayKey, gateway::GatewayTenant,
        gateway::GatewayPrice, gateway::ModelRoute, gateway::RouteReplica,
    )),
    modifiers(&BearerTokens),
    security(("admin_token" = [])),
)]
pub struct ApiDoc;

/// Declares the four bearer tokens: admin (operator routes), bootstrap (agent registration),
/// agent (the other agent calls), gateway (config feed, leases, usage batches).
struct BearerTokens;

impl Modify for BearerTokens {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        for name in [
            "admin_token",
            "bootstrap_token",
            "agent_token",
            "gateway_token",
        ] {
            components.add_security_scheme(
                name,
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
    }
}

pub(crate) async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
