//! What a fuzzer found, as regression tests against the whole gateway (`run`) on a real
//! socket: one body limit answered 413 every time (never a replica's refusal turned into a
//! 503), and clients that stall are cut off (headers: closed; body: 408; idle: closed) while a
//! request in flight is not, however long it runs; over the connection cap, new connections
//! wait for a slot. Timeouts are short here, set through `GatewayOptions`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::routing::{get, post};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wattmesh_domain::ModelKind;
use wattmesh_proto::gateway::ModelRoute;

use super::assert_openai_error;
use crate::testing::{
    CONTROL_TOKEN, FakeControl, FakeReplica, KEY, STREAM_EVENTS, chat_answer, config, eventually,
    replica, route, serve, within,
};
use crate::{DEFAULT_MAX_BODY_BYTES, GatewayOptions, run};

/// The gateway's limit, as it runs by default.
const LIMIT: usize = DEFAULT_MAX_BODY_BYTES;
/// A replica's own limit: the engine's, above the gateway's.
const REPLICA_LIMIT: usize = 8 << 20;
/// The short deadline a test puts under scrutiny; the others stay at their defaults.
const SHORT: Duration = Duration::from_millis(300);

// === harness ===

/// `run` against a fake control plane whose config routes `routes`, loaded and ready.
struct Gateway {
    addr: SocketAddr,
    client: reqwest::Client,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    _control: FakeControl,
    _spool: tempfile::TempDir,
}

impl Gateway {
    async fn start(routes: Vec<ModelRoute>, tweak: impl FnOnce(&mut GatewayOptions)) -> Self {
        let control = FakeControl::start(config(1, routes)).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let spool = tempfile::tempdir().unwrap();
        let mut options = GatewayOptions::new(
            control.url.clone(),
            CONTROL_TOKEN.into(),
            spool.path().join("spool.db"),
        );
        tweak(&mut options);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(listener, options, shutdown.clone()));
        let gw = Self {
            addr,
            client: reqwest::Client::new(),
            shutdown,
            task,
            _control: control,
            _spool: spool,
        };
        // Asked on connections that are not kept: they would hold connection slots.
        let once = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        eventually("the gateway to load its config", || async {
            let resp = once
                .get(format!("http://{}/healthz", gw.addr))
                .send()
                .await
                .ok()?;
            let health: serde_json::Value = resp.json().await.ok()?;
            (health["config_loaded"] == true).then_some(())
        })
        .await;
        gw
    }

    fn chat(&self) -> reqwest::RequestBuilder {
        self.client
            .post(format!("http://{}/v1/chat/completions", self.addr))
            .bearer_auth(KEY)
            .header(header::CONTENT_TYPE, "application/json")
    }

    async fn connect(&self) -> TcpStream {
        TcpStream::connect(self.addr).await.unwrap()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        within("gateway to stop", self.task).await.unwrap().unwrap();
    }
}

/// A replica like the engine's server as far as bodies go: it takes up to [`REPLICA_LIMIT`]
/// and records the size of each body it got.
async fn replica_recording_bodies() -> (ModelRoute, Arc<Mutex<Vec<usize>>>, CancellationToken) {
    async fn chat(State(seen): State<Arc<Mutex<Vec<usize>>>>, body: Bytes) -> String {
        seen.lock().unwrap().push(body.len());
        chat_answer("r1")
    }
    let seen = Arc::new(Mutex::new(Vec::new()));
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/health", get(|| async { "ok" }))
        .layer(DefaultBodyLimit::max(REPLICA_LIMIT))
        .with_state(seen.clone());
    let (addr, stop, _) = serve(app).await;
    let route = route(
        "m1",
        ModelKind::Chat,
        vec![replica("r1", &format!("http://{addr}"))],
    );
    (route, seen, stop)
}

/// A chat request of exactly `size` bytes of JSON.
fn chat_body(size: usize) -> Vec<u8> {
    let head = br#"{"model":"m1","messages":[{"role":"user","content":"hi"}],"pad":""#;
    let tail = br#""}"#;
    let mut body = head.to_vec();
    body.resize(size - tail.len(), b'x');
    body.extend_from_slice(tail);
    body
}

/// Reads one answer off a raw connection: its status and body (by `Content-Length`).
async fn read_answer(conn: &mut TcpStream) -> (StatusCode, Vec<u8>) {
    within("an answer", async {
        let mut buf = Vec::new();
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = conn.read(&mut chunk).await.unwrap();
            assert!(
                n > 0,
                "closed before answering: {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let status: u16 = head[9..12].parse().unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        let mut body = buf[head_end..].to_vec();
        while body.len() < length {
            let mut chunk = [0u8; 4096];
            let n = conn.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed in the middle of an answer");
            body.extend_from_slice(&chunk[..n]);
        }
        (StatusCode::from_u16(status).unwrap(), body)
    })
    .await
}

/// Waits until the gateway closes `conn` (end of stream or reset), ignoring what it sends.
async fn closed(what: &str, conn: &mut TcpStream) {
    within(what, async {
        let mut chunk = [0u8; 4096];
        while let Ok(1..) = conn.read(&mut chunk).await {}
    })
    .await;
}

fn healthz_request() -> &'static [u8] {
    b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n"
}

// === one body limit ===

/// How a test client sends an oversized body.
#[derive(Debug, Clone, Copy)]
enum Sender {
    /// reqwest (hyper), which reads an early answer while it is still sending.
    Reqwest,
    /// Writes the whole request before reading anything, as many clients do: an answer sent
    /// before the body is read, then a close, makes its writes fail (broken pipe).
    WritesAllFirst,
}

/// Sends a chat request with `body` (by `Content-Length`, or chunked) and reads the answer.
async fn send(gw: &Gateway, sender: Sender, chunked: bool, body: &Bytes) -> (StatusCode, Bytes) {
    match sender {
        Sender::Reqwest => {
            let request = if chunked {
                let chunks = body
                    .chunks(64 << 10)
                    .map(|c| Ok::<_, std::io::Error>(Bytes::copy_from_slice(c)))
                    .collect::<Vec<_>>();
                gw.chat()
                    .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
            } else {
                gw.chat().body(body.clone())
            };
            let resp = within("an answer", request.send()).await.unwrap();
            (resp.status(), resp.bytes().await.unwrap())
        }
        Sender::WritesAllFirst => {
            let framing = if chunked {
                "Transfer-Encoding: chunked".to_owned()
            } else {
                format!("Content-Length: {}", body.len())
            };
            let mut wire = format!(
                "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {KEY}\r\n\
                 Content-Type: application/json\r\n{framing}\r\n\r\n"
            )
            .into_bytes();
            if chunked {
                for chunk in body.chunks(64 << 10) {
                    wire.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                    wire.extend_from_slice(chunk);
                    wire.extend_from_slice(b"\r\n");
                }
                wire.extend_from_slice(b"0\r\n\r\n");
            } else {
                wire.extend_from_slice(body);
            }
            let mut conn = gw.connect().await;
            within("sending", conn.write_all(&wire))
                .await
                .unwrap_or_else(|e| panic!("the gateway stopped reading mid-body: {e}"));
            let (status, answer) = read_answer(&mut conn).await;
            (status, Bytes::from(answer))
        }
    }
}

/// The fuzzer's finding: bodies over the limit sometimes got 503 (the replica refused them
/// and closed mid-send). Now the gateway answers 413 every time, declared or not, whatever
/// the client, and no replica sees them.
#[tokio::test]
async fn bodies_over_the_limit_get_413_every_time() {
    let (route, seen, _stop) = replica_recording_bodies().await;
    let gw = Gateway::start(vec![route], |_| {}).await;
    let body = Bytes::from(chat_body(LIMIT + 1));
    for i in 0..20 {
        for sender in [Sender::Reqwest, Sender::WritesAllFirst] {
            for chunked in [false, true] {
                let what = format!("try {i}, {sender:?}, chunked: {chunked}");
                let (status, answer) = send(&gw, sender, chunked, &body).await;
                let err = assert_openai_error(
                    &what,
                    status,
                    &answer,
                    413,
                    "invalid_request_error",
                    Some("request_too_large"),
                );
                assert!(err.error.message.contains(&LIMIT.to_string()), "{what}");
            }
        }
    }
    assert!(seen.lock().unwrap().is_empty(), "no replica saw them");
    gw.stop().await;
}

#[tokio::test]
async fn a_3_mib_body_reaches_the_replica_whole() {
    let (route, seen, _stop) = replica_recording_bodies().await;
    let gw = Gateway::start(vec![route], |_| {}).await;
    let size = 3 << 20;
    let resp = gw.chat().body(chat_body(size)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.text().await.unwrap(), chat_answer("r1"));
    assert_eq!(*seen.lock().unwrap(), [size]);
    gw.stop().await;
}

/// A client that asks before sending (`Expect: 100-continue`) is told at once and sends
/// nothing.
#[tokio::test]
async fn an_oversized_body_announced_with_expect_is_refused_before_it_is_sent() {
    let (route, _seen, _stop) = replica_recording_bodies().await;
    let gw = Gateway::start(vec![route], |_| {}).await;
    let mut conn = gw.connect().await;
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        LIMIT + 1
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let (status, body) = read_answer(&mut conn).await;
    assert_openai_error(
        "expect",
        status,
        &body,
        413,
        "invalid_request_error",
        Some("request_too_large"),
    );
    gw.stop().await;
}

// === slow clients ===

#[tokio::test]
async fn stalled_headers_are_cut_off_after_the_header_timeout() {
    let gw = Gateway::start(Vec::new(), |o| {
        o.header_read_timeout = SHORT;
        o.idle_timeout = Duration::from_secs(3600);
    })
    .await;
    // (what the client sends before it stalls)
    let cases: [&[u8]; 3] = [
        b"",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: gw\r\nX-Slow: ",
    ];
    for sent in cases {
        let what = format!("after {:?}", String::from_utf8_lossy(sent));
        let started = Instant::now();
        let mut conn = gw.connect().await;
        conn.write_all(sent).await.unwrap();
        closed(&what, &mut conn).await;
        assert!(
            started.elapsed() >= SHORT,
            "{what}: closed before the timeout"
        );
    }
    gw.stop().await;
}

#[tokio::test]
async fn stalled_bodies_get_408_after_the_body_timeout() {
    let (route, seen, _stop) = replica_recording_bodies().await;
    let gw = Gateway::start(vec![route], |o| o.body_read_timeout = SHORT).await;
    // (framing header, the part of the body sent before the stall)
    let cases = [
        ("Content-Length: 100", "{\"model\":\"m1\""),
        ("Transfer-Encoding: chunked", "d\r\n{\"model\":\"m1\"\r\n"),
    ];
    for (framing, part) in cases {
        let started = Instant::now();
        let mut conn = gw.connect().await;
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {KEY}\r\n\
             Content-Type: application/json\r\n{framing}\r\n\r\n{part}"
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        let (status, body) = read_answer(&mut conn).await;
        assert_eq!(status, StatusCode::REQUEST_TIMEOUT, "{framing}");
        assert_openai_error(framing, status, &body, 408, "invalid_request_error", None);
        assert!(
            started.elapsed() >= SHORT,
            "{framing}: 408 before the timeout"
        );
        // The rest of the body never comes: the connection cannot be reused.
        closed(framing, &mut conn).await;
    }
    assert!(seen.lock().unwrap().is_empty());
    gw.stop().await;
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    // Headers get all the time in the world: only the idle deadline can close it.
    let gw = Gateway::start(Vec::new(), |o| {
        o.idle_timeout = SHORT;
        o.header_read_timeout = Duration::from_secs(3600);
    })
    .await;
    let mut conn = gw.connect().await;
    // Kept alive: a second request on the same connection is served.
    for _ in 0..2 {
        conn.write_all(healthz_request()).await.unwrap();
        assert_eq!(read_answer(&mut conn).await.0, StatusCode::OK);
    }
    let started = Instant::now();
    conn.write_all(healthz_request()).await.unwrap();
    assert_eq!(read_answer(&mut conn).await.0, StatusCode::OK);
    closed("an idle connection", &mut conn).await;
    assert!(started.elapsed() >= SHORT, "closed before the idle timeout");
    gw.stop().await;
}

/// The deadlines are for stalled clients, not slow answers: a stream that outlives all of
/// them is relayed to its end.
#[tokio::test]
async fn a_long_stream_outlives_every_deadline() {
    let r1 = FakeReplica::start_gated("r1").await;
    let routes = vec![route("m1", ModelKind::Chat, vec![r1.route_replica()])];
    let gw = Gateway::start(routes, |o| {
        o.header_read_timeout = SHORT;
        o.body_read_timeout = SHORT;
        o.idle_timeout = SHORT;
    })
    .await;
    let resp = gw
        .chat()
        .body(r#"{"model":"m1","messages":[{"role":"user","content":"hi"}],"stream":true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // Nothing to wait for: the point is that time passes with the stream open.
    tokio::time::sleep(SHORT * 3).await;
    for _ in 1..STREAM_EVENTS {
        r1.release();
    }
    let text = within("the stream to end", resp.text()).await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    gw.stop().await;
}

#[tokio::test]
async fn connections_over_the_cap_wait_for_a_slot() {
    let gw = Gateway::start(Vec::new(), |o| o.max_connections = 2).await;
    let mut first = gw.connect().await;
    let mut second = gw.connect().await;
    for conn in [&mut first, &mut second] {
        conn.write_all(healthz_request()).await.unwrap();
        assert_eq!(read_answer(conn).await.0, StatusCode::OK);
    }
    let mut third = gw.connect().await;
    third.write_all(healthz_request()).await.unwrap();
    // A negative can only be watched for a while: no answer while both slots are held.
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(SHORT, third.read(&mut byte)).await;
    assert!(
        early.is_err(),
        "the third connection was served over the cap"
    );
    drop(first);
    assert_eq!(read_answer(&mut third).await.0, StatusCode::OK);
    // The second one is still served: waiting did not cost anyone their slot.
    second.write_all(healthz_request()).await.unwrap();
    assert_eq!(read_answer(&mut second).await.0, StatusCode::OK);
    gw.stop().await;
}

/// Shutdown with one connection idle and one relaying a stream: the idle one is closed at
/// once, the stream runs to its end, and `run` returns.
#[tokio::test]
async fn shutdown_closes_idle_connections_and_drains_busy_ones() {
    let r1 = FakeReplica::start_gated("r1").await;
    let routes = vec![route("m1", ModelKind::Chat, vec![r1.route_replica()])];
    let gw = Gateway::start(routes, |_| {}).await;
    let mut idle = gw.connect().await;
    idle.write_all(healthz_request()).await.unwrap();
    assert_eq!(read_answer(&mut idle).await.0, StatusCode::OK);
    let stream = gw
        .chat()
        .body(r#"{"model":"m1","messages":[{"role":"user","content":"hi"}],"stream":true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    gw.shutdown.cancel();
    closed("the idle connection at shutdown", &mut idle).await;
    for _ in 1..STREAM_EVENTS {
        r1.release();
    }
    let text = within("the stream to end", stream.text()).await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    within("gateway to stop", gw.task).await.unwrap().unwrap();
}
