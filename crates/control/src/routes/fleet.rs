//! Regions, sites and nodes: the operator's view of the fleet's capacity.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use wattmesh_proto::api::{ApiError, Node, NodeSpec, Region, Site, SiteSpec};

use super::JsonList;
use crate::ControlError;
use crate::extract::Body;
use crate::service::AppState;
use crate::views;

/// Sites as the operator sees them: readiness and the last power sample applied.
pub(crate) async fn site_views(
    s: &AppState,
    sites: &[wattmesh_store::SiteRecord],
) -> Result<Vec<Site>, ControlError> {
    let mut out = Vec::with_capacity(sites.len());
    for r in sites {
        let power = s.store.last_power_sample(&r.name).await?;
        out.push(views::site(
            r,
            s.reconciler.liveness.is_ready(&r.name),
            power,
        ));
    }
    Ok(out)
}

#[utoipa::path(post, path = "/api/v1/regions", tag = "fleet", request_body = Region,
    responses((status = 201, body = Region), (status = 409, body = ApiError)))]
pub(crate) async fn create_region(
    State(s): State<AppState>,
    Body(region): Body<Region>,
) -> Result<(StatusCode, Json<Region>), ControlError> {
    let region = s.store.create_region(&region.name).await?;
    Ok((StatusCode::CREATED, Json(region)))
}

#[utoipa::path(get, path = "/api/v1/regions", tag = "fleet",
    responses((status = 200, body = Vec<Region>)))]
pub(crate) async fn list_regions(
    State(s): State<AppState>,
) -> Result<JsonList<Region>, ControlError> {
    Ok(Json(s.store.list_regions().await?))
}

#[utoipa::path(delete, path = "/api/v1/regions/{name}", tag = "fleet",
    params(("name" = String, Path, description = "Region name")),
    responses((status = 204), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub(crate) async fn delete_region(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ControlError> {
    s.store.delete_region(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/sites", tag = "fleet", request_body = SiteSpec,
    responses((status = 201, body = Site), (status = 404, body = ApiError, description = "Unknown region"),
        (status = 409, body = ApiError)))]
pub(crate) async fn create_site(
    State(s): State<AppState>,
    Body(spec): Body<SiteSpec>,
) -> Result<(StatusCode, Json<Site>), ControlError> {
    let site = s.store.create_site(&spec).await?;
    s.reconciler.nudge().await;
    let ready = s.reconciler.liveness.is_ready(&site.name);
    Ok((StatusCode::CREATED, Json(views::site(&site, ready, None))))
}

#[utoipa::path(get, path = "/api/v1/sites", tag = "fleet",
    responses((status = 200, body = Vec<Site>)))]
pub(crate) async fn list_sites(State(s): State<AppState>) -> Result<JsonList<Site>, ControlError> {
    let sites = s.store.list_sites().await?;
    Ok(Json(site_views(&s, &sites).await?))
}

#[utoipa::path(get, path = "/api/v1/sites/{name}", tag = "fleet",
    params(("name" = String, Path, description = "Site name")),
    responses((status = 200, body = Site), (status = 404, body = ApiError)))]
pub(crate) async fn get_site(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Site>, ControlError> {
    let site = s.store.get_site(&name).await?;
    let power = s.store.last_power_sample(&site.name).await?;
    Ok(Json(views::site(
        &site,
        s.reconciler.liveness.is_ready(&site.name),
        power,
    )))
}

#[utoipa::path(post, path = "/api/v1/nodes", tag = "fleet", request_body = NodeSpec,
    responses((status = 201, body = Node), (status = 404, body = ApiError, description = "Unknown site"),
        (status = 409, body = ApiError)))]
pub(crate) async fn create_node(
    State(s): State<AppState>,
    Body(spec): Body<NodeSpec>,
) -> Result<(StatusCode, Json<Node>), ControlError> {
    let node = s.store.create_node(&spec).await?;
    s.reconciler.nudge().await;
    let ready = s.reconciler.liveness.is_ready(&node.site);
    let parked = &s.reconciler.current().parked;
    Ok((StatusCode::CREATED, Json(views::node(&node, ready, parked))))
}

#[utoipa::path(get, path = "/api/v1/nodes", tag = "fleet",
    responses((status = 200, body = Vec<Node>)))]
pub(crate) async fn list_nodes(State(s): State<AppState>) -> Result<JsonList<Node>, ControlError> {
    let live = &s.reconciler.liveness;
    let published = s.reconciler.current();
    let nodes = s.store.list_nodes().await?;
    Ok(Json(
        nodes
            .iter()
            .map(|n| views::node(n, live.is_ready(&n.site), &published.parked))
            .collect(),
    ))
}
