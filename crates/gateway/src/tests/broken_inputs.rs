//! Every way a request can be wrong before it reaches a replica, as a table: each gets its
//! status and OpenAI's error shape, never a 500.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use tower::ServiceExt;
use wattmesh_domain::ModelKind;

use super::assert_openai_error;
use crate::testing::{KEY, config, route};
use crate::{GatewayState, router};

const LIMIT: usize = 4 << 20;

enum Payload {
    Empty,
    Json(&'static str),
    /// A valid chat body padded to this many bytes, with its Content-Length.
    Sized(usize),
    /// The same, streamed without a Content-Length.
    Streamed(usize),
}

struct Case {
    name: &'static str,
    method: Method,
    path: &'static str,
    auth: Option<&'static str>,
    payload: Payload,
    status: u16,
    error_type: &'static str,
    code: Option<&'static str>,
}

fn padded_chat(len: usize) -> Vec<u8> {
    let head = br#"{"model":"chat-m","messages":[],"pad":""#;
    let tail = br#""}"#;
    let mut body = head.to_vec();
    body.resize(len - tail.len(), b'x');
    body.extend_from_slice(tail);
    body
}

fn request(case: &Case) -> Request<Body> {
    let mut req = Request::builder()
        .method(case.method.clone())
        .uri(case.path);
    if let Some(auth) = case.auth {
        req = req.header(header::AUTHORIZATION, auth);
    }
    let body = match &case.payload {
        Payload::Empty => Body::empty(),
        Payload::Json(s) => Body::from(*s),
        Payload::Sized(n) => {
            req = req.header(header::CONTENT_LENGTH, n.to_string());
            Body::from(padded_chat(*n))
        }
        Payload::Streamed(n) => {
            let chunks: Vec<Result<Vec<u8>, std::io::Error>> = padded_chat(*n)
                .chunks(64 * 1024)
                .map(|c| Ok(c.to_vec()))
                .collect();
            Body::from_stream(futures::stream::iter(chunks))
        }
    };
    req.header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .unwrap()
}

async fn state() -> (GatewayState, tempfile::TempDir) {
    let (state, dir) = crate::testing::state(LIMIT).await;
    state.set_config(config(
        1,
        vec![
            route("chat-m", ModelKind::Chat, vec![]),
            route("embed-m", ModelKind::Embedding, vec![]),
        ],
    ));
    (state, dir)
}

#[tokio::test]
async fn broken_requests_get_openai_errors() {
    let bearer: &'static str = format!("Bearer {KEY}").leak();
    let unknown_key = "Bearer sk-unknown-9876543210fedcba";
    let post = Method::POST;
    let chat = "/v1/chat/completions";
    #[rustfmt::skip]
    let cases = [
        Case { name: "no Authorization", method: post.clone(), path: chat, auth: None,
            payload: Payload::Json(r#"{"model":"chat-m"}"#), status: 401, error_type: "invalid_request_error", code: Some("invalid_api_key") },
        Case { name: "Basic auth", method: post.clone(), path: chat, auth: Some("Basic dXNlcjpwYXNz"),
            payload: Payload::Json(r#"{"model":"chat-m"}"#), status: 401, error_type: "invalid_request_error", code: Some("invalid_api_key") },
        Case { name: "Bearer without a key", method: post.clone(), path: chat, auth: Some("Bearer "),
            payload: Payload::Json(r#"{"model":"chat-m"}"#), status: 401, error_type: "invalid_request_error", code: Some("invalid_api_key") },
        Case { name: "unknown key", method: post.clone(), path: chat, auth: Some(unknown_key),
            payload: Payload::Json(r#"{"model":"chat-m"}"#), status: 401, error_type: "invalid_request_error", code: Some("invalid_api_key") },
        Case { name: "unknown key on /v1/models", method: Method::GET, path: "/v1/models", auth: Some(unknown_key),
            payload: Payload::Empty, status: 401, error_type: "invalid_request_error", code: Some("invalid_api_key") },
        Case { name: "auth before body: bad key with a broken body", method: post.clone(), path: chat, auth: Some(unknown_key),
            payload: Payload::Json("{not json"), status: 401, error_type: "invalid_request_error", code: Some("invalid_api_key") },
        Case { name: "malformed JSON", method: post.clone(), path: chat, auth: Some(bearer),
            payload: Payload::Json(r#"{"model":"chat-m","#), status: 400, error_type: "invalid_request_error", code: None },
        Case { name: "empty body", method: post.clone(), path: chat, auth: Some(bearer),
            payload: Payload::Empty, status: 400, error_type: "invalid_request_error", code: None },
        Case { name: "JSON array body", method: post.clone(), path: chat, auth: Some(bearer),
            payload: Payload::Json(r#"[{"model":"chat-m"}]"#), status: 400, error_type: "invalid_request_error", code: None },
        Case { name: "missing model", method: post.clone(), path: chat, auth: Some(bearer),
            payload: Payload::Json(r#"{"messages":[]}"#), status: 400, error_type: "invalid_request_error", code: None },
        Case { name: "model not a string", method: post.clone(), path: chat, auth: Some(bearer),
            payload: Payload::Json(r#"{"model":42,"messages":[]}"#), status: 400, error_type: "invalid_request_error", code: None },
        Case { name: "unknown model", method: post.clone(), path: chat, auth: Some(bearer),
            payload: Payload::Json(r#"{"model":"gpt-9","messages":[]}"#), status: 404, error_type: "invalid_request_error", code: Some("model_not_found") },
        Case { name: "embeddings on a chat model", method: post.clone(), path: "/v1/embeddings", auth: Some(bearer),
            payload: Payload::Json(r#"{"model":"chat-m","input":"hi"}"#), status: 400, error_type: "invalid_request_error", code: None },
        Case { name: "chat on an embedding model", method: post.clone(), path: chat, auth: Some(bearer),
            payload: Payload::Json(r#"{"model":"embed-m","messages":[]}"#), status: 400, error_type: "invalid_request_error", code: None },
        Case { name: "completions on an embedding model", method: post.clone(), path: "/v1/completions", auth: Some(bearer),
            payload: Payload::Json(r#"{"model":"embed-m","prompt":"x"}"#), status: 400, error_type: "invalid_request_error", code: None },
        Case { name: "oversize body with Content-Length", method: post.clone(), path: chat, auth: Some(bearer),
            payload: Payload::Sized(LIMIT + 1), status: 413, error_type: "invalid_request_error", code: Some("request_too_large") },
        Case { name: "oversize body without Content-Length", method: post.clone(), path: chat, auth: Some(bearer),
            payload: Payload::Streamed(LIMIT + 1), status: 413, error_type: "invalid_request_error", code: Some("request_too_large") },
        Case { name: "body of exactly the limit is read (then no replica)", method: post.clone(), path: chat, auth: Some(bearer),
            payload: Payload::Streamed(LIMIT), status: 503, error_type: "server_error", code: Some("service_unavailable") },
        Case { name: "body above axum's 2 MiB default is read (then no replica)", method: post.clone(), path: chat, auth: Some(bearer),
            payload: Payload::Sized(3 << 20), status: 503, error_type: "server_error", code: Some("service_unavailable") },
        Case { name: "unknown route", method: post.clone(), path: "/v1/images/generations", auth: Some(bearer),
            payload: Payload::Json("{}"), status: 404, error_type: "invalid_request_error", code: Some("not_found") },
        Case { name: "unknown route without auth", method: Method::GET, path: "/", auth: None,
            payload: Payload::Empty, status: 404, error_type: "invalid_request_error", code: Some("not_found") },
        Case { name: "wrong method", method: Method::GET, path: chat, auth: Some(bearer),
            payload: Payload::Empty, status: 405, error_type: "invalid_request_error", code: Some("method_not_allowed") },
        Case { name: "wrong method without auth", method: Method::DELETE, path: "/v1/embeddings", auth: None,
            payload: Payload::Empty, status: 405, error_type: "invalid_request_error", code: Some("method_not_allowed") },
        Case { name: "no replica", method: post.clone(), path: chat, auth: Some(bearer),
            payload: Payload::Json(r#"{"model":"chat-m","messages":[]}"#), status: 503, error_type: "server_error", code: Some("service_unavailable") },
        Case { name: "no replica for embeddings", method: post.clone(), path: "/v1/embeddings", auth: Some(bearer),
            payload: Payload::Json(r#"{"model":"embed-m","input":"hi"}"#), status: 503, error_type: "server_error", code: Some("service_unavailable") },
    ];
    let (state, _spool) = state().await;
    for case in &cases {
        let resp = router(state.clone()).oneshot(request(case)).await.unwrap();
        let status = resp.status();
        let retry_after = resp.headers().get(header::RETRY_AFTER).cloned();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let err = assert_openai_error(
            case.name,
            status,
            &body,
            case.status,
            case.error_type,
            case.code,
        );
        assert_eq!(
            retry_after.is_some(),
            case.status == 503,
            "{}: Retry-After",
            case.name
        );
        assert!(
            !String::from_utf8_lossy(&body).contains("unknown-9876543210fedcba"),
            "{}: the key is echoed: {}",
            case.name,
            err.error.message
        );
    }
}

#[tokio::test]
async fn before_the_first_config_requests_get_503_not_401() {
    let (state, _spool) = crate::testing::state(LIMIT).await;
    for (method, path) in [
        (Method::POST, "/v1/chat/completions"),
        (Method::GET, "/v1/models"),
    ] {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, "Bearer whatever")
            .body(Body::from(r#"{"model":"chat-m"}"#))
            .unwrap();
        let resp = router(state.clone()).oneshot(req).await.unwrap();
        assert!(resp.headers().contains_key(header::RETRY_AFTER));
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_openai_error(
            path,
            status,
            &body,
            503,
            "server_error",
            Some("service_unavailable"),
        );
    }
}

#[tokio::test]
async fn models_lists_routed_models_and_healthz_needs_no_key() {
    let (state, _spool) = state().await;
    let app = router(state);
    let req = Request::get("/v1/models")
        .header(header::AUTHORIZATION, format!("Bearer {KEY}"))
        .body(Body::empty())
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["object"], "list");
    let ids: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["chat-m", "embed-m"]);
    assert_eq!(body["data"][0]["object"], "model");

    let resp = app
        .oneshot(Request::get("/healthz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["config_loaded"], true);
    assert_eq!(body["config_version"], 1);
}
