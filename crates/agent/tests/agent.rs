//! The agent against a fake control plane (the three agent endpoints over real HTTP, with a
//! desired state the test changes) and a fake engine (a `/health` server per replica): what
//! it registers, reports, starts and stops, and that it keeps serving when the control plane
//! goes away or forgets it.

// Helpers outside `#[test]` fns panic on setup failures too; that is what a test wants.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wattmesh_agent::{
    AgentConfig, AgentError, Catalog, LaunchError, Launched, ReplicaLauncher, run_with,
};
use wattmesh_domain::ModelKind;
use wattmesh_proto::agent::{
    DesiredState, Heartbeat, HeartbeatAck, RegisterRequest, RegisterResponse, ReplicaAssignment,
    ReplicaReport, WatchQuery,
};
use wattmesh_proto::api::ReplicaState;

const BOOTSTRAP: &str = "bootstrap-secret";
/// Every wait in these tests gives up after this long; none is expected to come near it.
const DEADLINE: Duration = Duration::from_secs(30);

// === fake control plane ===

#[derive(Default)]
struct Recorded {
    registrations: Vec<RegisterRequest>,
    tokens: HashSet<String>,
    refused: usize,
    last_heartbeat: Option<Heartbeat>,
}

#[derive(Clone)]
struct FakeControl {
    recorded: Arc<Mutex<Recorded>>,
    desired: Arc<watch::Sender<DesiredState>>,
    down: CancellationToken,
}

struct RunningControl {
    fake: FakeControl,
    url: String,
    server: JoinHandle<()>,
}

impl RunningControl {
    /// A fresh control plane (no agents, the given desired state) on `port` (0: any).
    async fn start(port: u16, desired: DesiredState) -> RunningControl {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let fake = FakeControl {
            recorded: Arc::default(),
            desired: Arc::new(watch::channel(desired).0),
            down: CancellationToken::new(),
        };
        let app = Router::new()
            .route("/api/v1/agent/register", post(register))
            .route("/api/v1/agent/heartbeat", post(heartbeat))
            .route("/api/v1/agent/desired", get(desired_state))
            .with_state(fake.clone());
        let down = fake.down.clone();
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(down.cancelled_owned())
                .await
                .unwrap();
        });
        RunningControl { fake, url, server }
    }

    fn port(&self) -> u16 {
        self.url.rsplit(':').next().unwrap().parse().unwrap()
    }

    fn set_desired(&self, state: DesiredState) {
        self.fake.desired.send_replace(state);
    }

    fn recorded<T>(&self, f: impl FnOnce(&Recorded) -> T) -> T {
        f(&self.fake.recorded.lock().unwrap())
    }

    /// The replicas of the last heartbeat, if it says it converged to `version`.
    fn reported(&self, version: u64) -> Option<Vec<ReplicaReport>> {
        self.recorded(|r| {
            r.last_heartbeat
                .as_ref()
                .filter(|hb| hb.desired_version == version)
                .map(|hb| hb.replicas.clone())
        })
    }

    /// Gone: the port refuses connections.
    async fn shut_down(self) {
        self.fake.down.cancel();
        tokio::time::timeout(DEADLINE, self.server)
            .await
            .expect("the fake control plane did not stop")
            .unwrap();
    }
}

fn unauthorized() -> Response {
    let body = serde_json::json!({"error": {"code": "unauthorized", "message": "bad token"}});
    (StatusCode::UNAUTHORIZED, Json(body)).into_response()
}

fn bearer(headers: &HeaderMap) -> String {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned()
}

/// Checks the agent token; counts refusals.
fn agent_ok(fake: &FakeControl, headers: &HeaderMap) -> bool {
    let mut r = fake.recorded.lock().unwrap();
    let ok = r.tokens.contains(&bearer(headers));
    if !ok {
        r.refused += 1;
    }
    ok
}

async fn register(
    State(fake): State<FakeControl>,
    headers: HeaderMap,
    Json(req): Json<RegisterRequest>,
) -> Response {
    if bearer(&headers) != BOOTSTRAP {
        return unauthorized();
    }
    let mut r = fake.recorded.lock().unwrap();
    let agent_token = format!("agent-token-{}", r.registrations.len());
    r.tokens.insert(agent_token.clone());
    r.registrations.push(req);
    Json(RegisterResponse { agent_token }).into_response()
}

async fn heartbeat(
    State(fake): State<FakeControl>,
    headers: HeaderMap,
    Json(hb): Json<Heartbeat>,
) -> Response {
    if !agent_ok(&fake, &headers) {
        return unauthorized();
    }
    fake.recorded.lock().unwrap().last_heartbeat = Some(hb);
    let desired_version = fake.desired.borrow().version;
    Json(HeartbeatAck { desired_version }).into_response()
}

async fn desired_state(
    State(fake): State<FakeControl>,
    headers: HeaderMap,
    Query(q): Query<WatchQuery>,
) -> Response {
    if !agent_ok(&fake, &headers) {
        return unauthorized();
    }
    let mut rx = fake.desired.subscribe();
    let after = q.after;
    let wait = Duration::from_secs(q.wait_s.unwrap_or(0).min(30));
    tokio::select! {
        _ = fake.down.cancelled() => return StatusCode::SERVICE_UNAVAILABLE.into_response(),
        _ = tokio::time::timeout(wait, rx.wait_for(|d| Some(d.version) != after)) => {}
    }
    let state = fake.desired.borrow().clone();
    Json(state).into_response()
}

// === fake engine ===

/// Starts a `/health` server per replica and remembers every launch.
#[derive(Clone, Default)]
struct FakeEngine {
    launches: Arc<Mutex<Vec<(String, String)>>>,
    /// The first launch's server stops by itself at once, as a crashing engine would.
    first_dies: bool,
    /// Told when a request to `/slow` (which takes a moment to answer) arrives.
    slow_started: Arc<tokio::sync::Notify>,
}

impl FakeEngine {
    fn launches(&self) -> Vec<(String, String)> {
        self.launches.lock().unwrap().clone()
    }
}

impl ReplicaLauncher for FakeEngine {
    async fn launch(
        &self,
        assignment: &ReplicaAssignment,
        dir: &Path,
        shutdown: CancellationToken,
    ) -> Result<Launched, LaunchError> {
        // The agent fetched the model before launching it.
        let weights =
            std::fs::read(dir.join("w.bin")).map_err(|e| LaunchError::Load(e.to_string()))?;
        assert_eq!(weights, b"weights");
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(LaunchError::Bind)?;
        let endpoint = format!(
            "http://{}",
            listener.local_addr().map_err(LaunchError::Bind)?
        );
        let dies = {
            let mut launches = self.launches.lock().unwrap();
            launches.push((assignment.id.clone(), endpoint.clone()));
            self.first_dies && launches.len() == 1
        };
        let slow_started = self.slow_started.clone();
        let slow = move || async move {
            slow_started.notify_one();
            tokio::time::sleep(Duration::from_millis(300)).await;
            "done"
        };
        let app = Router::new()
            .route("/health", get(|| async { "ok" }))
            .route("/slow", get(slow));
        let serving = async move {
            if dies {
                return Ok(());
            }
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
        };
        Ok(Launched {
            endpoint,
            access_token: format!("fake-token-{}", assignment.id),
            serving: Box::pin(serving),
        })
    }
}

// === helpers ===

/// A catalog with one model, `tiny`, whose one file comes from a local directory.
fn tiny_catalog(src: &Path) -> Catalog {
    std::fs::write(src.join("w.bin"), b"weights").unwrap();
    let sha = sha_of(b"weights");
    Catalog::parse(&format!(
        "[[model]]\nname = \"tiny\"\nkind = \"embedding\"\nmemory_bytes = 1\nsource = \"file:{}\"\n\
         [[model.file]]\npath = \"w.bin\"\nname = \"w.bin\"\nsha256 = \"{sha}\"\n",
        src.display()
    ))
    .unwrap()
}

fn sha_of(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

struct Site {
    _tmp: tempfile::TempDir,
    models_dir: PathBuf,
    state_dir: PathBuf,
    catalog: Catalog,
}

impl Site {
    fn new() -> Site {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        Site {
            catalog: tiny_catalog(&src),
            models_dir: tmp.path().join("models"),
            state_dir: tmp.path().join("state"),
            _tmp: tmp,
        }
    }

    fn config(&self, control_url: &str, bootstrap: &str) -> AgentConfig {
        AgentConfig {
            control_url: control_url.to_owned(),
            bootstrap_token: bootstrap.to_owned(),
            site: "site-1".into(),
            region: "na".into(),
            power_price_usd_per_mwh: Some("42.5".parse().unwrap()),
            node_name: "site-1-cpu-0".into(),
            node_memory_bytes: 8 << 30,
            models_dir: self.models_dir.clone(),
            state_dir: self.state_dir.clone(),
            heartbeat_interval: Duration::from_millis(50),
            catalog: self.catalog.clone(),
            power: None,
        }
    }
}

struct RunningAgent {
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), AgentError>>,
}

impl RunningAgent {
    fn start(config: AgentConfig, engine: &FakeEngine) -> RunningAgent {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run_with(config, engine.clone(), shutdown.clone()));
        RunningAgent { shutdown, task }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("the agent did not stop")
            .unwrap()
            .unwrap();
    }
}

fn assignment(id: &str, artifact: &str) -> ReplicaAssignment {
    ReplicaAssignment {
        id: id.into(),
        deployment: "d1".into(),
        node: "site-1-cpu-0".into(),
        model: "tiny-served".into(),
        kind: ModelKind::Embedding,
        artifact: artifact.into(),
    }
}

fn desired(version: u64, replicas: Vec<ReplicaAssignment>) -> DesiredState {
    DesiredState {
        version,
        replicas,
        dr: None,
        plan: None,
    }
}

/// Polls `check` until it gives a value, or panics after [`DEADLINE`] naming `what`.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn healthy(endpoint: &str) -> bool {
    // A fresh client each time: a pooled connection would outlive a stopped server.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    client
        .get(format!("{endpoint}/health"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// Waits for a heartbeat that says the agent converged to `version` with `id` ready; returns
/// the endpoint.
async fn ready_endpoint(control: &RunningControl, version: u64, id: &str) -> String {
    eventually(&format!("{id} ready at version {version}"), || async {
        let replicas = control.reported(version)?;
        let r = replicas.iter().find(|r| r.id == id)?;
        if r.state == ReplicaState::Ready {
            // A ready replica is reported with the credential its launcher made for it.
            assert_eq!(r.access_token, Some(format!("fake-token-{id}")));
        }
        (r.state == ReplicaState::Ready)
            .then(|| r.endpoint.clone())
            .flatten()
    })
    .await
}

// === tests ===

#[tokio::test]
async fn registers_serves_the_assigned_replica_and_stops_it_when_unassigned() {
    let site = Site::new();
    let control = RunningControl::start(0, desired(1, vec![assignment("r1", "tiny")])).await;
    let engine = FakeEngine::default();
    let agent = RunningAgent::start(site.config(&control.url, BOOTSTRAP), &engine);

    let endpoint = ready_endpoint(&control, 1, "r1").await;
    assert!(
        healthy(&endpoint).await,
        "{endpoint} does not answer /health"
    );
    let registrations = control.recorded(|r| r.registrations.clone());
    assert_eq!(registrations.len(), 1);
    assert_eq!(registrations[0].site, "site-1");
    assert_eq!(registrations[0].region, "na");
    assert_eq!(registrations[0].nodes[0].memory_bytes, 8 << 30);
    assert_eq!(engine.launches(), [("r1".to_owned(), endpoint.clone())]);

    control.set_desired(desired(2, vec![]));
    eventually("the heartbeat to drop r1", || async {
        control.reported(2).filter(|r| r.is_empty())
    })
    .await;
    eventually("r1's server to stop", || async {
        (!healthy(&endpoint).await).then_some(())
    })
    .await;

    agent.stop().await;
    control.shut_down().await;
}

#[tokio::test]
async fn keeps_serving_without_the_control_plane_and_registers_again_after_a_reset() {
    let site = Site::new();
    let state = desired(1, vec![assignment("r1", "tiny")]);
    let control = RunningControl::start(0, state.clone()).await;
    let port = control.port();
    let engine = FakeEngine::default();
    let agent = RunningAgent::start(site.config(&control.url, BOOTSTRAP), &engine);
    let endpoint = ready_endpoint(&control, 1, "r1").await;

    control.shut_down().await;
    assert!(
        healthy(&endpoint).await,
        "the replica stopped with the control plane"
    );

    // A control plane that lost its database comes back on the same address: it refuses the
    // old agent token, the agent registers again and reports the replica it never stopped.
    let control = RunningControl::start(port, state).await;
    let again = ready_endpoint(&control, 1, "r1").await;
    assert_eq!(again, endpoint);
    assert!(healthy(&endpoint).await);
    control.recorded(|r| {
        assert!(r.refused >= 1, "the old token was never tried");
        assert_eq!(r.registrations.len(), 1);
    });
    assert_eq!(engine.launches().len(), 1, "the replica was restarted");

    agent.stop().await;
    control.shut_down().await;
}

#[tokio::test]
async fn a_restarted_agent_serves_its_last_desired_state_without_the_control_plane() {
    let site = Site::new();
    let control = RunningControl::start(0, desired(4, vec![assignment("r1", "tiny")])).await;
    let engine = FakeEngine::default();
    let agent = RunningAgent::start(site.config(&control.url, BOOTSTRAP), &engine);
    let first = ready_endpoint(&control, 4, "r1").await;
    agent.stop().await;
    assert!(!healthy(&first).await, "shutdown left the replica running");
    let url = control.url.clone();
    control.shut_down().await;

    let agent = RunningAgent::start(site.config(&url, BOOTSTRAP), &engine);
    let second = eventually("r1 to be launched again", || async {
        engine.launches().get(1).map(|(_, e)| e.clone())
    })
    .await;
    eventually("the relaunched r1 to answer", || async {
        healthy(&second).await.then_some(())
    })
    .await;
    agent.stop().await;
}

#[tokio::test]
async fn a_refused_bootstrap_token_is_fatal() {
    let site = Site::new();
    let control = RunningControl::start(0, desired(1, vec![])).await;
    let engine = FakeEngine::default();
    let agent = RunningAgent::start(site.config(&control.url, "wrong"), &engine);
    let result = tokio::time::timeout(DEADLINE, agent.task)
        .await
        .unwrap()
        .unwrap();
    let err = result.unwrap_err();
    assert!(matches!(err, AgentError::BootstrapRefused { .. }), "{err}");
    assert!(err.to_string().contains("bad token"), "{err}");
    control.shut_down().await;
}

#[tokio::test]
async fn a_replica_that_cannot_start_is_reported_failed_with_the_reason() {
    let site = Site::new();
    let control =
        RunningControl::start(0, desired(1, vec![assignment("r1", "no-such-model")])).await;
    let engine = FakeEngine::default();
    let agent = RunningAgent::start(site.config(&control.url, BOOTSTRAP), &engine);
    let message = eventually("r1 to be reported failed", || async {
        let replicas = control.reported(1)?;
        let r = replicas.iter().find(|r| r.id == "r1")?;
        (r.state == ReplicaState::Failed)
            .then(|| r.message.clone())
            .flatten()
    })
    .await;
    assert!(message.contains("not in this agent's catalog"), "{message}");
    assert!(engine.launches().is_empty());
    agent.stop().await;
    control.shut_down().await;
}

#[tokio::test]
async fn a_replica_whose_server_dies_is_started_again() {
    let site = Site::new();
    let control = RunningControl::start(0, desired(1, vec![assignment("r1", "tiny")])).await;
    let engine = FakeEngine {
        first_dies: true,
        ..FakeEngine::default()
    };
    let agent = RunningAgent::start(site.config(&control.url, BOOTSTRAP), &engine);
    let endpoint = eventually("a second launch", || async {
        engine.launches().get(1).map(|(_, e)| e.clone())
    })
    .await;
    assert_eq!(ready_endpoint(&control, 1, "r1").await, endpoint);
    assert!(healthy(&endpoint).await);
    agent.stop().await;
    control.shut_down().await;
}

#[tokio::test]
async fn a_stopped_replica_finishes_its_in_flight_requests() {
    let site = Site::new();
    let control = RunningControl::start(0, desired(1, vec![assignment("r1", "tiny")])).await;
    let engine = FakeEngine::default();
    let agent = RunningAgent::start(site.config(&control.url, BOOTSTRAP), &engine);
    let endpoint = ready_endpoint(&control, 1, "r1").await;

    let request = tokio::spawn(reqwest::get(format!("{endpoint}/slow")));
    tokio::time::timeout(DEADLINE, engine.slow_started.notified())
        .await
        .unwrap();
    control.set_desired(desired(2, vec![]));
    let response = request.await.unwrap().unwrap();
    assert_eq!(response.text().await.unwrap(), "done");
    eventually("r1's server to stop", || async {
        (!healthy(&endpoint).await).then_some(())
    })
    .await;

    agent.stop().await;
    control.shut_down().await;
}
