//! The money API through `router().oneshot(..)`: the gateway credential's scope, a table of
//! broken inputs for every money route, idempotent and correctly rated usage ingest, credit
//! leases across gateways, and customers' own usage and costs, scoped to their tenant.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use axum::http::{Method, StatusCode};
use common::{Harness, call, harness};
use serde_json::{Value, json};

/// The routes a gateway token is good for; every other route refuses it.
const GATEWAY_ROUTES: [(&str, &str); 4] = [
    ("get", "/api/v1/gateway/config"),
    ("delete", "/api/v1/gateway/instances/{instance}"),
    ("post", "/api/v1/gateway/leases"),
    ("post", "/api/v1/usage/batches"),
];

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

async fn seed(h: &Harness) {
    for (uri, body) in [
        (
            "/api/v1/models",
            r#"{"name":"smol","kind":"chat","artifact":"smol","memory_bytes":1}"#,
        ),
        ("/api/v1/tenants", r#"{"name":"acme"}"#),
        ("/api/v1/tenants", r#"{"name":"globex"}"#),
        ("/api/v1/tenants", r#"{"name":"initech","plan":"prepaid"}"#),
    ] {
        let (status, resp) = h.admin(Method::POST, uri, Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{uri}: {resp}");
    }
}

fn event(
    id: &str,
    tenant: &str,
    key: &str,
    started_at_ms: i64,
    prompt: u64,
    completion: u64,
) -> Value {
    json!({
        "id": id, "request_id": format!("req_{id}"), "tenant": tenant, "key_id": key,
        "model": "smol", "deployment": "d", "replica": "r", "site": "s", "region": "eu",
        "priority": "normal", "prompt_tokens": prompt, "completion_tokens": completion,
        "started_at_ms": started_at_ms, "ttft_ms": 5, "duration_ms": 9, "status": 200,
        "outcome": "completed"
    })
}

async fn ingest(h: &Harness, events: &[Value]) -> Value {
    let body = json!({ "events": events }).to_string();
    let (status, receipt) = h
        .gateway(Method::POST, "/api/v1/usage/batches", Some(&body))
        .await;
    assert_eq!(status, StatusCode::OK, "{receipt}");
    receipt
}

#[tokio::test]
async fn the_gateway_token_is_refused_everywhere_but_its_own_routes() {
    let h = harness().await;
    seed(&h).await;
    let (_, doc) = call(&h.control, Method::GET, "/api/openapi.json", None, None).await;
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        let uri = path
            .replace("{name}", "acme")
            .replace("{id}", "key-x")
            .replace("{instance}", "gw-x");
        for method in item.as_object().unwrap().keys() {
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let own = GATEWAY_ROUTES.contains(&(method.as_str(), path.as_str()));
            let body = Some("{}");
            let (status, resp) = call(&h.control, m.clone(), &uri, Some(&h.gateway), body).await;
            if own {
                assert_ne!(status, StatusCode::UNAUTHORIZED, "{method} {path}: {resp}");
                // And the admin token is no gateway.
                let (status, _) = call(&h.control, m, &uri, Some(&h.admin), body).await;
                assert_eq!(status, StatusCode::UNAUTHORIZED, "admin on {method} {path}");
            } else if !path.starts_with("/api/v1/agent/") {
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}: {resp}");
                assert_eq!(resp["error"]["code"], "unauthorized");
            } else {
                // Agent routes take agent and bootstrap tokens only.
                assert!(
                    status == StatusCode::UNAUTHORIZED || status == StatusCode::BAD_REQUEST,
                    "{method} {path}: {status} {resp}"
                );
                assert_ne!(status, StatusCode::OK);
            }
            checked += 1;
        }
    }
    assert!(
        checked > 30,
        "only {checked} routes in the OpenAPI document"
    );
    // A rotated token stops working at once.
    let (status, rotated) = h
        .admin(Method::POST, "/api/v1/gateways/gw-1/rotate", Some("{}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let (status, _) = h.gateway(Method::GET, "/api/v1/gateway/config", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let new = rotated["token"].as_str().unwrap();
    let (status, _) = call(
        &h.control,
        Method::GET,
        "/api/v1/gateway/config",
        Some(new),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn the_config_counts_the_live_gateway_processes_that_share_every_limit() {
    let h = harness().await;
    let (status, created) = h
        .admin(Method::POST, "/api/v1/gateways", Some(r#"{"name":"gw-2"}"#))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let second = created["token"].as_str().unwrap().to_owned();
    let poll = |token: String, instance: &'static str| {
        let control = &h.control;
        async move {
            let uri = format!("/api/v1/gateway/config?instance={instance}");
            let (status, config) = call(control, Method::GET, &uri, Some(&token), None).await;
            assert_eq!(status, StatusCode::OK, "{config}");
            config["gateways"].as_u64().unwrap()
        }
    };
    assert_eq!(poll(h.gateway.clone(), "a").await, 1);
    assert_eq!(
        poll(h.gateway.clone(), "b").await,
        2,
        "two processes on one token"
    );
    assert_eq!(
        poll(second.clone(), "a").await,
        3,
        "instance ids are per gateway"
    );
    assert_eq!(
        poll(h.gateway.clone(), "a").await,
        3,
        "a process polling again counts once"
    );
    // A gateway that names no instance is one process of its name.
    let (status, config) = h.gateway(Method::GET, "/api/v1/gateway/config", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(config["gateways"], 4);

    // A process shutting down leaves at once; leaving twice, or as another gateway, is a
    // no-op; a broken id is refused.
    let leave = |token: String, instance: &'static str| {
        let control = &h.control;
        async move {
            let uri = format!("/api/v1/gateway/instances/{instance}");
            call(control, Method::DELETE, &uri, Some(&token), None).await
        }
    };
    assert_eq!(leave(second.clone(), "b").await.0, StatusCode::NO_CONTENT);
    let (_, config) = h.gateway(Method::GET, "/api/v1/gateway/config", None).await;
    assert_eq!(config["gateways"], 4, "gw-2 has no process b");
    assert_eq!(
        leave(h.gateway.clone(), "b").await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        leave(h.gateway.clone(), "b").await.0,
        StatusCode::NO_CONTENT
    );
    let (_, config) = h.gateway(Method::GET, "/api/v1/gateway/config", None).await;
    assert_eq!(config["gateways"], 3);
    let (status, resp) = leave(h.gateway.clone(), "%01").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{resp}");
    let (status, _) = leave(h.admin.clone(), "a").await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "operators are not gateways"
    );
}

/// (what, method, uri, body, expected status)
type Case<'a> = (&'a str, Method, &'a str, Option<&'a str>, StatusCode);

#[tokio::test]
async fn broken_money_inputs_get_4xx_and_change_nothing() {
    let h = harness().await;
    seed(&h).await;
    let (status, _) = h
        .admin(
            Method::POST,
            "/api/v1/tenants/initech/top-ups",
            Some(r#"{"amount":"5","reference":"pay-1"}"#),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, before) = h.admin(Method::GET, "/api/v1/tenants", None).await;

    let (bad, nf, conflict) = (
        StatusCode::BAD_REQUEST,
        StatusCode::NOT_FOUND,
        StatusCode::CONFLICT,
    );
    let (post, put, get, delete) = (Method::POST, Method::PUT, Method::GET, Method::DELETE);
    #[rustfmt::skip]
    let admin_cases: &[Case] = &[
        ("unknown plan", post.clone(), "/api/v1/tenants", Some(r#"{"name":"t1","plan":"gold"}"#), bad),
        ("zero limit", post.clone(), "/api/v1/tenants", Some(r#"{"name":"t1","limits":{"rpm":0}}"#), bad),
        ("unknown limit", post.clone(), "/api/v1/tenants", Some(r#"{"name":"t1","limits":{"rps":5}}"#), bad),
        ("negative limit", put.clone(), "/api/v1/tenants/acme/limits", Some(r#"{"rpm":-1}"#), bad),
        ("limit not a number", put.clone(), "/api/v1/tenants/acme/limits", Some(r#"{"tpm":"lots"}"#), bad),
        ("limits of a ghost", put.clone(), "/api/v1/tenants/ghost/limits", Some("{}"), nf),
        ("negative top-up", post.clone(), "/api/v1/tenants/initech/top-ups", Some(r#"{"amount":"-5"}"#), bad),
        ("zero top-up", post.clone(), "/api/v1/tenants/initech/top-ups", Some(r#"{"amount":"0"}"#), bad),
        ("top-up not a number", post.clone(), "/api/v1/tenants/initech/top-ups", Some(r#"{"amount":"lots"}"#), bad),
        ("top-up with a blank reference", post.clone(), "/api/v1/tenants/initech/top-ups", Some(r#"{"amount":"1","reference":" "}"#), bad),
        ("top-up of a ghost", post.clone(), "/api/v1/tenants/ghost/top-ups", Some(r#"{"amount":"5"}"#), nf),
        ("repeated payment", post.clone(), "/api/v1/tenants/initech/top-ups", Some(r#"{"amount":"5","reference":"pay-1"}"#), conflict),
        ("ledger of a ghost", get.clone(), "/api/v1/tenants/ghost/ledger", None, nf),
        ("price of a ghost model", post.clone(), "/api/v1/prices", Some(r#"{"model":"ghost","input_per_1m":"1","output_per_1m":"1"}"#), nf),
        ("price for a ghost tenant", post.clone(), "/api/v1/prices", Some(r#"{"model":"smol","tenant":"ghost","input_per_1m":"1","output_per_1m":"1"}"#), nf),
        ("negative price", post.clone(), "/api/v1/prices", Some(r#"{"model":"smol","input_per_1m":"-1","output_per_1m":"1"}"#), bad),
        ("price not a number", post.clone(), "/api/v1/prices", Some(r#"{"model":"smol","input_per_1m":"cheap","output_per_1m":"1"}"#), bad),
        ("price in the past", post.clone(), "/api/v1/prices", Some(r#"{"model":"smol","input_per_1m":"1","output_per_1m":"1","effective_from":"2020-01-01"}"#), bad),
        ("price at no time", post.clone(), "/api/v1/prices", Some(r#"{"model":"smol","input_per_1m":"1","output_per_1m":"1","effective_from":"soon"}"#), bad),
        ("key expired already", post.clone(), "/api/v1/keys", Some(r#"{"tenant":"acme","expires_at":"2020-01-01T00:00:00Z"}"#), bad),
        ("key expiring at no time", post.clone(), "/api/v1/keys", Some(r#"{"tenant":"acme","expires_at":"tomorrow"}"#), bad),
        ("key for no models", post.clone(), "/api/v1/keys", Some(r#"{"tenant":"acme","models":[]}"#), bad),
        ("key for a ghost model", post.clone(), "/api/v1/keys", Some(r#"{"tenant":"acme","models":["ghost"]}"#), nf),
        ("key of unknown class", post.clone(), "/api/v1/keys", Some(r#"{"tenant":"acme","priority":"urgent"}"#), bad),
        ("key with a zero limit", post.clone(), "/api/v1/keys", Some(r#"{"tenant":"acme","limits":{"concurrency":0}}"#), bad),
        ("revoke by a too-short prefix", delete.clone(), "/api/v1/keys/sk-", None, nf),
        ("gateway with a bad name", post.clone(), "/api/v1/gateways", Some(r#"{"name":"no spaces"}"#), bad),
        ("duplicate gateway", post.clone(), "/api/v1/gateways", Some(r#"{"name":"gw-1"}"#), conflict),
        ("rotate a ghost gateway", post.clone(), "/api/v1/gateways/ghost/rotate", Some("{}"), nf),
        ("usage grouped by week", get.clone(), "/api/v1/usage?group_by=week", None, bad),
        ("usage from no time", get.clone(), "/api/v1/usage?from=yesterday", None, bad),
        ("usage backwards", get.clone(), "/api/v1/usage?from=2026-02-01&to=2026-01-01", None, bad),
        ("usage of a ghost", get.clone(), "/api/v1/usage?tenant=ghost", None, nf),
        ("usage with an unknown parameter", get.clone(), "/api/v1/usage?project=x", None, bad),
    ];
    let long_instance = format!("/api/v1/gateway/config?instance={}", "i".repeat(300));
    #[rustfmt::skip]
    let gateway_cases: &[Case] = &[
        ("batch not JSON", post.clone(), "/api/v1/usage/batches", Some("events"), bad),
        ("batch without events", post.clone(), "/api/v1/usage/batches", Some("{}"), bad),
        ("event missing fields", post.clone(), "/api/v1/usage/batches", Some(r#"{"events":[{"id":"e1"}]}"#), bad),
        ("event with an unknown outcome", post.clone(), "/api/v1/usage/batches", Some(r#"{"events":[{"id":"e1","request_id":"r","tenant":"acme","key_id":"k","model":"smol","deployment":"","replica":"","site":"","region":"","priority":"normal","prompt_tokens":1,"completion_tokens":1,"started_at_ms":1,"ttft_ms":null,"duration_ms":1,"status":200,"outcome":"great"}]}"#), bad),
        ("event with negative tokens", post.clone(), "/api/v1/usage/batches", Some(r#"{"events":[{"id":"e1","request_id":"r","tenant":"acme","key_id":"k","model":"smol","deployment":"","replica":"","site":"","region":"","priority":"normal","prompt_tokens":-1,"completion_tokens":1,"started_at_ms":1,"ttft_ms":null,"duration_ms":1,"status":200,"outcome":"completed"}]}"#), bad),
        ("event without an id", post.clone(), "/api/v1/usage/batches", Some(r#"{"events":[{"id":"","request_id":"r","tenant":"acme","key_id":"k","model":"smol","deployment":"","replica":"","site":"","region":"","priority":"normal","prompt_tokens":1,"completion_tokens":1,"started_at_ms":1,"ttft_ms":null,"duration_ms":1,"status":200,"outcome":"completed"}]}"#), bad),
        ("lease of a ghost", post.clone(), "/api/v1/gateway/leases", Some(r#"{"tenant":"ghost","need":"1"}"#), nf),
        ("lease for pay-as-you-go", post.clone(), "/api/v1/gateway/leases", Some(r#"{"tenant":"acme","need":"1"}"#), bad),
        ("lease of a negative need", post.clone(), "/api/v1/gateway/leases", Some(r#"{"tenant":"initech","need":"-1"}"#), bad),
        ("bad watch query", get.clone(), "/api/v1/gateway/config?after=soon", None, bad),
        ("instance too long", get.clone(), &long_instance, None, bad),
        ("instance with a control character", get.clone(), "/api/v1/gateway/config?instance=a%01b", None, bad),
    ];
    let mut failures = Vec::new();
    for (cases, admin) in [(admin_cases, true), (gateway_cases, false)] {
        for (what, method, uri, body, want) in cases {
            let (status, resp) = if admin {
                h.admin(method.clone(), uri, *body).await
            } else {
                h.gateway(method.clone(), uri, *body).await
            };
            let message = resp["error"]["message"].as_str().unwrap_or("");
            if status != *want || message.is_empty() {
                failures.push(format!("{what}: got {status} {resp}, want {want}"));
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    // Nothing changed: balances, prices, usage.
    let (_, after) = h.admin(Method::GET, "/api/v1/tenants", None).await;
    assert_eq!(before, after);
    let (_, prices) = h.admin(Method::GET, "/api/v1/prices", None).await;
    assert_eq!(prices, json!([]));
    let (_, usage) = h.admin(Method::GET, "/api/v1/usage", None).await;
    assert_eq!(usage, json!([]));
}

#[tokio::test]
async fn usage_is_ingested_once_and_rated_at_the_price_in_force_when_it_happened() {
    let h = harness().await;
    seed(&h).await;
    let t0 = now_ms();
    let (status, v1) = h
        .admin(
            Method::POST,
            "/api/v1/prices",
            Some(r#"{"model":"smol","input_per_1m":"1","output_per_1m":"2"}"#),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v1}");
    let v1_ms = v1["effective_from_ms"].as_i64().unwrap();
    assert!(v1_ms >= t0);
    let before_any_price = event("e0", "acme", "k1", t0 - 3_600_000, 1000, 1000);
    let e1 = event("e1", "acme", "k1", v1_ms, 1_000_000, 500_000); // 1 + 1 = 2.00
    let e2 = event("e2", "acme", "k2", v1_ms, 10, 5); // 0.00001 + 0.00001
    let receipt = ingest(&h, &[before_any_price.clone(), e1.clone()]).await;
    assert_eq!(receipt, json!({"accepted": 2, "duplicates": 0}));
    // A replayed batch, an overlapping one, and an event from the past arriving late.
    assert_eq!(
        ingest(&h, &[before_any_price.clone(), e1.clone()]).await,
        json!({"accepted": 0, "duplicates": 2})
    );
    // A new price does not re-rate usage from before it (set once the clock has moved on).
    while now_ms() <= v1_ms {
        tokio::task::yield_now().await;
    }
    let (status, _) = h
        .admin(
            Method::POST,
            "/api/v1/prices",
            Some(r#"{"model":"smol","input_per_1m":"100","output_per_1m":"100"}"#),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        ingest(&h, &[e2.clone(), e1]).await,
        json!({"accepted": 1, "duplicates": 1})
    );
    let (_, tenant) = h.admin(Method::GET, "/api/v1/tenants/acme", None).await;
    assert_eq!(tenant["balance"], "-2.00002", "{tenant}");
    let (_, ledger) = h
        .admin(Method::GET, "/api/v1/tenants/acme/ledger", None)
        .await;
    let debits: Vec<&str> = ledger
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["amount"].as_str().unwrap())
        .collect();
    assert_eq!(debits, ["-2", "-0.00002"], "{ledger}");
    let (_, by_key) = h
        .admin(
            Method::GET,
            "/api/v1/usage?tenant=acme&group_by=key&from=2000-01-01",
            None,
        )
        .await;
    assert_eq!(by_key[0]["group"], "k1");
    assert_eq!(by_key[0]["requests"], 2);
    assert_eq!(by_key[0]["cost"], "2");
    assert_eq!(by_key[1]["group"], "k2");
    // Other tenants are untouched.
    let (_, globex) = h.admin(Method::GET, "/api/v1/tenants/globex", None).await;
    assert_eq!(globex["balance"], "0");
}

#[tokio::test]
async fn gateways_never_hold_more_credit_than_the_tenant_has() {
    let h = harness().await;
    seed(&h).await;
    h.admin(
        Method::POST,
        "/api/v1/tenants/initech/top-ups",
        Some(r#"{"amount":"10"}"#),
    )
    .await;
    let (_, second) = h
        .admin(Method::POST, "/api/v1/gateways", Some(r#"{"name":"gw-2"}"#))
        .await;
    let tokens = [
        h.gateway.clone(),
        second["token"].as_str().unwrap().to_owned(),
    ];
    let mut held = [0.0_f64; 2];
    for round in 0..20 {
        for (i, token) in tokens.iter().enumerate() {
            let (status, grant) = call(
                &h.control,
                Method::POST,
                "/api/v1/gateway/leases",
                Some(token),
                Some(r#"{"tenant":"initech","need":"1"}"#),
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{grant}");
            let granted: f64 = grant["granted_total"].as_str().unwrap().parse().unwrap();
            held[i] = granted;
            assert!(
                held.iter().sum::<f64>() <= 10.0 + 1e-9,
                "round {round}: gateways hold {held:?} of 10"
            );
        }
    }
    assert!((held.iter().sum::<f64>() - 10.0).abs() < 1e-6, "{held:?}");
}

#[tokio::test]
async fn customers_see_their_own_usage_and_costs_and_nobody_else_s() {
    let h = harness().await;
    seed(&h).await;
    let mut keys = Vec::new();
    for tenant in ["acme", "globex"] {
        let (_, created) = h
            .admin(
                Method::POST,
                "/api/v1/keys",
                Some(&format!(r#"{{"tenant":"{tenant}"}}"#)),
            )
            .await;
        keys.push((
            created["id"].as_str().unwrap().to_owned(),
            created["secret"].as_str().unwrap().to_owned(),
        ));
    }
    // The price first, and the usage stamped at a time already past when it is asked for:
    // usage is rated at the price in force when it happened, and a report ends at "now" (an
    // event a few ms ahead of the clock fell outside it when the test ran within the last ms of
    // a second).
    h.admin(
        Method::POST,
        "/api/v1/prices",
        Some(r#"{"model":"smol","input_per_1m":"1","output_per_1m":"1"}"#),
    )
    .await;
    let t0 = now_ms();
    ingest(
        &h,
        &[
            event("a1", "acme", &keys[0].0, t0, 100, 10),
            event("a2", "acme", &keys[0].0, t0, 200, 20),
            event("g1", "globex", &keys[1].0, t0, 7_000, 700),
        ],
    )
    .await;
    let start = t0 / 1000 - 10;
    let usage =
        format!("/v1/organization/usage/completions?start_time={start}&group_by=api_key_id");
    let (status, page) = call(&h.control, Method::GET, &usage, Some(&keys[0].1), None).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["object"], "page");
    let results: Vec<&Value> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|b| b["results"].as_array().unwrap())
        .collect();
    assert_eq!(results.len(), 1, "{page}");
    assert_eq!(
        results[0]["object"],
        "organization.usage.completions.result"
    );
    assert_eq!(results[0]["input_tokens"], 300);
    assert_eq!(results[0]["output_tokens"], 30);
    assert_eq!(results[0]["num_model_requests"], 2);
    assert_eq!(results[0]["api_key_id"], keys[0].0.as_str());
    assert!(
        !page.to_string().contains(&keys[1].0),
        "another tenant's key leaked"
    );

    let costs = format!("/v1/organization/costs?start_time={start}&group_by=line_item");
    let (status, page) = call(&h.control, Method::GET, &costs, Some(&keys[1].1), None).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let results: Vec<&Value> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|b| b["results"].as_array().unwrap())
        .collect();
    assert_eq!(results.len(), 1, "{page}");
    assert_eq!(results[0]["amount"]["value"], json!(0.0077));
    assert_eq!(results[0]["amount"]["currency"], "usd");
    assert_eq!(results[0]["line_item"], "smol");

    for (what, uri, token, want) in [
        ("no key", usage.as_str(), None, StatusCode::UNAUTHORIZED),
        (
            "a wrong key",
            usage.as_str(),
            Some("sk-wm-nope"),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "the admin token",
            usage.as_str(),
            Some(h.admin.as_str()),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "the gateway token",
            usage.as_str(),
            Some(h.gateway.as_str()),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "a project filter",
            "/v1/organization/usage/completions?start_time=0&project_ids=p",
            Some(keys[0].1.as_str()),
            StatusCode::BAD_REQUEST,
        ),
        (
            "no start time",
            "/v1/organization/costs",
            Some(keys[0].1.as_str()),
            StatusCode::BAD_REQUEST,
        ),
        (
            "hourly costs",
            "/v1/organization/costs?start_time=0&bucket_width=1h",
            Some(keys[0].1.as_str()),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let (status, resp) = call(&h.control, Method::GET, uri, token, None).await;
        assert_eq!(status, want, "{what}: {resp}");
    }
    // A revoked key sees nothing any more.
    h.admin(Method::DELETE, &format!("/api/v1/keys/{}", keys[0].0), None)
        .await;
    let (status, _) = call(&h.control, Method::GET, &usage, Some(&keys[0].1), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn dedicated_deployments_are_priced_by_the_hour_and_their_tokens_are_free_to_their_tenant() {
    let h = harness().await;
    seed(&h).await;
    let (status, d) = h
        .admin(
            Method::POST,
            "/api/v1/deployments",
            Some(r#"{"name":"acme-smol","model":"smol","replicas":2,"dedicated_to":"acme"}"#),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{d}");
    assert_eq!(d["dedicated_to"], "acme");
    let (bad, nf) = (StatusCode::BAD_REQUEST, StatusCode::NOT_FOUND);
    h.admin(
        Method::POST,
        "/api/v1/deployments",
        Some(r#"{"name":"shared","model":"smol","replicas":1}"#),
    )
    .await;
    #[rustfmt::skip]
    let cases: &[Case] = &[
        ("dedicated to a ghost", Method::POST, "/api/v1/deployments", Some(r#"{"name":"x","model":"smol","replicas":1,"dedicated_to":"ghost"}"#), nf),
        ("hourly price of a shared deployment", Method::POST, "/api/v1/prices/dedicated", Some(r#"{"deployment":"shared","per_replica_hour":"1"}"#), bad),
        ("hourly price of a ghost", Method::POST, "/api/v1/prices/dedicated", Some(r#"{"deployment":"ghost","per_replica_hour":"1"}"#), nf),
        ("negative hourly price", Method::POST, "/api/v1/prices/dedicated", Some(r#"{"deployment":"acme-smol","per_replica_hour":"-1"}"#), bad),
        ("invoice of no month", Method::GET, "/api/v1/tenants/acme/invoices/2026-13", None, bad),
        ("invoice of a malformed month", Method::GET, "/api/v1/tenants/acme/invoices/December", None, bad),
        ("invoices of a ghost", Method::GET, "/api/v1/tenants/ghost/invoices", None, nf),
    ];
    for (what, method, uri, body, want) in cases {
        let (status, resp) = h.admin(method.clone(), uri, *body).await;
        assert_eq!(status, *want, "{what}: {resp}");
    }
    let (status, p) = h
        .admin(
            Method::POST,
            "/api/v1/prices/dedicated",
            Some(r#"{"deployment":"acme-smol","per_replica_hour":"1.20"}"#),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{p}");
    h.admin(
        Method::POST,
        "/api/v1/prices",
        Some(r#"{"model":"smol","input_per_1m":"1","output_per_1m":"1"}"#),
    )
    .await;
    // The gateway config tells gateways whose replicas are whose.
    let t = now_ms();
    let mut own = event("d1", "acme", "k", t, 1000, 1000);
    own["deployment"] = json!("acme-smol");
    let mut shared = event("d2", "acme", "k", t, 1000, 1000);
    shared["deployment"] = json!("shared");
    ingest(&h, &[own, shared]).await;
    let (_, tenant) = h.admin(Method::GET, "/api/v1/tenants/acme", None).await;
    assert_eq!(
        tenant["balance"], "-0.002",
        "only the shared deployment's tokens cost"
    );

    let (status, invoices) = h
        .admin(Method::GET, "/api/v1/tenants/acme/invoices", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{invoices}");
    let current = &invoices[0];
    assert_eq!(current["status"], "open");
    assert_eq!(current["currency"], "USD");
    assert_eq!(current["total"], "0.002");
    let lines = current["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 2, "{current}");
    let by_deployment = |d: &str| lines.iter().find(|l| l["deployment"] == d).unwrap();
    assert_eq!(by_deployment("acme-smol")["amount"], "0");
    assert_eq!(by_deployment("shared")["amount"], "0.002");
    assert_eq!(by_deployment("shared")["kind"], "tokens");
    let period = current["period"].as_str().unwrap();
    let (_, again) = h
        .admin(
            Method::GET,
            &format!("/api/v1/tenants/acme/invoices/{period}"),
            None,
        )
        .await;
    assert_eq!(&again, current);
    let (_, old) = h
        .admin(Method::GET, "/api/v1/tenants/acme/invoices/2020-01", None)
        .await;
    assert_eq!(old["status"], "closed");
    assert_eq!(old["lines"], json!([]));
}
