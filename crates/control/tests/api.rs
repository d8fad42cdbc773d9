//! The operator API through `router().oneshot(..)`: authentication, errors as `ApiError`
//! JSON for every kind of broken input, token files, the OpenAPI document, API keys.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;

use axum::http::{Method, StatusCode};
use common::{call, harness};
use serde_json::{Value, json};
use wattmesh_control::{ADMIN_TOKEN_FILE, BOOTSTRAP_TOKEN_FILE, ControlConfig};

/// (what, method, uri, body, expected status, expected code)
type Case<'a> = (
    &'a str,
    Method,
    &'a str,
    Option<&'a str>,
    StatusCode,
    &'a str,
);

fn code(body: &Value) -> &str {
    body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not an ApiError: {body}"))
}

#[tokio::test]
async fn operator_routes_need_the_admin_token() {
    let h = harness().await;
    for token in [None, Some("wm-admin-wrong"), Some(h.bootstrap.as_str())] {
        for (method, uri) in [
            (Method::GET, "/api/v1/regions"),
            (Method::GET, "/api/v1/status"),
        ] {
            let (status, body) = call(&h.control, method, uri, token, None).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri} with {token:?}");
            assert_eq!(code(&body), "unauthorized");
        }
    }
    let (status, body) = call(
        &h.control,
        Method::POST,
        "/api/v1/regions",
        None,
        Some(r#"{"name":"us"}"#),
    )
    .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    let (status, _) = h.admin(Method::GET, "/api/v1/regions", None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn broken_inputs_get_4xx_api_errors_never_500() {
    let h = harness().await;
    let setup = [
        ("/api/v1/regions", r#"{"name":"us"}"#),
        (
            "/api/v1/sites",
            r#"{"name":"georgia-1","region":"us","power_price_usd_per_mwh":"42"}"#,
        ),
        (
            "/api/v1/models",
            r#"{"name":"smol","kind":"chat","artifact":"smol","memory_bytes":1}"#,
        ),
        ("/api/v1/tenants", r#"{"name":"acme"}"#),
    ];
    for (uri, body) in setup {
        let (status, resp) = h.admin(Method::POST, uri, Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{uri}: {resp}");
    }
    let oversize = format!(r#"{{"name":"{}"}}"#, "x".repeat(2 << 20));

    // (what, method, uri, body, expected status, expected code)
    #[rustfmt::skip]
    let cases: &[Case] = &[
        ("malformed JSON", Method::POST, "/api/v1/regions", Some("{\"name\":"), StatusCode::BAD_REQUEST, "bad_request"),
        ("not JSON at all", Method::POST, "/api/v1/tenants", Some("hello"), StatusCode::BAD_REQUEST, "bad_request"),
        ("wrong type", Method::POST, "/api/v1/regions", Some(r#"{"name":42}"#), StatusCode::BAD_REQUEST, "bad_request"),
        ("negative replicas", Method::POST, "/api/v1/deployments", Some(r#"{"name":"d","model":"smol","replicas":-1}"#), StatusCode::BAD_REQUEST, "bad_request"),
        ("price not a number", Method::POST, "/api/v1/sites", Some(r#"{"name":"s","region":"us","power_price_usd_per_mwh":"cheap"}"#), StatusCode::BAD_REQUEST, "bad_request"),
        ("unknown model kind", Method::POST, "/api/v1/models", Some(r#"{"name":"m","kind":"vision","artifact":"m","memory_bytes":1}"#), StatusCode::BAD_REQUEST, "bad_request"),
        ("unknown field", Method::POST, "/api/v1/regions", Some(r#"{"name":"eu","colour":"blue"}"#), StatusCode::BAD_REQUEST, "bad_request"),
        ("missing field", Method::POST, "/api/v1/nodes", Some(r#"{"name":"n1","site":"georgia-1"}"#), StatusCode::BAD_REQUEST, "bad_request"),
        ("empty body", Method::POST, "/api/v1/tenants", None, StatusCode::BAD_REQUEST, "bad_request"),
        ("invalid name", Method::POST, "/api/v1/regions", Some(r#"{"name":"no spaces please"}"#), StatusCode::BAD_REQUEST, "bad_request"),
        ("memory too large", Method::POST, "/api/v1/nodes", Some(r#"{"name":"n1","site":"georgia-1","memory_bytes":18446744073709551615}"#), StatusCode::BAD_REQUEST, "bad_request"),
        ("unknown region", Method::POST, "/api/v1/sites", Some(r#"{"name":"s","region":"mars","power_price_usd_per_mwh":"1"}"#), StatusCode::NOT_FOUND, "not_found"),
        ("unknown site", Method::POST, "/api/v1/nodes", Some(r#"{"name":"n1","site":"nowhere","memory_bytes":1}"#), StatusCode::NOT_FOUND, "not_found"),
        ("unknown model", Method::POST, "/api/v1/deployments", Some(r#"{"name":"d","model":"gpt-9","replicas":1}"#), StatusCode::NOT_FOUND, "not_found"),
        ("unknown tenant", Method::POST, "/api/v1/keys", Some(r#"{"tenant":"ghost"}"#), StatusCode::NOT_FOUND, "not_found"),
        ("unknown site by name", Method::GET, "/api/v1/sites/nowhere", None, StatusCode::NOT_FOUND, "not_found"),
        ("scale unknown deployment", Method::PATCH, "/api/v1/deployments/nope", Some(r#"{"replicas":1}"#), StatusCode::NOT_FOUND, "not_found"),
        ("revoke unknown key", Method::DELETE, "/api/v1/keys/nope", None, StatusCode::NOT_FOUND, "not_found"),
        ("duplicate region", Method::POST, "/api/v1/regions", Some(r#"{"name":"us"}"#), StatusCode::CONFLICT, "conflict"),
        ("duplicate site", Method::POST, "/api/v1/sites", Some(r#"{"name":"georgia-1","region":"us","power_price_usd_per_mwh":"1"}"#), StatusCode::CONFLICT, "conflict"),
        ("duplicate tenant", Method::POST, "/api/v1/tenants", Some(r#"{"name":"acme"}"#), StatusCode::CONFLICT, "conflict"),
        ("region still has sites", Method::DELETE, "/api/v1/regions/us", None, StatusCode::CONFLICT, "conflict"),
        ("oversize body", Method::POST, "/api/v1/regions", Some(&oversize), StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
        ("unknown route", Method::GET, "/api/v1/nothing-here", None, StatusCode::NOT_FOUND, "not_found"),
        ("unknown route outside the API", Method::GET, "/", None, StatusCode::NOT_FOUND, "not_found"),
        ("wrong method", Method::PUT, "/api/v1/regions", Some(r#"{"name":"x"}"#), StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        ("wrong method on an item", Method::POST, "/api/v1/sites/georgia-1", None, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
    ];
    let mut failures = Vec::new();
    for (what, method, uri, body, want_status, want_code) in cases {
        let (status, resp) = h.admin(method.clone(), uri, *body).await;
        let got_code = resp["error"]["code"]
            .as_str()
            .unwrap_or("<not an ApiError>");
        let message = resp["error"]["message"].as_str().unwrap_or("");
        if status != *want_status || got_code != *want_code || message.is_empty() {
            failures.push(format!(
                "{what}: got {status} {resp}, want {want_status} {want_code}"
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[tokio::test]
async fn token_files_are_0600_and_survive_a_restart() {
    let h = harness().await;
    for file in [ADMIN_TOKEN_FILE, BOOTSTRAP_TOKEN_FILE] {
        let mode = std::fs::metadata(h.dir.path().join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    assert!(h.admin.starts_with("wm-admin-") && h.bootstrap.starts_with("wm-boot-"));
    h.admin(Method::POST, "/api/v1/regions", Some(r#"{"name":"us"}"#))
        .await;

    let reopened = wattmesh_control::open(ControlConfig::new(h.dir.path()))
        .await
        .unwrap();
    let admin_again = std::fs::read_to_string(h.dir.path().join(ADMIN_TOKEN_FILE)).unwrap();
    assert_eq!(admin_again.trim(), h.admin, "not regenerated");
    let (status, regions) = call(
        &reopened,
        Method::GET,
        "/api/v1/regions",
        Some(&h.admin),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(regions, json!([{"name": "us"}]), "state kept");
}

#[tokio::test]
async fn openapi_document_is_public_json_listing_the_routes() {
    let h = harness().await;
    let (status, doc) = call(&h.control, Method::GET, "/api/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/api/v1/deployments",
        "/api/v1/agent/register",
        "/api/v1/gateway/config",
    ] {
        assert!(paths.contains_key(p), "{p} missing from {:?}", paths.keys());
    }
    assert!(doc["components"]["schemas"]["ApiError"].is_object());
}

#[tokio::test]
async fn api_keys_show_their_secret_once_and_reach_the_gateway_hashed() {
    let h = harness().await;
    h.admin(Method::POST, "/api/v1/tenants", Some(r#"{"name":"acme"}"#))
        .await;
    let (status, created) = h
        .admin(
            Method::POST,
            "/api/v1/keys",
            Some(r#"{"tenant":"acme","name":"ci"}"#),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let secret = created["secret"].as_str().unwrap();
    assert!(secret.starts_with("sk-wm-") && secret.len() >= 46);
    assert!(secret.starts_with(created["prefix"].as_str().unwrap()));
    let id = created["id"].as_str().unwrap();

    let (_, listed) = h.admin(Method::GET, "/api/v1/keys", None).await;
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert!(listed[0].get("secret").is_none() && !listed.to_string().contains(secret));

    let (_, config) = h.gateway(Method::GET, "/api/v1/gateway/config", None).await;
    assert_eq!(config["gateway"], "gw-1");
    assert_eq!(config["keys"][0]["id"], id);
    let hash = config["keys"][0]["secret_sha256"].as_str().unwrap();
    assert_eq!(hash.len(), 64);
    assert!(!config.to_string().contains(secret));
    let version = config["version"].as_u64().unwrap();

    let (status, revoked) = h
        .admin(Method::DELETE, &format!("/api/v1/keys/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{revoked}");
    assert_eq!(revoked["status"], "revoked");
    assert_eq!(revoked["revoked_by"], "admin");
    // Revoked keys stay listed, with when and by whom.
    let (_, listed) = h.admin(Method::GET, "/api/v1/keys", None).await;
    assert_eq!(listed[0]["status"], "revoked");
    assert!(listed[0]["revoked_at"].is_string());
    let (status, again) = h
        .admin(Method::DELETE, &format!("/api/v1/keys/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{again}");
    let (_, config) = h.gateway(Method::GET, "/api/v1/gateway/config", None).await;
    assert_eq!(config["keys"], json!([]));
    assert!(
        config["version"].as_u64().unwrap() > version,
        "revocation moves the version"
    );
}

#[tokio::test]
async fn nodes_created_by_the_operator_are_not_ready_until_their_site_heartbeats() {
    let h = harness().await;
    for (uri, body) in [
        ("/api/v1/regions", r#"{"name":"us"}"#),
        (
            "/api/v1/sites",
            r#"{"name":"georgia-1","region":"us","power_price_usd_per_mwh":"42.5"}"#,
        ),
        (
            "/api/v1/nodes",
            r#"{"name":"g1","site":"georgia-1","memory_bytes":8589934592}"#,
        ),
        (
            "/api/v1/models",
            r#"{"name":"smol","kind":"chat","artifact":"smol","memory_bytes":1}"#,
        ),
        (
            "/api/v1/deployments",
            r#"{"name":"chat","model":"smol","replicas":1}"#,
        ),
    ] {
        let (status, resp) = h.admin(Method::POST, uri, Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{uri}: {resp}");
    }
    let (_, status) = h.admin(Method::GET, "/api/v1/status", None).await;
    assert_eq!(status["sites"][0]["ready"], false);
    assert_eq!(status["sites"][0]["power_price_usd_per_mwh"], "42.5");
    assert_eq!(status["nodes"][0]["ready"], false);
    assert_eq!(status["deployments"][0]["unschedulable"], 1);
    assert_eq!(status["replicas"], json!([]));
}
