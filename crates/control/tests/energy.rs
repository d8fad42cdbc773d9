//! Demand response through the control plane's router: events made, refused, listed,
//! reported and cancelled; agents' power samples kept; each site's agent told its current or
//! next event; the gateway told which replicas shed; miners' acknowledgements recorded.

// Helpers outside `#[test]` fns panic on setup failures too; that is what a test wants.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use axum::http::{Method, StatusCode};
use common::{Harness, call, deploy_chat, desired, harness, post_heartbeat, register_site};
use serde_json::{Value, json};

/// Registers an agent for `site` in region `us` with one 8 GiB node; returns its token.
async fn register(h: &Harness, site: &str) -> String {
    register_site(h, site, "0").await
}

fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// A heartbeat of `site`'s node with `replicas` and a power sample taken now.
async fn heartbeat(
    h: &Harness,
    site: &str,
    token: &str,
    replicas: Value,
    meter_kw: f64,
    miners_kw: f64,
) {
    let body = json!({
        "nodes": [{"name": format!("{site}-n0"), "memory_bytes": 8u64 << 30}],
        "replicas": replicas,
        "desired_version": 0,
        "power": {
            "at_ms": now_ms(),
            "meter_kw": meter_kw,
            "meter_kwh": 1000.0,
            "miners": {"total": 3, "hashing": 3, "asleep": 0, "unreachable": 0, "kw": miners_kw, "ths": 600.0}
        }
    });
    let (status, resp) = post_heartbeat(h, token, &body).await;
    assert_eq!(status, StatusCode::OK, "{resp}");
}

/// Each replica's site and whether it sheds, by site (the config's order is the replicas').
fn shedding(config: &Value) -> Vec<(String, bool)> {
    let mut replicas: Vec<(String, bool)> = config["models"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|m| m["replicas"].as_array().unwrap().iter())
        .map(|r| {
            (
                r["site"].as_str().unwrap().to_owned(),
                r["shedding"].as_bool().unwrap(),
            )
        })
        .collect();
    replicas.sort();
    replicas
}

async fn create(h: &Harness, site: &str, body: Value) -> (StatusCode, Value) {
    h.admin(
        Method::POST,
        &format!("/api/v1/sites/{site}/dr-events"),
        Some(&body.to_string()),
    )
    .await
}

#[tokio::test]
async fn dr_events_reach_agents_and_gateways_and_keep_their_record() {
    let h = harness().await;
    let georgia = register(&h, "georgia").await;
    let texas = register(&h, "texas").await;
    deploy_chat(&h, 2).await;
    // Each site reports its replica ready, and a power sample: 400 kW, 380 of it miners.
    for (site, token) in [("georgia", &georgia), ("texas", &texas)] {
        let want = desired(&h, token).await;
        assert_eq!(want["dr"], Value::Null);
        let id = want["replicas"][0]["id"].as_str().unwrap().to_owned();
        let ready = json!([{"id": id, "state": "ready", "endpoint": format!("http://{site}.invalid:1"), "message": null}]);
        heartbeat(&h, site, token, ready, 400.0, 380.0).await;
    }
    let (_, config) = h.gateway(Method::GET, "/api/v1/gateway/config", None).await;
    assert_eq!(
        shedding(&config),
        [("georgia".to_owned(), false), ("texas".to_owned(), false)]
    );

    // Broken requests: a clear 4xx each, nothing stored.
    let past = "2020-01-01T00:00:00Z";
    let cases: &[(&str, &str, Value, StatusCode)] = &[
        (
            "both asks",
            "georgia",
            json!({"down_to_kw": 1, "reduce_by_pct": 5, "duration_minutes": 5}),
            StatusCode::BAD_REQUEST,
        ),
        (
            "no ask",
            "georgia",
            json!({"duration_minutes": 5}),
            StatusCode::BAD_REQUEST,
        ),
        (
            "negative kW",
            "georgia",
            json!({"down_to_kw": -1, "duration_minutes": 5}),
            StatusCode::BAD_REQUEST,
        ),
        (
            "zero percent",
            "georgia",
            json!({"reduce_by_pct": 0, "duration_minutes": 5}),
            StatusCode::BAD_REQUEST,
        ),
        (
            "percent over 100",
            "georgia",
            json!({"reduce_by_pct": 150, "duration_minutes": 5}),
            StatusCode::BAD_REQUEST,
        ),
        (
            "no duration",
            "georgia",
            json!({"down_to_kw": 1}),
            StatusCode::BAD_REQUEST,
        ),
        (
            "zero duration",
            "georgia",
            json!({"down_to_kw": 1, "duration_minutes": 0}),
            StatusCode::BAD_REQUEST,
        ),
        (
            "over a day",
            "georgia",
            json!({"down_to_kw": 1, "duration_minutes": 1441}),
            StatusCode::BAD_REQUEST,
        ),
        (
            "negative duration",
            "georgia",
            json!({"down_to_kw": 1, "duration_minutes": -5}),
            StatusCode::BAD_REQUEST,
        ),
        (
            "in the past",
            "georgia",
            json!({"down_to_kw": 1, "duration_minutes": 5, "starts_at": past}),
            StatusCode::BAD_REQUEST,
        ),
        (
            "not a time",
            "georgia",
            json!({"down_to_kw": 1, "duration_minutes": 5, "starts_at": "soon"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            "unknown field",
            "georgia",
            json!({"down_to_kw": 1, "duration_minutes": 5, "priority": "high"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            "kW as text",
            "georgia",
            json!({"down_to_kw": "ten", "duration_minutes": 5}),
            StatusCode::BAD_REQUEST,
        ),
        (
            "unknown site",
            "atlantis",
            json!({"down_to_kw": 1, "duration_minutes": 5}),
            StatusCode::NOT_FOUND,
        ),
    ];
    for (what, site, body, want) in cases {
        let (status, resp) = create(&h, site, body.clone()).await;
        assert_eq!(status, *want, "{what}: {resp}");
        assert!(
            resp["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}: {resp}"
        );
    }
    let (_, listed) = h.admin(Method::GET, "/api/v1/dr-events", None).await;
    assert_eq!(listed, json!([]));

    // Down to 10 kW now: 20 kW besides the miners is above it, so inference is shed too.
    let (status, event) = create(
        &h,
        "georgia",
        json!({"down_to_kw": 10, "duration_minutes": 5, "note": "ERCOT EEA2"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{event}");
    assert_eq!(event["status"], "active");
    assert_eq!(event["shed_inference"], true);
    assert_eq!(event["baseline_kw"], 400.0);
    assert_eq!(event["note"], "ERCOT EEA2");
    let id = event["id"].as_str().unwrap().to_owned();
    // An overlapping one on the same site is refused; texas is free.
    let (status, resp) = create(
        &h,
        "georgia",
        json!({"down_to_kw": 5, "duration_minutes": 5}),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{resp}");
    // By 50% of texas's 400 kW, from in an hour: scheduled, and 200 kW leaves inference alone.
    let later = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    let later = later
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let (status, scheduled) = create(
        &h,
        "texas",
        json!({"reduce_by_pct": 50, "duration_minutes": 30, "starts_at": later}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{scheduled}");
    assert_eq!(scheduled["status"], "scheduled");
    assert_eq!(scheduled["target_kw"], 200.0);
    assert_eq!(scheduled["shed_inference"], false);

    // Each agent is told its event; the gateway marks georgia's replica as shedding.
    let want = desired(&h, &georgia).await;
    assert_eq!(want["dr"]["event_id"], id.as_str());
    assert_eq!(want["dr"]["target_kw"], 10.0);
    assert_eq!(want["dr"]["shed_inference"], true);
    assert_eq!(desired(&h, &texas).await["dr"]["event_id"], scheduled["id"]);
    let (_, config) = h.gateway(Method::GET, "/api/v1/gateway/config", None).await;
    assert_eq!(
        shedding(&config),
        [("georgia".to_owned(), true), ("texas".to_owned(), false)]
    );

    // Georgia's miners answer; texas cannot answer for georgia's event.
    let t = now_ms();
    let acks = json!({"miners": [
        {"miner": "127.0.0.1:4028", "acknowledged_ms": t, "confirmed_ms": t + 900, "error": null},
        {"miner": "127.0.0.1:4029", "acknowledged_ms": t + 100, "confirmed_ms": t + 1000, "error": null},
        {"miner": "127.0.0.1:4030", "acknowledged_ms": null, "confirmed_ms": null, "error": "connection refused"},
    ]});
    let acks_uri = format!("/api/v1/agent/dr-events/{id}/acks");
    let (status, resp) = call(
        &h.control,
        Method::POST,
        &acks_uri,
        Some(&texas),
        Some(&acks.to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{resp}");
    let (status, resp) = call(
        &h.control,
        Method::POST,
        "/api/v1/agent/dr-events/dr-nope/acks",
        Some(&georgia),
        Some(&acks.to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{resp}");
    let (status, resp) = call(
        &h.control,
        Method::POST,
        &acks_uri,
        Some(&h.admin),
        Some(&acks.to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{resp}");
    let (status, resp) = call(
        &h.control,
        Method::POST,
        &acks_uri,
        Some(&georgia),
        Some(&acks.to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{resp}");

    // The meter comes down; the report shows it.
    heartbeat(&h, "georgia", &georgia, json!([]), 4.0, 1.0).await;
    let (status, report) = h
        .admin(Method::GET, &format!("/api/v1/dr-events/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["event"]["id"], id.as_str());
    assert_eq!(report["miners"].as_array().unwrap().len(), 3);
    assert_eq!(report["outcome"]["miners_total"], 3);
    assert_eq!(report["outcome"]["miners_acknowledged"], 2);
    assert_eq!(report["outcome"]["all_acknowledged_after_s"], Value::Null);
    assert!(
        report["outcome"]["target_reached_after_s"]
            .as_f64()
            .is_some(),
        "{report}"
    );
    assert_eq!(report["outcome"]["held"], Value::Null, "not over yet");
    let kws: Vec<f64> = report["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["meter_kw"].as_f64().unwrap())
        .collect();
    assert_eq!(kws.last(), Some(&4.0), "{report}");

    // Lists, by site too.
    let (_, all) = h.admin(Method::GET, "/api/v1/dr-events", None).await;
    assert_eq!(all.as_array().unwrap().len(), 2);
    let (_, only) = h
        .admin(Method::GET, "/api/v1/dr-events?site=texas", None)
        .await;
    assert_eq!(only.as_array().unwrap().len(), 1);
    let (status, _) = h
        .admin(Method::GET, "/api/v1/dr-events?site=atlantis", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = h
        .admin(Method::GET, "/api/v1/dr-events?colour=red", None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = h
        .admin(Method::GET, "/api/v1/dr-events/dr-nope", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Cancelled: the agent's directive goes, the gateway stops shedding; twice is a conflict.
    let cancel = format!("/api/v1/dr-events/{id}/cancel");
    let (status, cancelled) = h.admin(Method::POST, &cancel, None).await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(desired(&h, &georgia).await["dr"], Value::Null);
    let (_, config) = h.gateway(Method::GET, "/api/v1/gateway/config", None).await;
    assert_eq!(
        shedding(&config),
        [("georgia".to_owned(), false), ("texas".to_owned(), false)]
    );
    let (status, _) = h.admin(Method::POST, &cancel, None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    // Over (by cancellation) and reached: held.
    let (_, report) = h
        .admin(Method::GET, &format!("/api/v1/dr-events/{id}"), None)
        .await;
    assert_eq!(report["outcome"]["held"], true, "{report}");
    // The cancelled window is free again.
    let (status, resp) = create(
        &h,
        "georgia",
        json!({"down_to_kw": 5, "duration_minutes": 5}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{resp}");

    // Operators only: agents and gateways cannot make events.
    let body = json!({"down_to_kw": 1, "duration_minutes": 5}).to_string();
    for token in [&georgia, &h.gateway] {
        let (status, _) = call(
            &h.control,
            Method::POST,
            "/api/v1/sites/texas/dr-events",
            Some(token),
            Some(&body),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
}

#[tokio::test]
async fn a_percentage_needs_a_meter_reading() {
    let h = harness().await;
    let _token = register(&h, "quiet").await;
    let (status, resp) = create(
        &h,
        "quiet",
        json!({"reduce_by_pct": 20, "duration_minutes": 5}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{resp}");
    assert!(
        resp["error"]["message"]
            .as_str()
            .unwrap()
            .contains("down_to_kw"),
        "{resp}"
    );
    // A target in kW needs none; with no reading inference is shed to be safe.
    let (status, event) = create(
        &h,
        "quiet",
        json!({"down_to_kw": 50, "duration_minutes": 5}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{event}");
    assert_eq!(event["shed_inference"], true);
    assert_eq!(event["baseline_kw"], Value::Null);
}

#[tokio::test]
async fn a_heartbeat_brings_the_samples_the_control_plane_missed_and_a_flood_is_refused() {
    let h = harness().await;
    let token = register(&h, "georgia").await;
    let sample = |at_ms: i64, kw: f64| {
        json!({"at_ms": at_ms, "meter_kw": kw, "meter_kwh": 1000.0,
            "miners": {"total": 3, "hashing": 3, "asleep": 0, "unreachable": 0, "kw": kw, "ths": 600.0}})
    };
    let now = now_ms();
    let post = |earlier: Vec<Value>| {
        let body = json!({
            "nodes": [{"name": "georgia-n0", "memory_bytes": 8u64 << 30}],
            "replicas": [], "desired_version": 0,
            "power": sample(now, 400.0), "earlier_power": earlier,
        });
        let (h, token) = (&h, &token);
        async move { post_heartbeat(h, token, &body).await }
    };
    // More than one heartbeat may carry: refused whole, nothing stored.
    let flood: Vec<Value> = (1..=301).map(|i| sample(now - i * 10, 1.0)).collect();
    let (status, resp) = post(flood).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{resp}");
    assert!(
        resp["error"]["message"]
            .as_str()
            .unwrap()
            .contains("earlier_power"),
        "{resp}"
    );
    let (_, site) = h.admin(Method::GET, "/api/v1/sites/georgia", None).await;
    assert_eq!(site["power"], Value::Null, "{site}");

    // A sample whose draw is not a number: the body is refused, nothing stored.
    let mut broken = sample(now - 10_000, 0.0);
    broken["miners"]["kw"] = json!("NaN");
    let (status, resp) = post(vec![sample(now - 30_000, 100.0), broken]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{resp}");
    let (_, site) = h.admin(Method::GET, "/api/v1/sites/georgia", None).await;
    assert_eq!(site["power"], Value::Null, "{site}");

    // Two samples the control plane missed, then the newest.
    let missed = vec![sample(now - 30_000, 100.0), sample(now - 20_000, 200.0)];
    let (status, resp) = post(missed).await;
    assert_eq!(status, StatusCode::OK, "{resp}");

    // The record of an event that starts now shows them, in order.
    let (status, event) = create(
        &h,
        "georgia",
        json!({"down_to_kw": 10, "duration_minutes": 5}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{event}");
    let id = event["id"].as_str().unwrap();
    let (status, report) = h
        .admin(Method::GET, &format!("/api/v1/dr-events/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    let kws: Vec<f64> = report["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["meter_kw"].as_f64().unwrap())
        .collect();
    assert_eq!(kws, [100.0, 200.0, 400.0], "{report}");
}
