//! The live power plan through the control plane's router: a site's power model set and
//! refused, the site planned now (from its tariff, the market in force, its DR events and its
//! miners' draw), the plan handed to its agent in its desired state, the agent's report kept,
//! and broken asks refused.

// Helpers outside `#[test]` fns panic on setup failures too; that is what a test wants.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use axum::http::{Method, StatusCode};
use common::{Harness, call, deploy_chat, desired, harness, post_heartbeat, register_site};
use serde_json::{Value, json};

/// Registers an agent for `site` (region `us`, the given tariff); returns its token.
async fn register(h: &Harness, site: &str, price: &str) -> String {
    register_site(h, site, price).await
}

/// 10 S21s, February 2026's market.
fn model(site: &str) -> Value {
    json!({
        "name": site, "interconnect_kw": 60.0, "pue": 1.05,
        "asic_groups": [{"model": "Antminer S21", "units": 10}],
        "bitcoin": {"btc_usd": 68500.0, "difficulty": 144.4e12, "fees_btc_per_block": 0.02}
    })
}

async fn set_model(h: &Harness, site: &str, body: &Value) -> (StatusCode, Value) {
    h.admin(
        Method::PUT,
        &format!("/api/v1/sites/{site}/power-model"),
        Some(&body.to_string()),
    )
    .await
}

async fn plan_now(h: &Harness, site: &str) -> (StatusCode, Value) {
    h.admin(Method::POST, &format!("/api/v1/sites/{site}/plans"), None)
        .await
}

fn hashing(plan: &Value) -> u64 {
    plan["directive"]["asic_groups"][0]["units_hashing"]
        .as_u64()
        .unwrap()
}

#[tokio::test]
async fn a_site_is_planned_from_its_tariff_and_the_market_and_its_agent_is_told() {
    let h = harness().await;
    let token = register(&h, "cheap", "30").await;
    let (status, resp) = set_model(&h, "cheap", &model("cheap")).await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    assert_eq!(resp["spec"]["asic_groups"][0]["units"], 10);
    let (status, shown) = h
        .admin(Method::GET, "/api/v1/sites/cheap/power-model", None)
        .await;
    assert_eq!((status, &shown["spec"]), (StatusCode::OK, &resp["spec"]));

    // At $30/MWh every miner hashes at February 2026's hashprice.
    let (status, plan) = plan_now(&h, "cheap").await;
    assert_eq!(status, StatusCode::CREATED, "{plan}");
    assert_eq!(hashing(&plan), 10, "{plan}");
    let (starts, ends) = (
        plan["starts_at_ms"].as_i64().unwrap(),
        plan["ends_at_ms"].as_i64().unwrap(),
    );
    assert_eq!((ends - starts, starts % 900_000), (900_000, 0));
    assert!(plan["directive"]["expected_meter_kw"].as_f64().unwrap() <= 60.0);
    assert!(plan["report"].is_null());

    // The agent is told, in its desired state.
    let (status, desired) = call(
        &h.control,
        Method::GET,
        "/api/v1/agent/desired",
        Some(&token),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(desired["plan"], plan["directive"], "{desired}");

    // A market where hashing no longer pays at this tariff: the replan sleeps every miner.
    let (status, resp) = h
        .admin(
            Method::POST,
            "/api/v1/market",
            Some(&json!({"btc_usd": "5000", "difficulty": 144.4e12, "subsidy_btc": 3.125, "fees_btc_per_block": 0.0}).to_string()),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{resp}");
    let (status, replan) = plan_now(&h, "cheap").await;
    assert_eq!(status, StatusCode::CREATED, "{replan}");
    assert_eq!(hashing(&replan), 0, "{replan}");
    let (_, desired) = call(
        &h.control,
        Method::GET,
        "/api/v1/agent/desired",
        Some(&token),
        None,
    )
    .await;
    assert_eq!(desired["plan"]["plan_id"], replan["id"]);

    // The agent's report is kept with the plan; another site's agent cannot report it.
    let report = json!({"outcome": "applied", "at_ms": 1, "miners_hashing": 0, "miners_asleep": 10,
        "miners_unconfirmed": 0, "meter_kw": 1.2, "problems": [],
        "gpu_caps": [{"index": 0, "name": "H100", "limit_w": 420.0, "enforced_w": 420.0}]});
    let path = format!(
        "/api/v1/agent/plans/{}/report",
        replan["id"].as_str().unwrap()
    );
    let other = register(&h, "other", "30").await;
    let (status, _) = call(
        &h.control,
        Method::POST,
        &path,
        Some(&other),
        Some(&report.to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, resp) = call(
        &h.control,
        Method::POST,
        &path,
        Some(&token),
        Some(&report.to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{resp}");
    let (status, plans) = h
        .admin(Method::GET, "/api/v1/sites/cheap/plans?limit=5", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let plans = plans.as_array().unwrap();
    assert_eq!(plans.len(), 2);
    assert_eq!(plans[0]["id"], replan["id"]);
    assert_eq!(plans[0]["report"], report);
    assert!(plans[1]["report"].is_null());
}

#[tokio::test]
async fn a_dr_event_replans_the_site_under_its_cap() {
    let h = harness().await;
    register(&h, "tx", "30").await;
    let (status, _) = set_model(&h, "tx", &model("tx")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, plan) = plan_now(&h, "tx").await;
    assert_eq!((status, hashing(&plan)), (StatusCode::CREATED, 10));
    // A cap that only sleeping miners meet (10 × 10 W asleep × 1.05 is 0.105 kW).
    let (status, event) = h
        .admin(
            Method::POST,
            "/api/v1/sites/tx/dr-events",
            Some(&json!({"down_to_kw": 0.5, "duration_minutes": 30}).to_string()),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{event}");
    let (_, plans) = h.admin(Method::GET, "/api/v1/sites/tx/plans", None).await;
    let newest = &plans.as_array().unwrap()[0];
    assert_ne!(newest["id"], plan["id"], "the event replans");
    assert_eq!(hashing(newest), 0, "{newest}");
    assert_eq!(newest["interval"]["dr_cap_kw"], 0.5);
}

#[tokio::test]
async fn broken_asks_are_refused_and_change_nothing() {
    let h = harness().await;
    let token = register(&h, "a", "30").await;
    let mut wrong_name = model("a");
    wrong_name["name"] = json!("b");
    let mut unknown_field = model("a");
    unknown_field["colour"] = json!("red");
    let mut no_interconnect = model("a");
    no_interconnect["interconnect_kw"] = json!(-5.0);
    let mut unknown_model = model("a");
    unknown_model["asic_groups"][0]["model"] = json!("Antminer S99");
    let cases = [
        (wrong_name, StatusCode::BAD_REQUEST, "name"),
        (unknown_field, StatusCode::BAD_REQUEST, "colour"),
        (no_interconnect, StatusCode::BAD_REQUEST, "interconnect_kw"),
        (unknown_model, StatusCode::BAD_REQUEST, "S99"),
        (json!("not an object"), StatusCode::BAD_REQUEST, ""),
    ];
    for (body, want, says) in cases {
        let (status, resp) = set_model(&h, "a", &body).await;
        assert_eq!(status, want, "{body}: {resp}");
        let message = resp["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{message:?} should say {says:?}");
    }
    let (status, _) = h
        .admin(Method::GET, "/api/v1/sites/a/power-model", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing was stored");
    let (status, _) = set_model(&h, "atlantis", &model("atlantis")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // No model, no plan; an unknown site; a bad limit.
    assert_eq!(plan_now(&h, "a").await.0, StatusCode::NOT_FOUND);
    assert_eq!(plan_now(&h, "atlantis").await.0, StatusCode::NOT_FOUND);
    for q in ["limit=0", "limit=1001", "limit=x", "colour=red"] {
        let (status, _) = h
            .admin(Method::GET, &format!("/api/v1/sites/a/plans?{q}"), None)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{q}");
    }

    // A tariff the planner cannot use is a clear refusal, not a plan.
    let mut no_market = model("a");
    no_market.as_object_mut().unwrap().remove("bitcoin");
    let (status, _) = set_model(&h, "a", &no_market).await;
    assert_eq!(status, StatusCode::OK);
    let (status, resp) = plan_now(&h, "a").await;
    assert_eq!(status, StatusCode::CONFLICT, "{resp}");
    assert!(
        resp["error"]["message"]
            .as_str()
            .unwrap()
            .contains("market"),
        "{resp}"
    );
    let (_, plans) = h.admin(Method::GET, "/api/v1/sites/a/plans", None).await;
    assert_eq!(plans, json!([]));

    // Reports: unknown plan, a body with unknown fields or a bad meter reading.
    let (status, _) = call(&h.control, Method::POST, "/api/v1/agent/plans/nope/report", Some(&token),
        Some(r#"{"outcome":"applied","at_ms":1,"miners_hashing":0,"miners_asleep":0,"miners_unconfirmed":0}"#)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    for body in [
        r#"{"outcome":"applied","at_ms":1,"miners_hashing":0,"miners_asleep":0,"miners_unconfirmed":0,"extra":1}"#,
        r#"{"outcome":"maybe","at_ms":1,"miners_hashing":0,"miners_asleep":0,"miners_unconfirmed":0}"#,
        r#"{"outcome":"applied","at_ms":1,"miners_hashing":0,"miners_asleep":0,"miners_unconfirmed":0,"meter_kw":-1}"#,
        "not json",
    ] {
        let (status, _) = call(
            &h.control,
            Method::POST,
            "/api/v1/agent/plans/nope/report",
            Some(&token),
            Some(body),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    }
    // Without the agent's token.
    let (status, _) = call(&h.control, Method::POST, "/api/v1/agent/plans/nope/report", None,
        Some(r#"{"outcome":"applied","at_ms":1,"miners_hashing":0,"miners_asleep":0,"miners_unconfirmed":0}"#)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// The current 15-minute interval's start, RFC 3339.
fn this_interval() -> String {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    time::OffsetDateTime::from_unix_timestamp(now - now.rem_euclid(900))
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

async fn import(h: &Harness, site: &str, body: &Value) -> (StatusCode, Value) {
    h.admin(
        Method::PUT,
        &format!("/api/v1/sites/{site}/prices"),
        Some(&body.to_string()),
    )
    .await
}

#[tokio::test]
async fn imported_prices_replan_the_site_and_the_tariff_rules_where_they_end() {
    let h = harness().await;
    register(&h, "spiky", "30").await;
    set_model(&h, "spiky", &model("spiky")).await;
    let (_, plan) = plan_now(&h, "spiky").await;
    assert_eq!(hashing(&plan), 10, "the $30 tariff: all hash");

    // A $3,000 spike over this interval and the next (two, so a test at an interval's last
    // instant still plans inside it).
    let start = this_interval();
    let mut spike =
        json!({"start": start, "interval_minutes": 15, "usd_per_mwh": [3000.0, 3000.0]});
    let (status, receipt) = import(&h, "spiky", &spike).await;
    assert_eq!(status, StatusCode::OK, "{receipt}");
    assert_eq!(
        (receipt["imported"].as_u64(), receipt["replaced"].as_u64()),
        (Some(2), Some(0))
    );
    let replanned = receipt["replanned"]
        .as_str()
        .expect("the site was replanned");
    let (_, plans) = h
        .admin(Method::GET, "/api/v1/sites/spiky/plans?limit=1", None)
        .await;
    assert_eq!(plans[0]["id"], replanned);
    assert_eq!(
        hashing(&plans[0]),
        0,
        "the spike sleeps every miner: {}",
        plans[0]
    );
    assert_eq!(plans[0]["interval"]["usd_per_mwh"], 3000.0);

    // The prices read back, with the tariff that rules elsewhere.
    let (status, shown) = h
        .admin(
            Method::GET,
            &format!("/api/v1/sites/spiky/prices?from={start}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    assert_eq!(shown["tariff_usd_per_mwh"], "30");
    assert_eq!(shown["prices"][0]["usd_per_mwh"], 3000.0);
    assert_eq!(shown["prices"][0]["interval_minutes"], 15);

    // A corrected file (5-minute prices at $20) replaces it: all hash again.
    spike["interval_minutes"] = json!(5);
    spike["usd_per_mwh"] = json!(vec![20.0; 6]);
    let (status, receipt) = import(&h, "spiky", &spike).await;
    assert_eq!(status, StatusCode::OK, "{receipt}");
    assert_eq!(receipt["replaced"], 2);
    let (_, plans) = h
        .admin(Method::GET, "/api/v1/sites/spiky/plans?limit=1", None)
        .await;
    assert_eq!(hashing(&plans[0]), 10, "{}", plans[0]);
}

#[tokio::test]
async fn broken_price_imports_and_reads_are_refused_and_change_nothing() {
    let h = harness().await;
    register(&h, "s", "30").await;
    let ok =
        json!({"start": "2026-12-01T00:00:00Z", "interval_minutes": 15, "usd_per_mwh": [10.0]});
    let with = |field: &str, value: Value| {
        let mut b = ok.clone();
        b[field] = value;
        b.to_string()
    };
    let bad = StatusCode::BAD_REQUEST;
    #[rustfmt::skip]
    let cases: Vec<(&str, Method, &str, Option<String>, StatusCode)> = vec![
        ("unknown site", Method::PUT, "/api/v1/sites/ghost/prices", Some(ok.to_string()), StatusCode::NOT_FOUND),
        ("not JSON", Method::PUT, "/api/v1/sites/s/prices", Some("timestamp,usd_per_mwh".into()), bad),
        ("unknown field", Method::PUT, "/api/v1/sites/s/prices", Some(with("currency", json!("EUR"))), bad),
        ("bad start", Method::PUT, "/api/v1/sites/s/prices", Some(with("start", json!("yesterday"))), bad),
        ("start off a whole second", Method::PUT, "/api/v1/sites/s/prices", Some(with("start", json!("2026-12-01T00:00:00.5Z"))), bad),
        ("hourly prices", Method::PUT, "/api/v1/sites/s/prices", Some(with("interval_minutes", json!(60))), bad),
        ("no prices", Method::PUT, "/api/v1/sites/s/prices", Some(with("usd_per_mwh", json!([]))), bad),
        ("above the offer cap", Method::PUT, "/api/v1/sites/s/prices", Some(with("usd_per_mwh", json!([10.0, 5000.01]))), bad),
        ("below the floor", Method::PUT, "/api/v1/sites/s/prices", Some(with("usd_per_mwh", json!([-1e9]))), bad),
        ("a price as text", Method::PUT, "/api/v1/sites/s/prices", Some(with("usd_per_mwh", json!(["10"]))), bad),
        ("read of an unknown site", Method::GET, "/api/v1/sites/ghost/prices", None, StatusCode::NOT_FOUND),
        ("read backwards", Method::GET, "/api/v1/sites/s/prices?from=2026-12-02&to=2026-12-01", None, bad),
        ("read of two years", Method::GET, "/api/v1/sites/s/prices?from=2025-01-01&to=2027-01-01", None, bad),
        ("read with an unknown parameter", Method::GET, "/api/v1/sites/s/prices?site=s", None, bad),
    ];
    for (what, method, uri, body, want) in cases {
        let (status, resp) = h.admin(method, uri, body.as_deref()).await;
        assert_eq!(status, want, "{what}: {resp}");
        assert!(resp["error"]["message"].is_string(), "{what}: {resp}");
    }
    let (status, shown) = h
        .admin(
            Method::GET,
            "/api/v1/sites/s/prices?from=2020-01-01&to=2020-12-31",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown["prices"], json!([]));
    let (_, shown) = h
        .admin(Method::GET, "/api/v1/sites/s/prices?from=2026-12-01", None)
        .await;
    assert_eq!(shown["prices"], json!([]), "nothing was stored");
}

#[tokio::test]
async fn a_sites_gpus_are_planned_for_the_demand_its_regions_gateways_reported() {
    let h = harness().await;
    // Two sites of region `us`, the same GPUs: each gets half of the region's demand.
    for site in ["gpu-a", "gpu-b"] {
        register(&h, site, "30").await;
        let mut m = model(site);
        m["interconnect_kw"] = json!(200.0);
        m["gpu_groups"] = json!([{"name": "h100", "nodes": 4, "idle_kw": 1.0, "max_kw": 10.0,
            "tokens_per_s": 1000.0}]);
        m["inference"] = json!({"interactive_usd_per_mtok": 1.0, "batch_usd_per_mtok": 0.5});
        let (status, resp) = set_model(&h, site, &m).await;
        assert_eq!(status, StatusCode::OK, "{resp}");
    }
    let (_, plan) = plan_now(&h, "gpu-a").await;
    assert_eq!(
        plan["interval"]["interactive_demand_tokens"], 0.0,
        "no usage: the forecast, none"
    );

    // The region's gateways served 1.8M interactive tokens in the last hour (500 a second),
    // at $2/M, and some in another region that is not this site's business.
    for (uri, body) in [
        (
            "/api/v1/models",
            r#"{"name":"smol","kind":"chat","artifact":"smol","memory_bytes":1}"#,
        ),
        ("/api/v1/tenants", r#"{"name":"acme"}"#),
        (
            "/api/v1/prices",
            r#"{"model":"smol","input_per_1m":"2","output_per_1m":"2"}"#,
        ),
    ] {
        let (status, resp) = h.admin(Method::POST, uri, Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{uri}: {resp}");
    }
    // After the price came into force (usage is rated at the price of its start).
    let now_ms = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64 + 1;
    let event = |id: &str, region: &str, tokens: u64| {
        json!({
            "id": id, "request_id": format!("req_{id}"), "tenant": "acme", "key_id": "k",
            "model": "smol", "deployment": "d", "replica": "r", "site": "gpu-b", "region": region,
            "priority": "normal", "prompt_tokens": tokens, "completion_tokens": 0,
            "started_at_ms": now_ms, "ttft_ms": 5, "duration_ms": 9, "status": 200,
            "outcome": "completed"
        })
    };
    let body = json!({"events": [event("e1", "us", 1_800_000), event("e2", "eu", 9_000_000)]});
    let (status, receipt) = h
        .gateway(
            Method::POST,
            "/api/v1/usage/batches",
            Some(&body.to_string()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{receipt}");

    let (status, plan) = plan_now(&h, "gpu-a").await;
    assert_eq!(status, StatusCode::CREATED, "{plan}");
    let interval = &plan["interval"];
    // 250 tokens a second for this site, over a 15-minute interval.
    let demand = interval["interactive_demand_tokens"].as_f64().unwrap();
    assert!((demand - 250.0 * 900.0).abs() < 1e-6, "{interval}");
    let served = interval["interactive_tokens"].as_f64().unwrap();
    assert!(
        (served - demand).abs() < 1e-6 * demand,
        "served first: {interval}"
    );
    // Priced at what the usage was billed: $2/M.
    let revenue = interval["inference_revenue_usd"].as_f64().unwrap();
    assert!((revenue - served * 2.0 / 1e6).abs() < 1e-6, "{interval}");
}

/// The node each replica of deployment `chat` is on, and each node's status, from
/// `GET /api/v1/status`.
async fn placement(h: &Harness) -> (Vec<String>, Vec<(String, bool)>, u64) {
    let (status, fleet) = h.admin(Method::GET, "/api/v1/status", None).await;
    assert_eq!(status, StatusCode::OK, "{fleet}");
    let mut on: Vec<String> = fleet["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["site"].as_str().unwrap().to_owned())
        .collect();
    on.sort();
    let nodes = fleet["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap().to_owned(),
                n["parked"].as_bool().unwrap(),
            )
        })
        .collect();
    let short = fleet["deployments"][0]["unschedulable"].as_u64().unwrap();
    (on, nodes, short)
}

#[tokio::test]
async fn replicas_follow_the_plan_off_the_gpu_nodes_it_switches_off() {
    let h = harness().await;
    // Two sites, one 8 GiB node each; `cheap` is preferred by the scheduler.
    let cheap = register(&h, "cheap", "20").await;
    let dear = register(&h, "dear", "90").await;
    deploy_chat(&h, 1).await;
    let (on, nodes, _) = placement(&h).await;
    assert_eq!(on, ["cheap"]);
    assert!(nodes.iter().all(|(_, parked)| !parked), "{nodes:?}");

    // `cheap`'s power model has its node as a GPU group and no inference demand: the plan
    // switches the node off (its idle draw would only cost), and the replica moves to `dear`.
    let gpu_model = |site: &str, interactive_tokens_per_s: f64| {
        let mut m = model(site);
        m["interconnect_kw"] = json!(200.0);
        m["gpu_groups"] = json!([{"name": "h100", "nodes": 1, "idle_kw": 1.0, "max_kw": 10.0,
            "tokens_per_s": 1000.0}]);
        m["inference"] = json!({"interactive_usd_per_mtok": 5.0, "batch_usd_per_mtok": 1.0});
        m["demand"] = json!({"interactive_tokens_per_s": interactive_tokens_per_s});
        m
    };
    let (status, resp) = set_model(&h, "cheap", &gpu_model("cheap", 0.0)).await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    let (status, plan) = plan_now(&h, "cheap").await;
    assert_eq!(status, StatusCode::CREATED, "{plan}");
    assert_eq!(
        plan["directive"]["gpu_groups"][0]["nodes_on"], 0.0,
        "{plan}"
    );
    // Make before break: the replacement is placed on `dear`, and the parked node's replica
    // serves until it is ready.
    let (on, nodes, short) = placement(&h).await;
    assert_eq!(on, ["cheap", "dear"]);
    assert_eq!(
        nodes,
        [("cheap-n0".to_owned(), true), ("dear-n0".to_owned(), false)]
    );
    assert_eq!(short, 0);
    report_ready(&h, "dear", &dear).await;
    let (on, _, _) = placement(&h).await;
    assert_eq!(on, ["dear"], "the replica left the parked node");

    // `dear` switched off too: nowhere else would take the replica, so it stays where it runs
    // (a plan never takes a model offline), and the deployment shows it short.
    let (status, resp) = set_model(&h, "dear", &gpu_model("dear", 0.0)).await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    plan_now(&h, "dear").await;
    let (on, nodes, short) = placement(&h).await;
    assert_eq!(on, ["dear"]);
    assert!(nodes.iter().all(|(_, parked)| *parked), "{nodes:?}");
    assert_eq!(short, 1);

    // Demand at `cheap` again: its node is on, and the replica goes there (`dear`'s is off).
    let (status, resp) = set_model(&h, "cheap", &gpu_model("cheap", 500.0)).await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    let (_, plan) = plan_now(&h, "cheap").await;
    assert!(
        plan["directive"]["gpu_groups"][0]["nodes_on"]
            .as_f64()
            .unwrap()
            > 0.0,
        "{plan}"
    );
    report_ready(&h, "cheap", &cheap).await;
    let (on, nodes, short) = placement(&h).await;
    assert_eq!(on, ["cheap"]);
    assert_eq!(
        nodes,
        [("cheap-n0".to_owned(), false), ("dear-n0".to_owned(), true)]
    );
    assert_eq!(short, 0);
}

/// `site`'s agent reports every replica it is asked to run ready.
async fn report_ready(h: &Harness, site: &str, token: &str) {
    let want = desired(h, token).await;
    let replicas: Vec<Value> = want["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            json!({"id": r["id"], "state": "ready",
                "endpoint": format!("http://{site}.invalid:1"), "message": null})
        })
        .collect();
    assert!(!replicas.is_empty(), "{want}");
    let body = json!({
        "nodes": [{"name": format!("{site}-n0"), "memory_bytes": 8u64 << 30}],
        "replicas": replicas, "desired_version": want["version"],
    });
    let (status, resp) = post_heartbeat(h, token, &body).await;
    assert_eq!(status, StatusCode::OK, "{resp}");
}
