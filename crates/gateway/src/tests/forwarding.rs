//! Forwarding against fake replicas on real sockets: answers pass through unchanged, streams
//! arrive as produced, dead and refusing replicas are skipped by retrying once, health probes
//! steer traffic, and outstanding counts return to zero.

use axum::http::{StatusCode, header};
use futures::StreamExt;
use wattmesh_domain::ModelKind;
use wattmesh_proto::gateway::RouteReplica;

use super::assert_openai_error;
use crate::testing::{
    EMBEDDING_ANSWER, FakeReplica, KEY, REFUSED, STREAM_EVENTS, chat_answer, config, dead_endpoint,
    eventually, replica, route, serve, stream_event, within,
};
use crate::{GatewayState, health, router};

/// A gateway on a real socket whose `chat-m` is served by `chat` and `embed-m` by `embed`.
struct Gateway {
    state: GatewayState,
    base: String,
    client: reqwest::Client,
    _stop: tokio_util::sync::DropGuard,
    _spool: tempfile::TempDir,
}

impl Gateway {
    async fn start(chat: Vec<RouteReplica>, embed: Vec<RouteReplica>) -> Self {
        let (state, spool) = crate::testing::state(4 << 20).await;
        state.set_config(config(
            1,
            vec![
                route("chat-m", ModelKind::Chat, chat),
                route("embed-m", ModelKind::Embedding, embed),
            ],
        ));
        let (addr, stop, _) = serve(router(state.clone())).await;
        Self {
            state,
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
            _stop: stop.drop_guard(),
            _spool: spool,
        }
    }

    fn post(&self, path: &str, body: &str) -> reqwest::RequestBuilder {
        self.client
            .post(format!("{}{path}", self.base))
            .bearer_auth(KEY)
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.to_owned())
    }

    async fn chat(&self, body: &str) -> reqwest::Response {
        within(
            "gateway answer",
            self.post("/v1/chat/completions", body).send(),
        )
        .await
        .unwrap()
    }

    async fn wait_idle(&self, replica: &str) {
        eventually(&format!("outstanding of {replica} back to 0"), || async {
            (self.state.outstanding(replica) == 0).then_some(())
        })
        .await;
    }
}

const CHAT: &str = r#"{"model":"chat-m","messages":[{"role":"user","content":"hi"}]}"#;
const CHAT_STREAM: &str =
    r#"{"model":"chat-m","messages":[{"role":"user","content":"hi"}],"stream":true}"#;

/// Status, content type and body bytes.
async fn parts(resp: reqwest::Response) -> (u16, Option<String>, Vec<u8>) {
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned());
    (status, ct, resp.bytes().await.unwrap().to_vec())
}

#[tokio::test]
async fn answers_pass_through_unchanged() {
    let chat = FakeReplica::start("r1").await;
    let embed = FakeReplica::start("e1").await;
    let gw = Gateway::start(vec![chat.route_replica()], vec![embed.route_replica()]).await;
    let direct = reqwest::Client::new();

    // (what, gateway path, body, expected status, expected body)
    let answer = chat_answer("r1");
    let cases: [(&str, &str, &str, u16, &str); 4] = [
        ("chat", "/v1/chat/completions", CHAT, 200, &answer),
        (
            "completions",
            "/v1/completions",
            r#"{"model":"chat-m","prompt":"x"}"#,
            200,
            &answer,
        ),
        (
            "embeddings",
            "/v1/embeddings",
            r#"{"model":"embed-m","input":"hi"}"#,
            200,
            EMBEDDING_ANSWER,
        ),
        (
            "replica's own 400",
            "/v1/chat/completions",
            r#"{"model":"chat-m"}"#,
            400,
            r#""param":"messages""#,
        ),
    ];
    for (what, path, body, want_status, want_body) in cases {
        let upstream = if path == "/v1/embeddings" {
            &embed
        } else {
            &chat
        };
        let from_replica = parts(
            direct
                .post(format!("{}{path}", upstream.endpoint))
                .header(header::CONTENT_TYPE, "application/json")
                .body(body)
                .send()
                .await
                .unwrap(),
        )
        .await;
        let via_gateway = parts(gw.post(path, body).send().await.unwrap()).await;
        assert_eq!(via_gateway, from_replica, "{what}");
        assert_eq!(via_gateway.0, want_status, "{what}");
        assert!(
            String::from_utf8_lossy(&via_gateway.2).contains(want_body),
            "{what}"
        );
        assert_eq!(via_gateway.1.as_deref(), Some("application/json"), "{what}");
    }
    // The customer's key stays at the gateway.
    assert!(chat.seen_auth.lock().unwrap().iter().all(Option::is_none));
    gw.wait_idle("r1").await;
    gw.wait_idle("e1").await;
}

#[tokio::test]
async fn sse_events_reach_the_client_as_the_replica_produces_them() {
    let r1 = FakeReplica::start_gated("r1").await;
    let gw = Gateway::start(vec![r1.route_replica()], vec![]).await;
    let resp = gw.chat(CHAT_STREAM).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/event-stream");
    assert_eq!(resp.headers()[header::CACHE_CONTROL], "no-cache");
    assert_eq!(
        gw.state.outstanding("r1"),
        1,
        "a stream being relayed is outstanding"
    );

    let mut body = resp.bytes_stream();
    let mut received = String::new();
    let mut chunks = 0;
    for i in 0..STREAM_EVENTS {
        // Event i is produced only after i releases: receiving it before the next release
        // proves the gateway relays without buffering.
        let want: String = (0..=i).map(|j| stream_event("r1", j)).collect();
        while received.len() < want.len() {
            let chunk = within("next SSE chunk", body.next())
                .await
                .unwrap()
                .unwrap();
            received.push_str(std::str::from_utf8(&chunk).unwrap());
            chunks += 1;
        }
        assert_eq!(received, want, "after event {i}");
        r1.release();
    }
    assert!(within("end of stream", body.next()).await.is_none());
    assert!(received.ends_with("data: [DONE]\n\n"));
    assert!(chunks >= STREAM_EVENTS, "{chunks} chunks");
    gw.wait_idle("r1").await;
}

#[tokio::test]
async fn a_client_that_goes_away_mid_stream_ends_the_count() {
    let r1 = FakeReplica::start_gated("r1").await;
    let gw = Gateway::start(vec![r1.route_replica()], vec![]).await;
    let resp = gw.chat(CHAT_STREAM).await;
    let mut body = resp.bytes_stream();
    within("first chunk", body.next()).await.unwrap().unwrap();
    assert_eq!(gw.state.outstanding("r1"), 1);
    drop(body);
    gw.wait_idle("r1").await;
}

#[tokio::test]
async fn a_dead_replica_is_skipped_by_retrying_once() {
    let live = FakeReplica::start("b-live").await;
    // Both idle: the tie goes to the smaller id, the dead one.
    let dead = replica("a-dead", &dead_endpoint().await);
    let gw = Gateway::start(vec![dead, live.route_replica()], vec![]).await;

    let (status, _, body) = parts(gw.chat(CHAT).await).await;
    assert_eq!((status, body), (200, chat_answer("b-live").into_bytes()));
    assert!(
        !gw.state.replica_healthy("a-dead"),
        "ejected after the connect error"
    );
    assert_eq!(live.served(), 1);

    // Ejected: the next request goes straight to the live one, streams included.
    let (status, _, body) = parts(gw.chat(CHAT_STREAM).await).await;
    assert_eq!(status, 200);
    assert!(
        String::from_utf8(body)
            .unwrap()
            .ends_with("data: [DONE]\n\n")
    );
    assert_eq!(live.served(), 2);
    gw.wait_idle("b-live").await;
    assert_eq!(gw.state.outstanding("a-dead"), 0);
}

#[tokio::test]
async fn a_replica_answering_503_is_ejected_and_the_request_retried() {
    let refusing = FakeReplica::start("a-busy").await;
    refusing
        .refuse
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let ok = FakeReplica::start("b-ok").await;
    let gw = Gateway::start(vec![refusing.route_replica(), ok.route_replica()], vec![]).await;

    let (status, _, body) = parts(gw.chat(CHAT).await).await;
    assert_eq!((status, body), (200, chat_answer("b-ok").into_bytes()));
    assert_eq!((refusing.served(), ok.served()), (1, 1));
    assert!(!gw.state.replica_healthy("a-busy"));
    gw.wait_idle("a-busy").await;
    gw.wait_idle("b-ok").await;
}

#[tokio::test]
async fn with_no_replica_left_the_client_gets_503() {
    // Only a dead replica: our own 503, OpenAI-shaped, with Retry-After; internals stay out.
    let dead_url = dead_endpoint().await;
    let gw = Gateway::start(vec![replica("dead", &dead_url)], vec![]).await;
    let resp = gw.chat(CHAT).await;
    assert!(resp.headers().contains_key(header::RETRY_AFTER));
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap();
    let body = resp.bytes().await.unwrap();
    assert_openai_error(
        "dead replica",
        status,
        &body,
        503,
        "server_error",
        Some("service_unavailable"),
    );
    assert!(!String::from_utf8_lossy(&body).contains(&dead_url));
    // Ejected now: refused without trying.
    let resp = gw.chat(CHAT).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);

    // Only a refusing replica: its own 503 passes through.
    let refusing = FakeReplica::start("busy").await;
    refusing
        .refuse
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let gw = Gateway::start(vec![refusing.route_replica()], vec![]).await;
    let (status, _, body) = parts(gw.chat(CHAT).await).await;
    assert_eq!((status, body), (503, REFUSED.as_bytes().to_vec()));
    gw.wait_idle("busy").await;
}

#[tokio::test]
async fn a_busy_replica_is_avoided() {
    let a = FakeReplica::start_gated("a").await;
    let b = FakeReplica::start_gated("b").await;
    let gw = Gateway::start(vec![a.route_replica(), b.route_replica()], vec![]).await;

    // A stream held open on `a` (the tie-break choice) makes `b` the least loaded.
    let held = gw.chat(CHAT_STREAM).await;
    assert_eq!(a.served(), 1);
    assert_eq!(gw.state.outstanding("a"), 1);
    let (status, _, body) = parts(gw.chat(CHAT).await).await;
    assert_eq!((status, body), (200, chat_answer("b").into_bytes()));

    for _ in 1..STREAM_EVENTS {
        a.release();
    }
    let text = held.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"));
    gw.wait_idle("a").await;
    gw.wait_idle("b").await;
    // Both idle again: back to `a`.
    let (_, _, body) = parts(gw.chat(CHAT).await).await;
    assert_eq!(body, chat_answer("a").into_bytes());
}

#[tokio::test]
async fn health_probes_eject_and_restore_replicas() {
    use std::sync::atomic::Ordering;
    let a = FakeReplica::start("a").await;
    let b = FakeReplica::start("b").await;
    let gw = Gateway::start(vec![a.route_replica(), b.route_replica()], vec![]).await;

    a.healthy.store(false, Ordering::SeqCst);
    health::probe_all(&gw.state).await;
    assert!(!gw.state.replica_healthy("a"));
    assert!(gw.state.replica_healthy("b"));
    let (_, _, body) = parts(gw.chat(CHAT).await).await;
    assert_eq!(body, chat_answer("b").into_bytes());

    a.healthy.store(true, Ordering::SeqCst);
    health::probe_all(&gw.state).await;
    assert!(gw.state.replica_healthy("a"));
    gw.wait_idle("b").await;
    let (_, _, body) = parts(gw.chat(CHAT).await).await;
    assert_eq!(body, chat_answer("a").into_bytes());

    // A probe that passes lifts a passive ejection too.
    gw.state.replicas.get("a").eject(crate::replicas::EJECTION);
    health::probe_all(&gw.state).await;
    assert!(gw.state.replica_healthy("a"));
}
