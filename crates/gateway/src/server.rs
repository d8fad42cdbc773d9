//! The HTTP surface: [`router`] (routes, layers, handlers) and [`run`] (the router on a
//! listener, with the config watcher and health checks beside it, and a graceful shutdown).

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::trace::TraceLayer;
use wattmesh_domain::ModelKind;
use wattmesh_proto::openai::{ModelList, ModelObject};

use crate::auth::{Caller, require_key};
use crate::body::{BodyFacts, facts_of, read_limited};
use crate::config::Snapshot;
use crate::error::GatewayError;
use crate::forward::forward;
use crate::{GatewayOptions, GatewayState, health, watch};

/// The data-plane router over an explicit state (tests set its config directly).
pub fn router(state: GatewayState) -> Router {
    let auth = axum::middleware::from_fn_with_state(state.clone(), require_key);
    let authed = |route: MethodRouter<GatewayState>| route.route_layer(auth.clone());
    Router::new()
        .route("/v1/chat/completions", authed(post(chat)))
        .route("/v1/completions", authed(post(completions)))
        .route("/v1/embeddings", authed(post(embeddings)))
        .route("/v1/models", authed(get(models)))
        .route("/healthz", get(healthz))
        .fallback(|| async { GatewayError::NotFound })
        .method_not_allowed_fallback(|| async { GatewayError::MethodNotAllowed })
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Runs the gateway on `listener` until `shutdown`: watches the control plane for keys and
/// routes, probes replicas, and serves `/v1/*`. On shutdown it stops accepting and lets
/// in-flight requests finish, for at most `options.shutdown_grace`.
pub async fn run(
    listener: TcpListener,
    options: GatewayOptions,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let state = GatewayState::new(options.max_body_bytes);
    let tasks = TaskTracker::new();
    let background = shutdown.child_token();
    tasks.spawn(watch::watch_control(
        state.clone(),
        options.control_url.clone(),
        options.control_token.clone(),
        background.clone(),
    ));
    tasks.spawn(health::run_health_checks(
        state.clone(),
        options.health_interval,
        background.clone(),
    ));
    tasks.close();

    let serve = axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .into_future();
    let grace_over = async {
        shutdown.cancelled().await;
        tokio::time::sleep(options.shutdown_grace).await;
    };
    let served = tokio::select! {
        served = serve => served,
        () = grace_over => {
            tracing::warn!("shutdown grace period over; dropping requests still in flight");
            Ok(())
        }
    };
    background.cancel();
    tasks.wait().await;
    served
}

/// The OpenAI endpoints the gateway forwards, each served by one kind of model.
#[derive(Debug, Clone, Copy)]
enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
}

impl Endpoint {
    fn path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
            Endpoint::Embeddings => "/v1/embeddings",
        }
    }

    fn kind(self) -> ModelKind {
        match self {
            Endpoint::ChatCompletions | Endpoint::Completions => ModelKind::Chat,
            Endpoint::Embeddings => ModelKind::Embedding,
        }
    }
}

async fn chat(
    State(st): State<GatewayState>,
    Extension(caller): Extension<Caller>,
    Extension(snap): Extension<Arc<Snapshot>>,
    req: Request,
) -> Result<Response, GatewayError> {
    proxy(&st, caller, &snap, req, Endpoint::ChatCompletions).await
}

async fn completions(
    State(st): State<GatewayState>,
    Extension(caller): Extension<Caller>,
    Extension(snap): Extension<Arc<Snapshot>>,
    req: Request,
) -> Result<Response, GatewayError> {
    proxy(&st, caller, &snap, req, Endpoint::Completions).await
}

async fn embeddings(
    State(st): State<GatewayState>,
    Extension(caller): Extension<Caller>,
    Extension(snap): Extension<Arc<Snapshot>>,
    req: Request,
) -> Result<Response, GatewayError> {
    proxy(&st, caller, &snap, req, Endpoint::Embeddings).await
}

/// Body checks, model lookup, then forwarding.
async fn proxy(
    st: &GatewayState,
    caller: Caller,
    snap: &Snapshot,
    req: Request,
    endpoint: Endpoint,
) -> Result<Response, GatewayError> {
    let (parts, body): (_, Body) = req.into_parts();
    let body = read_limited(&parts.headers, body, st.max_body_bytes).await?;
    let BodyFacts { model, priority } = facts_of(&body)?;
    let route = snap
        .models
        .get(&model)
        .ok_or(GatewayError::UnknownModel(model))?;
    if route.kind != endpoint.kind() {
        return Err(GatewayError::BadRequest(format!(
            "The model `{}` is a {} model and cannot serve {}.",
            route.model,
            route.kind.as_str(),
            endpoint.path()
        )));
    }
    forward(st, caller, route, endpoint.path(), priority, body).await
}

/// `GET /v1/models`: the models that have routes, in OpenAI's list shape.
async fn models(Extension(snap): Extension<Arc<Snapshot>>) -> Response {
    let mut data: Vec<ModelObject> = snap
        .models
        .keys()
        .map(|id| ModelObject {
            id: id.clone(),
            object: "model".into(),
            created: 0,
            owned_by: "wattmesh".into(),
        })
        .collect();
    data.sort_by(|a, b| a.id.cmp(&b.id));
    axum::Json(ModelList {
        object: "list".into(),
        data,
    })
    .into_response()
}

/// `GET /healthz`: liveness (always 200 while serving), with what the gateway knows of its
/// config and control plane.
async fn healthz(State(st): State<GatewayState>) -> Response {
    let snap = st.snapshot();
    axum::Json(serde_json::json!({
        "status": "ok",
        "config_loaded": snap.loaded,
        "config_version": snap.version,
        "control_plane_reachable": st.control.reachable(),
    }))
    .into_response()
}
