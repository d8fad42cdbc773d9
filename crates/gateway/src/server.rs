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

use std::time::Instant;

use axum::http::HeaderValue;
use axum::middleware::Next;
use wattmesh_domain::pricing::worst_case_tokens;
use wattmesh_proto::api::{BillingPlan, KeyPriority, Limits};
use wattmesh_proto::openai::COMPLETIONS_DEFAULT_MAX_TOKENS;
use wattmesh_proto::usage::{Outcome, UsageEvent};

use crate::auth::{Caller, require_key};
use crate::body::{facts_of, read_limited};
use crate::config::Snapshot;
use crate::credit::CreditError;
use crate::error::{GatewayError, add_rate_headers};
use crate::forward::{Outgoing, REQUEST_ID_HEADER, forward};
use crate::limits::Ask;
use crate::metering::Meter;
use crate::metrics::Rejection;
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
        .route(
            "/v1/organization/usage/completions",
            authed(get(organization)),
        )
        .route(
            "/v1/organization/usage/embeddings",
            authed(get(organization)),
        )
        .route("/v1/organization/costs", authed(get(organization)))
        .route("/healthz", get(healthz))
        .fallback(|| async { GatewayError::NotFound })
        .method_not_allowed_fallback(|| async { GatewayError::MethodNotAllowed })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            request_id,
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// The metrics listener's router: `GET /metrics` in Prometheus text. Kept off the customers'
/// port: tenant names are in the labels.
pub fn metrics_router(state: GatewayState) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(st): State<GatewayState>| async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    st.metrics_text(),
                )
            }),
        )
        .with_state(state)
}

/// What the metrics know of a request once it is answered: set by the handlers on the response.
#[derive(Debug, Clone, Default)]
struct Labels {
    model: String,
    tenant: String,
}

/// A request's id, made when it arrives.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Gives every request an id (`req_` and 32 hex digits, as OpenAI's look), which the client
/// gets back as `x-request-id` on every answer, errors included, and which travels to the
/// replica, into the usage event and the log; and counts every answer in the metrics.
async fn request_id(State(st): State<GatewayState>, mut req: Request, next: Next) -> Response {
    let id = format!("req_{}", uuid::Uuid::new_v4().simple());
    let span = tracing::info_span!("request", request_id = %id);
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut resp = tracing::Instrument::instrument(next.run(req), span).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    let labels = resp
        .extensions()
        .get::<Labels>()
        .cloned()
        .unwrap_or_default();
    st.metrics
        .answered(&labels.model, &labels.tenant, resp.status().as_u16());
    resp
}

/// Runs the gateway on `listener` until `shutdown`: watches the control plane for keys and
/// routes, probes replicas, and serves `/v1/*`. On shutdown it stops accepting and lets
/// in-flight requests finish, for at most `options.shutdown_grace`.
pub async fn run(
    listener: TcpListener,
    mut options: GatewayOptions,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let (spool, spent) = open_spool(options.spool_path.clone())
        .await
        .map_err(std::io::Error::other)?;
    let http = GatewayState::http_client();
    let leaser = crate::credit::ControlLeaser {
        http: http.clone(),
        control_url: options.control_url.clone(),
        token: options.control_token.clone(),
    };
    let credit = crate::credit::Credit::new(spent, std::sync::Arc::new(leaser));
    let shipper_stats = std::sync::Arc::new(crate::shipper::ShipperStats::default());
    let state = GatewayState::new(options.max_body_bytes, spool.clone(), credit)
        .with_control_url(&options.control_url)
        .with_body_read_timeout(options.body_read_timeout)
        .with_shipper_stats(shipper_stats.clone());
    let tasks = TaskTracker::new();
    let background = shutdown.child_token();
    // The shipper outlives the listener: it gets the drained requests' events out last.
    let shipping = CancellationToken::new();
    tasks.spawn(crate::shipper::run_shipper_with_stats(
        spool.clone(),
        http,
        options.control_url.clone(),
        options.control_token.clone(),
        shipper_stats,
        shipping.clone(),
    ));
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
    if let Some(metrics) = options.metrics_listener.take() {
        let app = metrics_router(state.clone());
        let stop = background.clone();
        tasks.spawn(async move {
            let served = axum::serve(metrics, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
            if let Err(e) = served {
                tracing::error!("the metrics listener failed: {e}");
            }
        });
    }
    tasks.close();

    // Our own accept loop rather than axum::serve: it caps connections and times out slow
    // and idle ones (`listener`); it drains in-flight requests on shutdown just the same.
    let serve = crate::listener::serve(
        listener,
        router(state),
        crate::listener::ConnectionLimits::of(&options),
        shutdown.clone(),
    );
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
    shipping.cancel();
    tasks.wait().await;
    close_spool(spool).await;
    served
}

type SpoolOpened = (
    crate::spool::Spool,
    std::collections::HashMap<String, rust_decimal::Decimal>,
);

/// Opens the spool and reads what this gateway spent before it restarted. Boxed, which keeps
/// `run`'s own future small.
fn open_spool(
    path: std::path::PathBuf,
) -> futures::future::BoxFuture<'static, Result<SpoolOpened, crate::spool::SpoolError>> {
    Box::pin(async move {
        let spool = crate::spool::Spool::open(&path).await?;
        let spent = spool.spent().await?;
        Ok((spool, spent))
    })
}

/// Flushes and closes the spool (boxed for the same reason as [`open_spool`]).
fn close_spool(spool: crate::spool::Spool) -> futures::future::BoxFuture<'static, ()> {
    Box::pin(async move { spool.close().await })
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
    Extension(id): Extension<RequestId>,
    req: Request,
) -> Response {
    labelled(&st, caller, &snap, id, req, Endpoint::ChatCompletions).await
}

async fn completions(
    State(st): State<GatewayState>,
    Extension(caller): Extension<Caller>,
    Extension(snap): Extension<Arc<Snapshot>>,
    Extension(id): Extension<RequestId>,
    req: Request,
) -> Response {
    labelled(&st, caller, &snap, id, req, Endpoint::Completions).await
}

async fn embeddings(
    State(st): State<GatewayState>,
    Extension(caller): Extension<Caller>,
    Extension(snap): Extension<Arc<Snapshot>>,
    Extension(id): Extension<RequestId>,
    req: Request,
) -> Response {
    labelled(&st, caller, &snap, id, req, Endpoint::Embeddings).await
}

/// [`proxy`], its error made a response, and the labels the metrics count it under.
async fn labelled(
    st: &GatewayState,
    caller: Caller,
    snap: &Snapshot,
    id: RequestId,
    req: Request,
    endpoint: Endpoint,
) -> Response {
    let mut labels = Labels {
        model: String::new(),
        tenant: caller.key.tenant.clone(),
    };
    let mut resp = proxy(st, caller, snap, id, req, endpoint, &mut labels)
        .await
        .unwrap_or_else(IntoResponse::into_response);
    resp.extensions_mut().insert(labels);
    resp
}

/// Body checks, model lookup, the key's allow-list, rate limits and credit, then forwarding
/// with a meter that turns the request into a usage event.
async fn proxy(
    st: &GatewayState,
    caller: Caller,
    snap: &Snapshot,
    RequestId(request_id): RequestId,
    req: Request,
    endpoint: Endpoint,
    labels: &mut Labels,
) -> Result<Response, GatewayError> {
    let started = Instant::now();
    let started_at_ms = crate::now_ms();
    let (parts, body): (_, Body) = req.into_parts();
    let body = read_limited(
        &parts.headers,
        body,
        st.max_body_bytes,
        st.body_read_timeout,
    )
    .await?;
    let facts = facts_of(&body)?;
    labels.model.clone_from(&facts.model);
    let key = &caller.key;
    let route = snap
        .models
        .get(&facts.model)
        .filter(|_| key.models.as_ref().is_none_or(|m| m.contains(&facts.model)))
        .ok_or_else(|| GatewayError::UnknownModel(facts.model.clone()))?;
    if route.kind != endpoint.kind() {
        return Err(GatewayError::BadRequest(format!(
            "The model `{}` is a {} model and cannot serve {}.",
            route.model,
            route.kind.as_str(),
            endpoint.path()
        )));
    }
    let tenant = snap.tenants.get(&key.tenant);
    let tenant_limits = tenant.map_or(Limits::default(), |t| t.limits);
    let prepaid = tenant.is_some_and(|t| t.plan == BillingPlan::Prepaid);

    let max_completion = match endpoint {
        Endpoint::Embeddings => Some(0),
        Endpoint::Completions => Some(
            facts
                .max_tokens
                .unwrap_or(u64::from(COMPLETIONS_DEFAULT_MAX_TOKENS)),
        ),
        Endpoint::ChatCompletions => facts.max_tokens,
    };
    let (worst_prompt, worst_completion) = worst_case_tokens(
        body.len() as u64,
        max_completion,
        u64::from(route.context_tokens),
    );
    let (limits, rate_headers) = st
        .limiter
        .admit(Ask {
            key: &key.id,
            key_limits: key.limits,
            tenant: &key.tenant,
            tenant_limits,
            tokens: worst_prompt + worst_completion,
            gateways: snap.gateways,
            now_ms: started_at_ms,
        })
        .map_err(|refusal| {
            st.metrics.rejected(Rejection::RateLimit);
            GatewayError::RateLimited(refusal)
        })?;
    let price = snap.price_for(&facts.model, &key.tenant);
    let credit = if prepaid {
        let worst = price.cost(worst_prompt, worst_completion);
        match st.credit.reserve(&key.tenant, worst).await {
            Ok(r) => Some(r),
            Err(refused) => {
                // Nothing was served: the request's tokens go back to the limits.
                limits.finish(0, crate::now_ms());
                return Err(match refused {
                    CreditError::Exhausted => {
                        st.metrics.rejected(Rejection::InsufficientQuota);
                        GatewayError::InsufficientQuota(rate_headers)
                    }
                    CreditError::Unavailable(e) => GatewayError::CreditUnavailable(e),
                });
            }
        }
    } else {
        None
    };
    let priority = match key.priority {
        KeyPriority::Batch => wattmesh_proto::gateway::DEFERRABLE_PRIORITY,
        KeyPriority::Interactive => facts.priority,
    };
    let meter = Meter {
        event: UsageEvent {
            id: uuid::Uuid::new_v4().to_string(),
            request_id,
            tenant: key.tenant.clone(),
            key_id: key.id.clone(),
            model: facts.model.clone(),
            deployment: String::new(),
            replica: String::new(),
            site: String::new(),
            region: String::new(),
            priority: priority.to_owned(),
            prompt_tokens: 0,
            completion_tokens: 0,
            started_at_ms,
            ttft_ms: None,
            duration_ms: 0,
            status: 0,
            outcome: Outcome::Failed,
        },
        started,
        first_byte: None,
        streamed_prompt_tokens: None,
        price,
        spool: st.spool.clone(),
        metrics: st.metrics.clone(),
        limits: Some(limits),
        credit,
    };
    let out = Outgoing {
        path: endpoint.path(),
        priority,
        body: facts.upstream.clone().unwrap_or(body),
        stream: facts.stream,
        strip_usage: facts.stream && !facts.include_usage,
    };
    let mut resp = forward(st, route, out, meter).await?;
    add_rate_headers(&mut resp, &rate_headers);
    Ok(resp)
}

/// How long a usage or costs question may take at the control plane.
const ORGANIZATION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// `GET /v1/organization/usage/completions` and `/v1/organization/costs`: passed to the control
/// plane with the customer's own key, which scopes the answer to the key's tenant there.
async fn organization(
    State(st): State<GatewayState>,
    req: Request,
) -> Result<Response, GatewayError> {
    if st.control_url.is_empty() {
        return Err(GatewayError::Upstream("no control plane to ask".into()));
    }
    let path_and_query = req
        .uri()
        .path_and_query()
        .map_or(req.uri().path(), |p| p.as_str());
    let url = format!("{}{path_and_query}", st.control_url);
    let mut upstream = st.http.get(&url).timeout(ORGANIZATION_TIMEOUT);
    if let Some(auth) = req.headers().get(axum::http::header::AUTHORIZATION) {
        upstream = upstream.header(axum::http::header::AUTHORIZATION, auth.clone());
    }
    let resp = upstream
        .send()
        .await
        .map_err(|e| GatewayError::Upstream(format!("control plane at {url}: {e}")))?;
    let status = axum::http::StatusCode::from_u16(resp.status().as_u16())
        .unwrap_or(axum::http::StatusCode::BAD_GATEWAY);
    let body = resp
        .bytes()
        .await
        .map_err(|e| GatewayError::Upstream(format!("control plane at {url}: {e}")))?;
    if !status.is_success() {
        // The control plane's errors are in its own shape; customers get OpenAI's.
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("the usage service answered {status}"));
        return Err(match status.as_u16() {
            400 => GatewayError::BadRequest(message),
            401 => GatewayError::BadKey("***".into()),
            _ => GatewayError::Upstream(message),
        });
    }
    let mut out = Response::new(Body::from(body));
    out.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(out)
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
