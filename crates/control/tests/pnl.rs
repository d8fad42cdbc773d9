//! The P&L through the control plane's router: samples fed by agents' heartbeats, usage
//! ingested by a gateway, a market snapshot set; the numbers checked against hand-computed
//! expectations; bad input refused with a clear 400 or 404.

// Helpers outside `#[test]` fns panic on setup failures too; that is what a test wants.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use axum::http::{Method, StatusCode};
use common::{Harness, call, harness, post_heartbeat, register_site};
use rust_decimal::Decimal;
use serde_json::{Value, json};

const MIN: i64 = 60_000;
const QUARTER: i64 = 15 * MIN;

fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

fn dec(v: &Value) -> Decimal {
    v.as_str()
        .unwrap_or_else(|| panic!("not a decimal string: {v}"))
        .parse()
        .unwrap()
}

fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// Registers `site`'s agent at `price` USD/MWh; returns its token.
async fn register(h: &Harness, site: &str, price: &str) -> String {
    register_site(h, site, price).await
}

/// A heartbeat carrying one power sample.
async fn sample(h: &Harness, site: &str, token: &str, at_ms: i64, kw: f64, kwh: f64, ths: f64) {
    let body = json!({
        "nodes": [{"name": format!("{site}-n0"), "memory_bytes": 8u64 << 30}],
        "replicas": [],
        "desired_version": 0,
        "power": {
            "at_ms": at_ms, "meter_kw": kw, "meter_kwh": kwh,
            "miners": {"total": 5, "hashing": 5, "asleep": 0, "unreachable": 0, "kw": kw * 0.9, "ths": ths}
        }
    });
    let (status, resp) = post_heartbeat(h, token, &body).await;
    assert_eq!(status, StatusCode::OK, "{resp}");
}

/// BTC a day that 1 PH/s earns at difficulty `d`, subsidy 3.125 and 0.02 fees (FACTS.md).
fn btc_per_ph_day(d: f64) -> f64 {
    1e15 * 86_400.0 / (d * 4_294_967_296.0) * (3.125 + 0.02)
}

#[tokio::test]
async fn the_pnl_books_the_meter_the_miners_and_billed_usage() {
    let h = harness().await;
    let georgia = register(&h, "georgia", "40").await;
    register(&h, "texas", "25").await;
    let (status, snap) = h
        .admin(
            Method::POST,
            "/api/v1/market",
            Some(r#"{"btc_usd":"68500","difficulty":144.4e12,"subsidy_btc":3.125,"fees_btc_per_block":0.02}"#),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{snap}");
    // FACTS.md: February 2026's market puts hashprice just under $30/PH/day.
    let hashprice = snap["hashprice_usd_per_ph_day"].as_f64().unwrap();
    assert!((29.0..30.2).contains(&hashprice), "{hashprice}");
    let (_, all) = h.admin(Method::GET, "/api/v1/market", None).await;
    assert_eq!(all.as_array().unwrap().len(), 1);

    // Two quarter hours after the snapshot: 1,200 kW and 1 PH/s, a sample a minute, the
    // register counting 20 kWh a minute.
    let t0 = (now_ms() / QUARTER + 2) * QUARTER;
    for i in 0..=30 {
        let kwh = 5_000.0 + 20.0 * i as f64;
        sample(&h, "georgia", &georgia, t0 + i * MIN, 1_200.0, kwh, 1_000.0).await;
    }

    // Billed usage at georgia in the first quarter: 1M prompt at $0.10/M, 0.5M completion at
    // $0.40/M: $0.30.
    for (uri, body) in [
        (
            "/api/v1/models",
            r#"{"name":"smol","kind":"chat","artifact":"smol","memory_bytes":1}"#,
        ),
        ("/api/v1/tenants", r#"{"name":"acme"}"#),
        (
            "/api/v1/prices",
            r#"{"model":"smol","input_per_1m":"0.10","output_per_1m":"0.40"}"#,
        ),
    ] {
        let (status, resp) = h.admin(Method::POST, uri, Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{uri}: {resp}");
    }
    let event = json!({
        "id": "u1", "request_id": "req_u1", "tenant": "acme", "key_id": "k", "model": "smol",
        "deployment": "d", "replica": "r", "site": "georgia", "region": "us",
        "priority": "normal", "prompt_tokens": 1_000_000, "completion_tokens": 500_000,
        "started_at_ms": t0 + 5 * MIN, "ttft_ms": 5, "duration_ms": 9, "status": 200,
        "outcome": "completed"
    });
    let (status, receipt) = h
        .gateway(
            Method::POST,
            "/api/v1/usage/batches",
            Some(&json!({"events": [event]}).to_string()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{receipt}");

    let range = format!(
        "from={}&to={}",
        rfc3339(t0).replace('+', "%2B"),
        rfc3339(t0 + 2 * QUARTER).replace('+', "%2B")
    );
    let (status, site) = h
        .admin(
            Method::GET,
            &format!("/api/v1/pnl?site=georgia&by=interval&{range}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{site}");
    let lines = site["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 2);
    // Per quarter: 300 kWh at $40/MWh = $12; 1 PH/s for 900 s at the snapshot's market.
    let btc = Decimal::try_from(btc_per_ph_day(144.4e12) * 900.0 / 86_400.0)
        .unwrap()
        .round_dp(8);
    let mining = (btc * Decimal::from(68_500)).round_dp(2);
    for (i, l) in lines.iter().enumerate() {
        assert!(
            (l["energy_kwh"].as_f64().unwrap() - 300.0).abs() < 1e-6,
            "{l}"
        );
        assert_eq!(dec(&l["energy_cost_usd"]), Decimal::from(12), "{l}");
        assert!(
            (dec(&l["btc_mined"]) - btc).abs() <= Decimal::new(1, 8),
            "{l}"
        );
        assert!((dec(&l["mining_revenue_usd"]) - mining).abs() <= Decimal::new(1, 2));
        let (tokens, inference) = if i == 0 {
            (1_500_000, Decimal::new(30, 2))
        } else {
            (0, Decimal::ZERO)
        };
        assert_eq!(l["tokens"], tokens, "{l}");
        assert_eq!(dec(&l["inference_revenue_usd"]), inference);
        let margin = dec(&l["mining_revenue_usd"]) + inference - Decimal::from(12);
        assert_eq!(dec(&l["margin_usd"]), margin, "{l}");
        // Margin per MWh over 0.3 MWh.
        assert_eq!(
            dec(&l["margin_usd_per_mwh"]),
            (margin / Decimal::new(3, 1)).round_dp(2)
        );
    }
    // The booked energy is the register's delta over the range, exactly.
    assert!((site["total"]["energy_kwh"].as_f64().unwrap() - 600.0).abs() < 1e-6);
    let metering = &site["sites"][0]["metering"];
    assert!((metering["counter_kwh"].as_f64().unwrap() - 600.0).abs() < 1e-6);
    assert_eq!(metering["unmetered_s"], 0.0);

    // The fleet: georgia plus texas, which reported nothing and says so.
    let (status, fleet) = h
        .admin(
            Method::GET,
            &format!("/api/v1/pnl?by=interval&{range}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{fleet}");
    // By day, the same energy; money within the cent each line is rounded to.
    let (status, daily) = h
        .admin(
            Method::GET,
            &format!("/api/v1/pnl?site=georgia&by=day&{range}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{daily}");
    assert!((daily["total"]["energy_kwh"].as_f64().unwrap() - 600.0).abs() < 1e-6);
    let drift = dec(&daily["total"]["margin_usd"]) - dec(&site["total"]["margin_usd"]);
    assert!(drift.abs() <= Decimal::new(2, 2), "{drift}");
    assert_eq!(fleet["site"], Value::Null);
    let sites: Vec<&str> = fleet["sites"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["site"].as_str().unwrap())
        .collect();
    assert_eq!(sites, ["georgia", "texas"]);
    assert_eq!(
        dec(&fleet["total"]["margin_usd"]),
        dec(&site["total"]["margin_usd"])
    );
    let texas = &fleet["sites"][1];
    assert_eq!(texas["total"]["energy_kwh"], 0.0);
    assert!(
        texas["notes"][0]
            .as_str()
            .unwrap()
            .contains("no energy booked"),
        "{texas}"
    );
    let treasury = &fleet["treasury"];
    assert_eq!(dec(&treasury["latest_btc_usd"]), Decimal::from(68_500));
    assert_eq!(
        dec(&treasury["fleet"]["btc_mined"]),
        dec(&site["total"]["btc_mined"])
    );
    assert_eq!(treasury["sites"][1]["name"], "texas");

    // The market's prices imported for the second quarter ($100/MWh): its 300 kWh cost $30,
    // the first quarter stays at the $40 tariff.
    let (status, receipt) = h
        .admin(
            Method::PUT,
            "/api/v1/sites/georgia/prices",
            Some(
                &json!({"start": rfc3339(t0 + QUARTER), "interval_minutes": 15,
                    "usd_per_mwh": [100.0]})
                .to_string(),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{receipt}");
    let (status, priced) = h
        .admin(
            Method::GET,
            &format!("/api/v1/pnl?site=georgia&by=interval&{range}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{priced}");
    let costs: Vec<Decimal> = priced["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| dec(&l["energy_cost_usd"]))
        .collect();
    assert_eq!(costs, [Decimal::from(12), Decimal::from(30)]);
}

/// What, method, URI, body, the status wanted, and what its message must say.
type Case = (
    &'static str,
    Method,
    &'static str,
    Option<&'static str>,
    StatusCode,
    &'static str,
);

#[tokio::test]
async fn bad_input_gets_a_clear_error() {
    let h = harness().await;
    register(&h, "georgia", "40").await;
    let bad = StatusCode::BAD_REQUEST;
    let nf = StatusCode::NOT_FOUND;
    let cases: &[Case] = &[
        (
            "bad from",
            Method::GET,
            "/api/v1/pnl?from=yesterday",
            None,
            bad,
            "from",
        ),
        (
            "bad to",
            Method::GET,
            "/api/v1/pnl?to=2026-13-01",
            None,
            bad,
            "to",
        ),
        (
            "to before from",
            Method::GET,
            "/api/v1/pnl?from=2026-03-02&to=2026-03-01",
            None,
            bad,
            "after",
        ),
        (
            "unknown site",
            Method::GET,
            "/api/v1/pnl?site=atlantis&from=2026-03-01&to=2026-03-02",
            None,
            nf,
            "atlantis",
        ),
        (
            "unknown by",
            Method::GET,
            "/api/v1/pnl?by=week&from=2026-03-01&to=2026-03-02",
            None,
            bad,
            "week",
        ),
        (
            "too many intervals",
            Method::GET,
            "/api/v1/pnl?by=interval&from=2026-01-01&to=2026-03-01",
            None,
            bad,
            "too many",
        ),
        (
            "range over a year",
            Method::GET,
            "/api/v1/pnl?by=month&from=2024-01-01&to=2026-01-01",
            None,
            bad,
            "366",
        ),
        (
            "unknown parameter",
            Method::GET,
            "/api/v1/pnl?sites=georgia",
            None,
            bad,
            "sites",
        ),
        (
            "zero difficulty",
            Method::POST,
            "/api/v1/market",
            Some(
                r#"{"btc_usd":"68500","difficulty":0,"subsidy_btc":3.125,"fees_btc_per_block":0.02}"#,
            ),
            bad,
            "difficulty",
        ),
        (
            "negative fees",
            Method::POST,
            "/api/v1/market",
            Some(
                r#"{"btc_usd":"68500","difficulty":1e12,"subsidy_btc":3.125,"fees_btc_per_block":-1}"#,
            ),
            bad,
            "fees",
        ),
        (
            "price not a number",
            Method::POST,
            "/api/v1/market",
            Some(
                r#"{"btc_usd":"lots","difficulty":1e12,"subsidy_btc":3.125,"fees_btc_per_block":0}"#,
            ),
            bad,
            "",
        ),
        (
            "terms of no event",
            Method::PUT,
            "/api/v1/dr-events/dr-ghost/terms",
            Some(r#"{"pay_usd_per_mwh":"100"}"#),
            nf,
            "dr-ghost",
        ),
    ];
    for (what, method, uri, body, want, says) in cases {
        let (status, resp) = h.admin(method.clone(), uri, *body).await;
        assert_eq!(status, *want, "{what}: {resp}");
        let message = resp["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{what}: {message}");
    }
    // Terms on a real event: a negative rate is refused, a good one stored.
    let (status, event) = h
        .admin(
            Method::POST,
            "/api/v1/sites/georgia/dr-events",
            Some(r#"{"down_to_kw":100,"duration_minutes":5}"#),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{event}");
    let terms = format!("/api/v1/dr-events/{}/terms", event["id"].as_str().unwrap());
    let (status, resp) = h
        .admin(Method::PUT, &terms, Some(r#"{"pay_usd_per_mwh":"-5"}"#))
        .await;
    assert_eq!(status, bad, "{resp}");
    let (status, resp) = h
        .admin(
            Method::PUT,
            &terms,
            Some(r#"{"pay_usd_per_mwh":"120","peak_charge_usd_per_kw":"12.5"}"#),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    assert_eq!(dec(&resp["pay_usd_per_mwh"]), Decimal::from(120));
    // The admin token is needed.
    let (status, _) = call(&h.control, Method::GET, "/api/v1/pnl", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}
