//! The agent protocol end to end over real HTTP: a control plane on 127.0.0.1:0, two agents
//! in two regions (simulated by this test with reqwest), a gateway's config feed. Waits are
//! long-polls on versions, never sleeps; the one timer is the short heartbeat timeout that
//! lets a site go stale.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::{Client, StatusCode};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use wattmesh_control::{ADMIN_TOKEN_FILE, BOOTSTRAP_TOKEN_FILE, ControlConfig};
use wattmesh_proto::agent::{
    DesiredState, Heartbeat, NodeReport, RegisterRequest, RegisterResponse, ReplicaReport,
};
use wattmesh_proto::api::{DeploymentPatch, FleetStatus, ReplicaState};
use wattmesh_proto::gateway::GatewayConfig;

const HEARTBEAT_TIMEOUT: Duration = Duration::from_millis(1500);
const HEARTBEAT_EVERY: Duration = Duration::from_millis(100);
/// Upper bound on any one wait of this test; reaching it is a failure.
const DEADLINE: Duration = Duration::from_secs(20);

struct Api {
    http: Client,
    base: String,
}

impl Api {
    async fn send<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> T {
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert!(status.is_success(), "{status}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    async fn get<T: DeserializeOwned>(&self, path: &str, token: &str) -> T {
        self.send(
            self.http
                .get(format!("{}{path}", self.base))
                .bearer_auth(token),
        )
        .await
    }

    async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        token: &str,
        body: serde_json::Value,
    ) -> T {
        self.send(
            self.http
                .post(format!("{}{path}", self.base))
                .bearer_auth(token)
                .json(&body),
        )
        .await
    }
}

/// A fake agent: registered, heartbeating in the background with whatever reports the test
/// sets, until stopped.
struct Agent {
    token: String,
    reports: Arc<Mutex<Vec<ReplicaReport>>>,
    stop: CancellationToken,
}

async fn start_agent(
    api: &Arc<Api>,
    bootstrap: &str,
    site: &str,
    region: &str,
    price: &str,
) -> Agent {
    let node = NodeReport {
        name: format!("{site}-n0"),
        memory_bytes: 4 << 30,
    };
    let reg = RegisterRequest {
        site: site.into(),
        region: region.into(),
        power_price_usd_per_mwh: Some(price.parse().unwrap()),
        nodes: vec![node.clone()],
    };
    let resp: RegisterResponse = api
        .post(
            "/api/v1/agent/register",
            bootstrap,
            serde_json::to_value(&reg).unwrap(),
        )
        .await;
    let agent = Agent {
        token: resp.agent_token,
        reports: Arc::default(),
        stop: CancellationToken::new(),
    };
    let (api, token, reports, stop) = (
        api.clone(),
        agent.token.clone(),
        agent.reports.clone(),
        agent.stop.clone(),
    );
    tokio::spawn(async move {
        loop {
            let hb = Heartbeat {
                nodes: vec![node.clone()],
                replicas: reports.lock().unwrap().clone(),
                desired_version: 0,
                power: None,
                earlier_power: Vec::new(),
            };
            let _: serde_json::Value = api
                .post(
                    "/api/v1/agent/heartbeat",
                    &token,
                    serde_json::to_value(&hb).unwrap(),
                )
                .await;
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(HEARTBEAT_EVERY) => {}
            }
        }
    });
    agent
}

/// Long-polls `path` (a versioned watch) until `done` holds for the answer.
async fn watch_until<T: DeserializeOwned>(
    api: &Api,
    path: &str,
    token: &str,
    version: impl Fn(&T) -> u64,
    done: impl Fn(&T) -> bool,
) -> T {
    tokio::time::timeout(DEADLINE, async {
        let mut current: T = api.get(path, token).await;
        while !done(&current) {
            let v = version(&current);
            current = api.get(&format!("{path}?after={v}&wait_s=5"), token).await;
        }
        current
    })
    .await
    .unwrap_or_else(|_| panic!("{path} never reached the expected state"))
}

fn route_sites(c: &GatewayConfig) -> Vec<String> {
    let mut sites: Vec<String> = c
        .models
        .iter()
        .flat_map(|m| m.replicas.iter().map(|r| r.site.clone()))
        .collect();
    sites.sort();
    sites
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_register_converge_serve_go_stale_and_scale() {
    let dir = tempfile::tempdir().unwrap();
    let config = ControlConfig {
        heartbeat_timeout: HEARTBEAT_TIMEOUT,
        ..ControlConfig::new(dir.path())
    };
    let control = wattmesh_control::open(config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(control.run(listener, shutdown.clone()));

    let read = |f: &str| {
        std::fs::read_to_string(dir.path().join(f))
            .unwrap()
            .trim()
            .to_owned()
    };
    let (admin, bootstrap) = (read(ADMIN_TOKEN_FILE), read(BOOTSTRAP_TOKEN_FILE));
    let api = Arc::new(Api {
        http: Client::new(),
        base,
    });

    // A bad bootstrap token is refused.
    let resp = api
        .http
        .post(format!("{}/api/v1/agent/register", api.base))
        .bearer_auth("wm-boot-nope")
        .json(&serde_json::json!({"site": "x", "region": "y", "nodes": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    let _: serde_json::Value = api
        .post(
            "/api/v1/models",
            &admin,
            serde_json::json!({"name": "smol", "kind": "chat", "artifact": "smol", "memory_bytes": 1 << 28}),
        )
        .await;
    let _: serde_json::Value = api
        .post(
            "/api/v1/deployments",
            &admin,
            serde_json::json!({"name": "chat", "model": "smol", "replicas": 2}),
        )
        .await;
    // The gateway watches its config with a token of its own.
    let created: serde_json::Value = api
        .post(
            "/api/v1/gateways",
            &admin,
            serde_json::json!({"name": "gw-1"}),
        )
        .await;
    let gateway = created["token"].as_str().unwrap().to_owned();

    let a = start_agent(&api, &bootstrap, "georgia-1", "north-america", "42").await;
    let b = start_agent(&api, &bootstrap, "addis-1", "east-africa", "31").await;

    // Each site's desired state gets one replica of the deployment.
    let one = |d: &DesiredState| d.replicas.len() == 1;
    let da: DesiredState = watch_until(
        &api,
        "/api/v1/agent/desired",
        &a.token,
        |d: &DesiredState| d.version,
        one,
    )
    .await;
    let db: DesiredState = watch_until(
        &api,
        "/api/v1/agent/desired",
        &b.token,
        |d: &DesiredState| d.version,
        one,
    )
    .await;
    assert_eq!(
        (da.replicas[0].node.as_str(), db.replicas[0].node.as_str()),
        ("georgia-1-n0", "addis-1-n0")
    );
    assert_eq!(da.replicas[0].model, "smol");

    // Both report ready with endpoints: the gateway routes to both.
    for (agent, desired, port) in [(&a, &da, 9001), (&b, &db, 9002)] {
        *agent.reports.lock().unwrap() = vec![ReplicaReport {
            id: desired.replicas[0].id.clone(),
            state: ReplicaState::Ready,
            endpoint: Some(format!("http://127.0.0.1:{port}")),
            message: None,
            access_token: Some(format!("tok-{port}")),
        }];
    }
    let gw_version = |c: &GatewayConfig| c.version;
    let both = watch_until(&api, "/api/v1/gateway/config", &gateway, gw_version, |c| {
        route_sites(c) == ["addis-1", "georgia-1"]
    })
    .await;
    assert_eq!(both.models[0].model, "smol");
    // Each route carries its replica's access token, as its own site reported it.
    for r in &both.models[0].replicas {
        let port = r.endpoint.rsplit(':').next().unwrap();
        assert_eq!(
            r.access_token.as_deref(),
            Some(format!("tok-{port}").as_str())
        );
    }

    // A long-poll with the current version waits, and answers when the version moves.
    let v = both.version;
    let poll = {
        let (api, gateway) = (api.clone(), gateway.clone());
        tokio::spawn(async move {
            api.get::<GatewayConfig>(
                &format!("/api/v1/gateway/config?after={v}&wait_s=20"),
                &gateway,
            )
            .await
        })
    };
    let started = tokio::time::Instant::now();
    let unchanged: GatewayConfig = api
        .get(
            &format!("/api/v1/gateway/config?after={v}&wait_s=1"),
            &gateway,
        )
        .await;
    assert_eq!(
        unchanged.version, v,
        "nothing changed: same version after the wait"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "a long-poll at the current version waits"
    );

    // Scaling down to one replica drops one site's assignment, and its route.
    let patch = serde_json::to_value(DeploymentPatch { replicas: 1 }).unwrap();
    let scaled: serde_json::Value = api
        .send(
            api.http
                .patch(format!("{}/api/v1/deployments/chat", api.base))
                .bearer_auth(&admin)
                .json(&patch),
        )
        .await;
    assert_eq!(scaled["replicas"], 1);
    let answered = tokio::time::timeout(DEADLINE, poll).await.unwrap().unwrap();
    assert!(answered.version > v);
    assert_eq!(route_sites(&answered).len(), 1);
    let status: FleetStatus = api.get("/api/v1/status", &admin).await;
    assert_eq!(status.replicas.len(), 1);
    // The scheduler keeps the first replica by node name: addis-1-n0.
    let kept_site = status.replicas[0].site.clone();
    assert_eq!(kept_site, "addis-1");
    let dropped: DesiredState = watch_until(
        &api,
        "/api/v1/agent/desired",
        &a.token,
        |d: &DesiredState| d.version,
        |d| d.replicas.is_empty(),
    )
    .await;
    assert!(dropped.version > da.version);

    // Scaling back up places a new replica on georgia-1.
    let patch = serde_json::to_value(DeploymentPatch { replicas: 2 }).unwrap();
    let _: serde_json::Value = api
        .send(
            api.http
                .patch(format!("{}/api/v1/deployments/chat", api.base))
                .bearer_auth(&admin)
                .json(&patch),
        )
        .await;
    let da: DesiredState = watch_until(
        &api,
        "/api/v1/agent/desired",
        &a.token,
        |d: &DesiredState| d.version,
        one,
    )
    .await;
    *a.reports.lock().unwrap() = vec![ReplicaReport {
        id: da.replicas[0].id.clone(),
        state: ReplicaState::Ready,
        endpoint: Some("http://127.0.0.1:9003".into()),
        message: None,
        access_token: Some("tok-9003".into()),
    }];
    watch_until(&api, "/api/v1/gateway/config", &gateway, gw_version, |c| {
        route_sites(c) == ["addis-1", "georgia-1"]
    })
    .await;

    // addis-1 stops heartbeating: within the timeout (plus a tick) it is not ready, its
    // replica is lost, and the gateway stops routing to it.
    b.stop.cancel();
    let stale = watch_until(&api, "/api/v1/gateway/config", &gateway, gw_version, |c| {
        route_sites(c) == ["georgia-1"]
    })
    .await;
    assert_eq!(
        stale.models[0].replicas[0].endpoint,
        "http://127.0.0.1:9003"
    );
    let status: FleetStatus = api.get("/api/v1/status", &admin).await;
    let addis = status.sites.iter().find(|s| s.name == "addis-1").unwrap();
    assert!(!addis.ready && addis.last_heartbeat.is_some());
    let states: Vec<(String, ReplicaState)> = status
        .replicas
        .iter()
        .map(|r| (r.site.clone(), r.state))
        .collect();
    assert_eq!(
        states,
        vec![
            ("addis-1".into(), ReplicaState::Lost),
            ("georgia-1".into(), ReplicaState::Ready)
        ]
    );
    let chat = &status.deployments[0];
    assert_eq!(
        (chat.replicas, chat.unschedulable),
        (2, 1),
        "one region left for two replicas"
    );

    // A wrong agent token is refused; shutdown ends the server cleanly.
    let resp = api
        .http
        .get(format!("{}/api/v1/agent/desired", api.base))
        .bearer_auth("wm-agent-nope")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    a.stop.cancel();
    shutdown.cancel();
    tokio::time::timeout(DEADLINE, server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
