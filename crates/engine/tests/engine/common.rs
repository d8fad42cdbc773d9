//! Shared fixtures: where the test models live, the replicas loaded once per binary, and
//! small helpers to call a router without a socket.

use std::path::PathBuf;
use std::sync::LazyLock;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;
use wattmesh_domain::ModelKind;
use wattmesh_engine::Replica;

pub const CHAT_NAME: &str = "smollm2-135m-instruct";
pub const EMBED_NAME: &str = "all-minilm-l6-v2";

/// `$WATTMESH_TEST_MODELS`, or `<workspace>/target/test-data/models`.
pub fn models_dir() -> PathBuf {
    match std::env::var_os("WATTMESH_TEST_MODELS") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-data/models"),
    }
}

/// The directory of one test model; a missing model fails the test, never skips it.
pub fn model_dir(name: &str) -> PathBuf {
    let dir = models_dir().join(name);
    assert!(
        dir.is_dir(),
        "test model {name} is missing at {}: run ./scripts/test, or \
         `cargo run -- models pull --models-dir target/test-data/models`",
        dir.display()
    );
    dir
}

/// `$WATTMESH_TEST_VOCABS`, or `<workspace>/target/test-data/vocab`: llama.cpp's vocab-only
/// GGUFs with their test inputs and ids, extracted by `scripts/fetch-vocabs`.
pub fn vocabs_dir() -> PathBuf {
    match std::env::var_os("WATTMESH_TEST_VOCABS") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-data/vocab"),
    }
}

/// One file of the vocab test data; a missing file fails the test, never skips it.
pub fn vocab_file(name: &str) -> PathBuf {
    let path = vocabs_dir().join(name);
    assert!(
        path.is_file(),
        "llama.cpp vocab test file {name} is missing at {}: run ./scripts/fetch-vocabs \
         (./scripts/test runs it) and set WATTMESH_TEST_VOCABS to its output directory",
        path.display()
    );
    path
}

pub fn load_chat() -> Replica {
    Replica::load(CHAT_NAME, ModelKind::Chat, &model_dir(CHAT_NAME)).expect("load chat model")
}

pub static CHAT: LazyLock<Replica> = LazyLock::new(load_chat);

pub static EMBED: LazyLock<Replica> = LazyLock::new(|| {
    Replica::load(EMBED_NAME, ModelKind::Embedding, &model_dir(EMBED_NAME))
        .expect("load embedding model")
});

/// Sends one request to a fresh router over `replica`; returns the status and raw body.
pub async fn call_raw(
    replica: &Replica,
    method: &str,
    path: &str,
    body: impl Into<Body>,
) -> (StatusCode, Vec<u8>) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(body.into())
        .unwrap();
    let resp = wattmesh_engine::router(replica.clone())
        .oneshot(req)
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, bytes.to_vec())
}

/// POSTs JSON; returns the status and the JSON body.
pub async fn post(replica: &Replica, path: &str, body: Value) -> (StatusCode, Value) {
    let (status, bytes) = call_raw(replica, "POST", path, body.to_string()).await;
    let json = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "{path}: body is not JSON ({e}): {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    (status, json)
}

/// A successful chat completion's JSON.
pub async fn chat(body: Value) -> Value {
    let (status, json) = post(&CHAT, "/v1/chat/completions", body).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    json
}

pub fn germany() -> Value {
    serde_json::json!([{"role": "user", "content": "What is the capital of Germany?"}])
}
