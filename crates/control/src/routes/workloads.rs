//! Models, deployments and replicas — what runs where — and the fleet status summary.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use wattmesh_proto::api::{
    ApiError, Deployment, DeploymentPatch, DeploymentSpec, FleetStatus, Model, Replica,
};

use super::JsonList;
use crate::ControlError;
use crate::extract::Body;
use crate::service::AppState;
use crate::views;

#[utoipa::path(post, path = "/api/v1/models", tag = "workloads", request_body = Model,
    responses((status = 201, body = Model), (status = 409, body = ApiError)))]
pub(crate) async fn create_model(
    State(s): State<AppState>,
    Body(model): Body<Model>,
) -> Result<(StatusCode, Json<Model>), ControlError> {
    Ok((
        StatusCode::CREATED,
        Json(s.store.create_model(&model).await?),
    ))
}

#[utoipa::path(get, path = "/api/v1/models", tag = "workloads",
    responses((status = 200, body = Vec<Model>)))]
pub(crate) async fn list_models(
    State(s): State<AppState>,
) -> Result<JsonList<Model>, ControlError> {
    Ok(Json(s.store.list_models().await?))
}

#[utoipa::path(post, path = "/api/v1/deployments", tag = "workloads", request_body = DeploymentSpec,
    responses((status = 201, body = Deployment), (status = 404, body = ApiError, description = "Unknown model"),
        (status = 409, body = ApiError)))]
pub(crate) async fn create_deployment(
    State(s): State<AppState>,
    Body(spec): Body<DeploymentSpec>,
) -> Result<(StatusCode, Json<Deployment>), ControlError> {
    let d = s.store.create_deployment(&spec).await?;
    s.reconciler.nudge().await;
    Ok((
        StatusCode::CREATED,
        Json(views::deployment(&d, &s.reconciler.current().unschedulable)),
    ))
}

#[utoipa::path(get, path = "/api/v1/deployments", tag = "workloads",
    responses((status = 200, body = Vec<Deployment>)))]
pub(crate) async fn list_deployments(
    State(s): State<AppState>,
) -> Result<JsonList<Deployment>, ControlError> {
    let published = s.reconciler.current();
    let ds = s.store.list_deployments().await?;
    Ok(Json(
        ds.iter()
            .map(|d| views::deployment(d, &published.unschedulable))
            .collect(),
    ))
}

#[utoipa::path(get, path = "/api/v1/deployments/{name}", tag = "workloads",
    params(("name" = String, Path, description = "Deployment name")),
    responses((status = 200, body = Deployment), (status = 404, body = ApiError)))]
pub(crate) async fn get_deployment(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Deployment>, ControlError> {
    let d = s.store.get_deployment(&name).await?;
    Ok(Json(views::deployment(
        &d,
        &s.reconciler.current().unschedulable,
    )))
}

#[utoipa::path(patch, path = "/api/v1/deployments/{name}", tag = "workloads",
    params(("name" = String, Path, description = "Deployment name")),
    request_body = DeploymentPatch,
    responses((status = 200, body = Deployment), (status = 404, body = ApiError)))]
pub(crate) async fn scale_deployment(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Body(patch): Body<DeploymentPatch>,
) -> Result<Json<Deployment>, ControlError> {
    let d = s.store.scale_deployment(&name, patch.replicas).await?;
    s.reconciler.nudge().await;
    Ok(Json(views::deployment(
        &d,
        &s.reconciler.current().unschedulable,
    )))
}

#[utoipa::path(delete, path = "/api/v1/deployments/{name}", tag = "workloads",
    params(("name" = String, Path, description = "Deployment name")),
    responses((status = 204), (status = 404, body = ApiError)))]
pub(crate) async fn delete_deployment(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ControlError> {
    s.store.delete_deployment(&name).await?;
    s.reconciler.nudge().await;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/replicas", tag = "workloads",
    responses((status = 200, body = Vec<Replica>)))]
pub(crate) async fn list_replicas(
    State(s): State<AppState>,
) -> Result<JsonList<Replica>, ControlError> {
    let live = &s.reconciler.liveness;
    let rs = s.store.list_replicas().await?;
    Ok(Json(
        rs.iter()
            .map(|r| views::replica(r, live.is_ready(&r.site)))
            .collect(),
    ))
}

#[utoipa::path(get, path = "/api/v1/status", tag = "workloads",
    responses((status = 200, body = FleetStatus)))]
pub(crate) async fn status(State(s): State<AppState>) -> Result<Json<FleetStatus>, ControlError> {
    let live = &s.reconciler.liveness;
    let published = s.reconciler.current();
    let store = &s.store;
    let (sites, nodes, deployments, replicas) = (
        store.list_sites().await?,
        store.list_nodes().await?,
        store.list_deployments().await?,
        store.list_replicas().await?,
    );
    Ok(Json(FleetStatus {
        sites: super::site_views(&s, &sites).await?,
        nodes: nodes
            .iter()
            .map(|n| views::node(n, live.is_ready(&n.site), &published.parked))
            .collect(),
        deployments: deployments
            .iter()
            .map(|d| views::deployment(d, &published.unschedulable))
            .collect(),
        replicas: replicas
            .iter()
            .map(|r| views::replica(r, live.is_ready(&r.site)))
            .collect(),
    }))
}
