//! Fakes for the gateway's tests, speaking the real protocols over real sockets: an upstream
//! replica (OpenAI chat, completions, embeddings, SSE streams, `/health`) and a control plane
//! serving the gateway config by long poll. Plus small helpers to build configs and wait for
//! readiness without sleeping blindly.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use wattmesh_domain::ModelKind;
use wattmesh_proto::gateway::{GatewayConfig, GatewayKey, ModelRoute, RouteReplica};

/// The API key the test configs accept.
pub const KEY: &str = "sk-test-0123456789abcdef";
/// The admin token the fake control plane wants.
pub const CONTROL_TOKEN: &str = "control-admin-token";
/// Events in a fake SSE stream, `[DONE]` included.
pub const STREAM_EVENTS: usize = 5;

/// How long [`eventually`] and [`within`] wait before failing a test that would otherwise hang.
const HANG_GUARD: Duration = Duration::from_secs(30);

// === config helpers ===

pub fn key(secret: &str) -> GatewayKey {
    GatewayKey {
        id: "key-1".into(),
        tenant: "tenant-1".into(),
        secret_sha256: hex::encode(Sha256::digest(secret.as_bytes())),
        models: None,
        expires_at_ms: None,
        priority: wattmesh_proto::api::KeyPriority::Interactive,
        limits: wattmesh_proto::api::Limits::default(),
    }
}

pub fn route(model: &str, kind: ModelKind, replicas: Vec<RouteReplica>) -> ModelRoute {
    ModelRoute {
        model: model.into(),
        kind,
        context_tokens: 2048,
        replicas,
    }
}

pub fn replica(id: &str, endpoint: &str) -> RouteReplica {
    RouteReplica {
        id: id.into(),
        deployment: "d1".into(),
        dedicated_to: None,
        access_token: None,
        endpoint: endpoint.into(),
        site: "s1".into(),
        region: "r1".into(),
        shedding: false,
    }
}

/// A config accepting [`KEY`] with `models`.
pub fn config(version: u64, models: Vec<ModelRoute>) -> GatewayConfig {
    GatewayConfig {
        version,
        gateway: "gw-test".into(),
        gateways: 1,
        keys: vec![key(KEY)],
        tenants: Vec::new(),
        prices: Vec::new(),
        models,
    }
}

/// A leaser for tests whose tenants all pay as they go: any call is a test failure.
#[derive(Debug)]
pub struct NoLeases;

impl crate::credit::Leaser for NoLeases {
    fn lease(
        &self,
        request: wattmesh_proto::usage::LeaseRequest,
    ) -> futures::future::BoxFuture<'static, Result<wattmesh_proto::usage::LeaseGrant, String>>
    {
        Box::pin(async move { Err(format!("no leases in this test (asked for {request:?})")) })
    }
}

/// A gateway state with a real spool in a temp dir (kept alive by the returned guard).
pub async fn state(max_body_bytes: usize) -> (crate::GatewayState, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let spool = crate::spool::Spool::open(&dir.path().join("spool"))
        .await
        .expect("opening the spool");
    let credit = crate::credit::Credit::new(Default::default(), Arc::new(NoLeases));
    (crate::GatewayState::new(max_body_bytes, spool, credit), dir)
}

/// An address nothing listens on: bound, then released.
pub async fn dead_endpoint() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

/// Serves `app` on a fresh loopback port until the returned token is cancelled.
pub async fn serve(app: Router) -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let handle = tokio::spawn({
        let stop = stop.clone();
        async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
                .unwrap();
        }
    });
    (addr, stop, handle)
}

/// Polls `check` until it returns `Some`, failing the test if that takes unreasonably long.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let poll = async {
        loop {
            if let Some(v) = check().await {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    within(what, poll).await
}

/// Awaits `fut`, failing the test instead of hanging when it never completes.
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(HANG_GUARD, fut).await {
        Ok(v) => v,
        Err(_) => panic!("gave up waiting: {what}"),
    }
}

// === fake replica ===

/// An upstream replica. Answers are fixed and name the replica, so tests can tell who served.
pub struct FakeReplica {
    pub id: String,
    pub endpoint: String,
    /// `/v1/*` requests received.
    pub served: Arc<AtomicUsize>,
    /// What `/health` says.
    pub healthy: Arc<AtomicBool>,
    /// When set, `/v1/*` answers 503.
    pub refuse: Arc<AtomicBool>,
    /// Each stream event after the first waits for one permit.
    pub gate: Arc<Semaphore>,
    /// The `Authorization` header of each `/v1/*` request.
    pub seen_auth: Arc<Mutex<Vec<Option<String>>>>,
    stop: CancellationToken,
}

#[derive(Clone)]
struct ReplicaApp {
    id: String,
    served: Arc<AtomicUsize>,
    healthy: Arc<AtomicBool>,
    refuse: Arc<AtomicBool>,
    gate: Arc<Semaphore>,
    seen_auth: Arc<Mutex<Vec<Option<String>>>>,
}

impl FakeReplica {
    /// A replica whose streams flow freely.
    pub async fn start(id: &str) -> Self {
        Self::start_with_gate(id, Semaphore::MAX_PERMITS).await
    }

    /// A replica whose streams produce one event per [`FakeReplica::release`].
    pub async fn start_gated(id: &str) -> Self {
        Self::start_with_gate(id, 0).await
    }

    async fn start_with_gate(id: &str, permits: usize) -> Self {
        let app = ReplicaApp {
            id: id.into(),
            served: Arc::default(),
            healthy: Arc::new(AtomicBool::new(true)),
            refuse: Arc::default(),
            gate: Arc::new(Semaphore::new(permits)),
            seen_auth: Arc::default(),
        };
        let router = Router::new()
            .route("/v1/chat/completions", post(fake_chat))
            .route("/v1/completions", post(fake_chat))
            .route("/v1/embeddings", post(fake_embeddings))
            .route("/health", get(fake_health))
            .with_state(app.clone());
        let (addr, stop, _) = serve(router).await;
        Self {
            id: id.into(),
            endpoint: format!("http://{addr}"),
            served: app.served,
            healthy: app.healthy,
            refuse: app.refuse,
            gate: app.gate,
            seen_auth: app.seen_auth,
            stop,
        }
    }

    pub fn route_replica(&self) -> RouteReplica {
        replica(&self.id, &self.endpoint)
    }

    pub fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }

    /// Lets one more stream event out.
    pub fn release(&self) {
        self.gate.add_permits(1);
    }
}

impl Drop for FakeReplica {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The non-streaming chat answer of replica `id`.
pub fn chat_answer(id: &str) -> String {
    format!(
        r#"{{"id":"chatcmpl-{id}","object":"chat.completion","created":1,"model":"chat-m","choices":[{{"index":0,"message":{{"role":"assistant","content":"Hello from {id}"}},"finish_reason":"stop","logprobs":null}}],"usage":{{"prompt_tokens":5,"completion_tokens":3,"total_tokens":8}},"system_fingerprint":null}}"#
    )
}

/// Event `i` of replica `id`'s stream, as the bytes on the wire.
pub fn stream_event(id: &str, i: usize) -> String {
    let chunk = |delta: &str, finish: &str| {
        format!(
            r#"data: {{"id":"chatcmpl-{id}","object":"chat.completion.chunk","created":1,"model":"chat-m","choices":[{{"index":0,"delta":{delta},"finish_reason":{finish}}}]}}"#
        ) + "\n\n"
    };
    match i {
        0 => chunk(r#"{"role":"assistant","content":""}"#, "null"),
        1 => chunk(r#"{"content":"Hello"}"#, "null"),
        2 => chunk(r#"{"content":" world"}"#, "null"),
        3 => chunk("{}", r#""stop""#),
        _ => "data: [DONE]\n\n".to_owned(),
    }
}

async fn fake_chat(State(app): State<ReplicaApp>, headers: HeaderMap, body: Bytes) -> Response {
    app.served.fetch_add(1, Ordering::SeqCst);
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    app.seen_auth.lock().unwrap().push(auth);
    if app.refuse.load(Ordering::SeqCst) {
        return refused();
    }
    let req: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    if req.get("messages").is_none() && req.get("prompt").is_none() {
        let error = r#"{"error":{"message":"'messages' is a required property","type":"invalid_request_error","param":"messages","code":null}}"#;
        return (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "application/json")],
            error,
        )
            .into_response();
    }
    if req.get("stream") != Some(&serde_json::Value::Bool(true)) {
        return (
            [(header::CONTENT_TYPE, "application/json")],
            chat_answer(&app.id),
        )
            .into_response();
    }
    let events = futures::stream::unfold(0usize, move |i| {
        let (gate, id) = (app.gate.clone(), app.id.clone());
        async move {
            if i >= STREAM_EVENTS {
                return None;
            }
            if i > 0 {
                gate.acquire().await.ok()?.forget();
            }
            Some((
                Ok::<_, std::convert::Infallible>(Bytes::from(stream_event(&id, i))),
                i + 1,
            ))
        }
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        axum::body::Body::from_stream(events),
    )
        .into_response()
}

pub const EMBEDDING_ANSWER: &str = r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.25,-0.5]}],"model":"embed-m","usage":{"prompt_tokens":2,"total_tokens":2}}"#;

async fn fake_embeddings(State(app): State<ReplicaApp>) -> Response {
    app.served.fetch_add(1, Ordering::SeqCst);
    if app.refuse.load(Ordering::SeqCst) {
        return refused();
    }
    (
        [(header::CONTENT_TYPE, "application/json")],
        EMBEDDING_ANSWER,
    )
        .into_response()
}

/// The body of a fake replica's 503.
pub const REFUSED: &str =
    r#"{"error":{"message":"replica overloaded","type":"server_error","param":null,"code":null}}"#;

fn refused() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::CONTENT_TYPE, "application/json")],
        REFUSED,
    )
        .into_response()
}

async fn fake_health(State(app): State<ReplicaApp>) -> StatusCode {
    if app.healthy.load(Ordering::SeqCst) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

// === fake control plane ===

/// The control plane's `GET /api/v1/gateway/config`, long-polled by version.
pub struct FakeControl {
    pub url: String,
    config: Arc<tokio::sync::watch::Sender<GatewayConfig>>,
    processes: Arc<std::sync::Mutex<Processes>>,
    stop: CancellationToken,
    server: tokio::task::JoinHandle<()>,
}

/// The gateway processes that polled (by their `instance`), and those that said they left.
#[derive(Debug, Default, Clone)]
pub struct Processes {
    pub polled: Vec<String>,
    pub left: Vec<String>,
}

#[derive(Clone)]
struct ControlApp {
    config: Arc<tokio::sync::watch::Sender<GatewayConfig>>,
    processes: Arc<std::sync::Mutex<Processes>>,
    stop: CancellationToken,
}

#[derive(serde::Deserialize)]
struct WatchQuery {
    after: Option<u64>,
    wait_s: Option<u64>,
    instance: Option<String>,
}

impl FakeControl {
    pub async fn start(config: GatewayConfig) -> Self {
        let (tx, _) = tokio::sync::watch::channel(config);
        let config = Arc::new(tx);
        let stop = CancellationToken::new();
        let processes = Arc::default();
        let app = ControlApp {
            config: config.clone(),
            processes: Arc::clone(&processes),
            stop: stop.clone(),
        };
        let router = Router::new()
            .route("/api/v1/gateway/config", get(fake_config))
            .route(
                "/api/v1/gateway/instances/{instance}",
                axum::routing::delete(fake_leave),
            )
            .with_state(app);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn({
            let stop = stop.clone();
            async move {
                axum::serve(listener, router)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await
                    .unwrap();
            }
        });
        Self {
            url,
            config,
            processes,
            stop,
            server,
        }
    }

    pub fn processes(&self) -> Processes {
        self.processes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn set(&self, config: GatewayConfig) {
        self.config.send_replace(config);
    }

    /// Stops serving: pending long polls are answered, then the port is closed.
    pub async fn stop(self) {
        self.stop.cancel();
        within("fake control plane to stop", self.server)
            .await
            .unwrap();
    }
}

fn control_token_ok(headers: &HeaderMap) -> bool {
    let expected = format!("Bearer {CONTROL_TOKEN}");
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        == Some(&expected)
}

async fn fake_leave(
    State(app): State<ControlApp>,
    headers: HeaderMap,
    axum::extract::Path(instance): axum::extract::Path<String>,
) -> StatusCode {
    if !control_token_ok(&headers) {
        return StatusCode::UNAUTHORIZED;
    }
    app.processes
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .left
        .push(instance);
    StatusCode::NO_CONTENT
}

async fn fake_config(
    State(app): State<ControlApp>,
    headers: HeaderMap,
    Query(q): Query<WatchQuery>,
) -> Response {
    if !control_token_ok(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    if let Some(instance) = q.instance {
        app.processes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .polled
            .push(instance);
    }
    let mut rx = app.config.subscribe();
    if let Some(after) = q.after {
        let wait = Duration::from_secs(q.wait_s.unwrap_or(30));
        tokio::select! {
            _ = tokio::time::timeout(wait, rx.wait_for(|c| c.version != after)) => {}
            _ = app.stop.cancelled() => {}
        }
    }
    let current = rx.borrow().clone();
    axum::Json(current).into_response()
}
