//! Shared setup of the control-plane tests: a control plane on a temp data dir and a way to
//! call its router without a socket.

#![allow(dead_code)]

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tempfile::TempDir;
use tower::ServiceExt;
use wattmesh_control::{ADMIN_TOKEN_FILE, BOOTSTRAP_TOKEN_FILE, Control, ControlConfig};

pub struct Harness {
    pub dir: TempDir,
    pub control: Control,
    pub admin: String,
    pub bootstrap: String,
    /// The token of gateway `gw-1`, created by the harness.
    pub gateway: String,
}

pub async fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let control = wattmesh_control::open(ControlConfig::new(dir.path()))
        .await
        .unwrap();
    let read = |f: &str| {
        std::fs::read_to_string(dir.path().join(f))
            .unwrap()
            .trim()
            .to_owned()
    };
    let (admin, bootstrap) = (read(ADMIN_TOKEN_FILE), read(BOOTSTRAP_TOKEN_FILE));
    let (status, created) = call(
        &control,
        Method::POST,
        "/api/v1/gateways",
        Some(&admin),
        Some(r#"{"name":"gw-1"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let gateway = created["token"].as_str().unwrap().to_owned();
    Harness {
        dir,
        control,
        admin,
        bootstrap,
        gateway,
    }
}

/// One request through the router: (status, JSON body or `null` when empty).
pub async fn call(
    control: &Control,
    method: Method,
    uri: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = match body {
        Some(b) => req
            .header("content-type", "application/json")
            .body(Body::from(b.to_owned())),
        None => req.body(Body::empty()),
    }
    .unwrap();
    let resp = control.router().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let json = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("{status}: body is not JSON: {bytes:?}"))
    };
    (status, json)
}

impl Harness {
    pub async fn admin(
        &self,
        method: Method,
        uri: &str,
        body: Option<&str>,
    ) -> (StatusCode, Value) {
        call(&self.control, method, uri, Some(&self.admin), body).await
    }

    pub async fn gateway(
        &self,
        method: Method,
        uri: &str,
        body: Option<&str>,
    ) -> (StatusCode, Value) {
        call(&self.control, method, uri, Some(&self.gateway), body).await
    }
}

/// Registers `site`'s agent (region `us`, one 8 GiB node `{site}-n0`, power at `price`
/// USD/MWh); returns its agent token.
pub async fn register_site(h: &Harness, site: &str, price: &str) -> String {
    let body = serde_json::json!({"site": site, "region": "us", "power_price_usd_per_mwh": price,
        "nodes": [{"name": format!("{site}-n0"), "memory_bytes": 8u64 << 30}]});
    let (status, resp) = call(
        &h.control,
        Method::POST,
        "/api/v1/agent/register",
        Some(&h.bootstrap),
        Some(&body.to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    resp["agent_token"].as_str().unwrap().to_owned()
}

/// Posts `body` as a heartbeat with agent `token`: (status, JSON body).
pub async fn post_heartbeat(h: &Harness, token: &str, body: &Value) -> (StatusCode, Value) {
    call(
        &h.control,
        Method::POST,
        "/api/v1/agent/heartbeat",
        Some(token),
        Some(&body.to_string()),
    )
    .await
}

/// Model `smol` and deployment `chat` of it with `replicas` replicas.
pub async fn deploy_chat(h: &Harness, replicas: u32) {
    let deployment = format!(r#"{{"name":"chat","model":"smol","replicas":{replicas}}}"#);
    for (uri, body) in [
        (
            "/api/v1/models",
            r#"{"name":"smol","kind":"chat","artifact":"smol","memory_bytes":1}"#,
        ),
        ("/api/v1/deployments", deployment.as_str()),
    ] {
        let (status, resp) = h.admin(Method::POST, uri, Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{uri}: {resp}");
    }
}

/// The desired state agent `token`'s site is to run.
pub async fn desired(h: &Harness, token: &str) -> Value {
    let (status, resp) = call(
        &h.control,
        Method::GET,
        "/api/v1/agent/desired",
        Some(token),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    resp
}
