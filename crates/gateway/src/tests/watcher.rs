//! The whole gateway (`run`) against a fake control plane: it loads the config, picks up new
//! versions, keeps serving its last config when the control plane goes away, and drains
//! in-flight streams on shutdown.

use axum::http::StatusCode;
use tokio_util::sync::CancellationToken;
use wattmesh_domain::ModelKind;

use crate::testing::{
    CONTROL_TOKEN, FakeControl, FakeReplica, KEY, STREAM_EVENTS, config, dead_endpoint, eventually,
    route, within,
};
use crate::{GatewayOptions, run};

struct Running {
    base: String,
    client: reqwest::Client,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    _spool: tempfile::TempDir,
}

async fn start(control_url: String) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let spool = tempfile::tempdir().unwrap();
    let options = GatewayOptions::new(
        control_url,
        CONTROL_TOKEN.into(),
        spool.path().join("spool.db"),
    );
    let task = tokio::spawn(run(listener, options, shutdown.clone()));
    Running {
        base,
        client: reqwest::Client::new(),
        shutdown,
        task,
        _spool: spool,
    }
}

impl Running {
    async fn models(&self) -> Option<Vec<String>> {
        let resp = self
            .client
            .get(format!("{}/v1/models", self.base))
            .bearer_auth(KEY)
            .send()
            .await
            .ok()?;
        if resp.status() != StatusCode::OK {
            return None;
        }
        let body: serde_json::Value = resp.json().await.ok()?;
        Some(
            body["data"]
                .as_array()?
                .iter()
                .filter_map(|m| Some(m["id"].as_str()?.to_owned()))
                .collect(),
        )
    }

    async fn healthz(&self) -> serde_json::Value {
        let resp = self
            .client
            .get(format!("{}/healthz", self.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        resp.json().await.unwrap()
    }

    fn chat(&self, model: &str, stream: bool) -> reqwest::RequestBuilder {
        self.client
            .post(format!("{}/v1/chat/completions", self.base))
            .bearer_auth(KEY)
            .json(&serde_json::json!({"model": model, "messages": [{"role":"user","content":"hi"}], "stream": stream}))
    }

    async fn stop(self) {
        self.shutdown.cancel();
        within("gateway to stop", self.task).await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn follows_the_control_plane_and_survives_losing_it() {
    let r1 = FakeReplica::start("r1").await;
    let m1 = route("m1", ModelKind::Chat, vec![r1.route_replica()]);
    let control = FakeControl::start(config(1, vec![m1.clone()])).await;
    let gw = start(control.url.clone()).await;

    let models = eventually("first config", || async { gw.models().await }).await;
    assert_eq!(models, ["m1"]);
    assert_eq!(
        gw.chat("m1", false).send().await.unwrap().status(),
        StatusCode::OK
    );

    // A new version reaches the waiting long poll.
    let m2 = route("m2", ModelKind::Chat, vec![r1.route_replica()]);
    control.set(config(2, vec![m1, m2]));
    eventually("second config", || async {
        gw.models().await.filter(|m| m.len() == 2).map(|_| ())
    })
    .await;
    assert_eq!(gw.healthz().await["config_version"], 2);

    // The control plane goes away: the gateway notices and keeps serving keys and routes.
    control.stop().await;
    eventually("gateway to notice the control plane is gone", || async {
        (gw.healthz().await["control_plane_reachable"] == false).then_some(())
    })
    .await;
    assert_eq!(gw.models().await.unwrap(), ["m1", "m2"]);
    let resp = gw.chat("m2", false).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.text().await.unwrap().contains("Hello from r1"));
    gw.stop().await;
}

#[tokio::test]
async fn a_gateway_shutting_down_tells_the_control_plane_it_leaves() {
    let r1 = FakeReplica::start("r1").await;
    let m1 = route("m1", ModelKind::Chat, vec![r1.route_replica()]);
    let control = FakeControl::start(config(1, vec![m1])).await;
    let gw = start(control.url.clone()).await;
    eventually("first config", || async { gw.models().await }).await;
    let polled = control.processes().polled;
    assert!(
        !polled.is_empty() && polled.iter().all(|i| *i == polled[0]),
        "{polled:?}"
    );
    assert!(control.processes().left.is_empty());
    gw.stop().await;
    // The process's own id, once: the others' shares of the limits grow back now.
    assert_eq!(control.processes().left, [polled[0].clone()]);
    control.stop().await;
}

#[tokio::test]
async fn without_any_config_requests_get_503() {
    let gw = start(dead_endpoint().await).await;
    let health = eventually("gateway up", || async {
        let resp = gw
            .client
            .get(format!("{}/healthz", gw.base))
            .send()
            .await
            .ok()?;
        resp.json::<serde_json::Value>().await.ok()
    })
    .await;
    assert_eq!(health["config_loaded"], false);
    let resp = gw.chat("m1", false).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    gw.stop().await;
}

#[tokio::test]
async fn shutdown_lets_in_flight_streams_finish() {
    let r1 = FakeReplica::start_gated("r1").await;
    let control = FakeControl::start(config(
        1,
        vec![route("m1", ModelKind::Chat, vec![r1.route_replica()])],
    ))
    .await;
    let gw = start(control.url.clone()).await;
    eventually("first config", || async { gw.models().await }).await;

    let resp = gw.chat("m1", true).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    gw.shutdown.cancel();
    for _ in 1..STREAM_EVENTS {
        r1.release();
    }
    let text = within("stream to finish", resp.text()).await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    within("gateway to stop", gw.task).await.unwrap().unwrap();
    control.stop().await;
}
