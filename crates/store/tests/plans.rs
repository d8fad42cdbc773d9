//! The SQLite store's live power plan against a real file: sites' power models, plans and
//! their agents' reports — which plan is in force, what is refused, and that reopening the
//! file keeps all of it.

// Helpers outside `#[test]` fns panic on setup failures too; that is what a test wants.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use wattmesh_domain::planner::{IntervalPlan, SiteSpec};
use wattmesh_proto::plan::{AsicTarget, PlanDirective, PlanOutcome, PlanReport};
use wattmesh_store::{PowerPlanRecord, Store, StoreError};

mod common;

use common::{open, seed};

fn model(site: &str) -> SiteSpec {
    toml::from_str(&format!(
        "name = \"{site}\"\ninterconnect_kw = 500.0\npue = 1.05\n\
         [[asic_groups]]\nmodel = \"Antminer S21\"\nunits = 100\n"
    ))
    .unwrap()
}

fn interval(start_unix_s: i64) -> IntervalPlan {
    serde_json::from_value(serde_json::json!({
        "index": 0, "start_unix_s": start_unix_s, "usd_per_mwh": 40.0,
        "hashprice_usd_per_ph_day": 30.0, "dr_cap_kw": null,
        "asic_groups": [{"name": "Antminer S21", "units_hashing": 100.0, "units_asleep": 0.0,
            "watts_per_hashing_unit": 3500.0, "kw": 350.0, "hashrate_ths": 20000.0}],
        "gpu_groups": [], "asic_kw": 350.0, "gpu_kw": 0.0, "grid_kw": 367.5,
        "curtailed_kw": 0.0, "interactive_demand_tokens": 0.0, "interactive_tokens": 0.0,
        "interactive_moved_tokens": 0.0, "batch_arrived_tokens": 0.0, "batch_tokens": 0.0,
        "batch_backlog_tokens": 0.0, "mining_revenue_usd": 10.0, "hosting_revenue_usd": 0.0,
        "inference_revenue_usd": 0.0, "dr_payment_usd": 0.0, "energy_cost_usd": 3.7,
        "peak_charge_usd": 0.0, "margin_usd": 6.3
    }))
    .unwrap()
}

fn plan(id: &str, site: &str, starts_at_ms: i64, created_at_ms: i64) -> PowerPlanRecord {
    PowerPlanRecord {
        id: id.into(),
        site: site.into(),
        starts_at_ms,
        ends_at_ms: starts_at_ms + 900_000,
        created_at_ms,
        interval: interval(starts_at_ms / 1000),
        directive: PlanDirective {
            plan_id: id.into(),
            starts_at_ms,
            ends_at_ms: starts_at_ms + 900_000,
            asic_groups: vec![AsicTarget {
                name: "Antminer S21".into(),
                units: 100,
                units_hashing: 100,
                watts_per_unit: 3500.0,
            }],
            gpu_groups: vec![],
            expected_meter_kw: 367.5,
        },
        report: None,
    }
}

fn report(outcome: PlanOutcome) -> PlanReport {
    PlanReport {
        outcome,
        at_ms: 5,
        miners_hashing: 98,
        miners_asleep: 0,
        miners_unconfirmed: 2,
        meter_kw: Some(361.25),
        problems: vec!["miner 127.0.0.1:4001: not confirmed".into()],
        gpu_caps: vec![wattmesh_proto::plan::GpuCapReport {
            index: 0,
            name: "H100".into(),
            limit_w: 420.0,
            enforced_w: None,
        }],
    }
}

fn ids(plans: &[PowerPlanRecord]) -> Vec<&str> {
    plans.iter().map(|p| p.id.as_str()).collect()
}

#[tokio::test]
async fn models_are_set_replaced_and_listed_by_site() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
    seed(&s).await;
    assert!(matches!(
        s.power_model("a").await,
        Err(StoreError::NotFound { .. })
    ));
    s.set_power_model("b", &model("b"), 10).await.unwrap();
    s.set_power_model("a", &model("a"), 11).await.unwrap();
    let mut bigger = model("a");
    bigger.interconnect_kw = 900.0;
    s.set_power_model("a", &bigger, 12).await.unwrap();
    let got = s.power_model("a").await.unwrap();
    assert_eq!((got.spec, got.updated_at_ms), (bigger, 12));
    let sites: Vec<String> = s
        .list_power_models()
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.site)
        .collect();
    assert_eq!(sites, ["a", "b"]);
    assert!(matches!(
        s.set_power_model("atlantis", &model("atlantis"), 1).await,
        Err(StoreError::NotFound { .. })
    ));
}

#[tokio::test]
async fn the_newest_plan_of_the_interval_at_hand_is_in_force_per_site() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
    seed(&s).await;
    s.add_power_plan(&plan("p1", "a", 900_000, 900_000))
        .await
        .unwrap();
    s.add_power_plan(&plan("p2", "a", 900_000, 1_000_000))
        .await
        .unwrap(); // a replan
    s.add_power_plan(&plan("p3", "a", 1_800_000, 1_800_000))
        .await
        .unwrap(); // next interval
    s.add_power_plan(&plan("q1", "b", 900_000, 900_500))
        .await
        .unwrap();
    assert_eq!(
        ids(&s.current_power_plans(1_200_000).await.unwrap()),
        ["p2", "q1"]
    );
    assert_eq!(
        ids(&s.current_power_plans(1_800_000).await.unwrap()),
        ["p3"]
    );
    assert!(s.current_power_plans(899_999).await.unwrap().is_empty());
    assert_eq!(ids(&s.power_plans("a", 2).await.unwrap()), ["p3", "p2"]);
    assert_eq!(
        s.power_plans("a", 10).await.unwrap()[2],
        plan("p1", "a", 900_000, 900_000)
    );
}

#[tokio::test]
async fn reports_replace_and_stay_with_their_sites_plan() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
    seed(&s).await;
    s.add_power_plan(&plan("p1", "a", 900_000, 900_000))
        .await
        .unwrap();
    s.report_power_plan("p1", "a", &report(PlanOutcome::Partial))
        .await
        .unwrap();
    s.report_power_plan("p1", "a", &report(PlanOutcome::Applied))
        .await
        .unwrap();
    let got = s.power_plans("a", 1).await.unwrap().remove(0);
    assert_eq!(got.report, Some(report(PlanOutcome::Applied)));
    // Another site's agent, or an unknown plan: not found, nothing changed.
    for (id, site) in [("p1", "b"), ("nope", "a")] {
        assert!(matches!(
            s.report_power_plan(id, site, &report(PlanOutcome::Failed))
                .await,
            Err(StoreError::NotFound { .. })
        ));
    }
    assert_eq!(
        s.power_plans("a", 1).await.unwrap()[0].report,
        Some(report(PlanOutcome::Applied))
    );

    // Reopened, everything is still there.
    s.close().await;
    let s = open(dir.path()).await;
    assert_eq!(s.power_plans("a", 1).await.unwrap().remove(0), got);
}

/// What a refused write's error must be.
type Expect = fn(&StoreError) -> bool;

#[tokio::test]
async fn broken_plans_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
    seed(&s).await;
    s.add_power_plan(&plan("p1", "a", 900_000, 900_000))
        .await
        .unwrap();
    let mut backwards = plan("p2", "a", 900_000, 900_000);
    backwards.ends_at_ms = 900_000;
    let cases: Vec<(PowerPlanRecord, Expect)> = vec![
        (plan("p1", "a", 1_800_000, 1), |e| {
            matches!(e, StoreError::Conflict(_))
        }),
        (plan("x", "atlantis", 900_000, 1), |e| {
            matches!(e, StoreError::NotFound { .. })
        }),
        (backwards, |e| matches!(e, StoreError::Invalid(_))),
    ];
    for (p, want) in cases {
        let err = s.add_power_plan(&p).await.unwrap_err();
        assert!(want(&err), "{} on {}: {err:?}", p.id, p.site);
    }
    assert_eq!(ids(&s.power_plans("a", 10).await.unwrap()), ["p1"]);
}

fn price(starts_at_ms: i64, interval_s: i64, usd_per_mwh: f64) -> wattmesh_store::SitePricePoint {
    wattmesh_store::SitePricePoint {
        starts_at_ms,
        interval_s,
        usd_per_mwh,
    }
}

#[tokio::test]
async fn an_import_replaces_the_prices_it_overlaps_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
    seed(&s).await;
    // An hour of 15-minute prices, then a corrected 5-minute half hour in its middle.
    let hour: Vec<_> = (0..4)
        .map(|i| price(i * 900_000, 900, 40.0 + i as f64))
        .collect();
    assert_eq!(s.import_site_prices("a", &hour).await.unwrap(), 0);
    let fix: Vec<_> = (0..6)
        .map(|i| price(900_000 + i * 300_000, 300, -5.0))
        .collect();
    assert_eq!(s.import_site_prices("a", &fix).await.unwrap(), 2);
    let stored = s.site_prices("a", 0, 3_600_000).await.unwrap();
    let starts: Vec<i64> = stored.iter().map(|p| p.starts_at_ms / 1000).collect();
    assert_eq!(starts, [0, 900, 1200, 1500, 1800, 2100, 2400, 2700]);
    assert_eq!(stored[0].usd_per_mwh, 40.0);
    assert_eq!(stored[7], price(2_700_000, 900, 43.0));
    // A range returns what overlaps it; another site has none.
    assert_eq!(
        s.site_prices("a", 2_699_999, 2_700_001)
            .await
            .unwrap()
            .len(),
        2
    );
    assert!(s.site_prices("b", 0, i64::MAX).await.unwrap().is_empty());
    // Reopened, all of it is there.
    drop(s);
    let s = open(dir.path()).await;
    assert_eq!(s.site_prices("a", 0, 3_600_000).await.unwrap(), stored);
}

#[tokio::test]
async fn broken_price_imports_are_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
    seed(&s).await;
    s.import_site_prices("a", &[price(0, 900, 10.0)])
        .await
        .unwrap();
    let cases: [(&str, &str, Vec<wattmesh_store::SitePricePoint>); 5] = [
        ("unknown site", "ghost", vec![price(0, 900, 1.0)]),
        ("nothing", "a", vec![]),
        (
            "NaN",
            "a",
            vec![price(0, 900, 1.0), price(900_000, 900, f64::NAN)],
        ),
        ("no length", "a", vec![price(0, 0, 1.0)]),
        (
            "twice one start",
            "a",
            vec![price(0, 900, 1.0), price(0, 900, 2.0)],
        ),
    ];
    for (what, site, points) in cases {
        let err = s.import_site_prices(site, &points).await.unwrap_err();
        let expected = if site == "ghost" {
            matches!(err, StoreError::NotFound { .. })
        } else {
            matches!(err, StoreError::Invalid(_))
        };
        assert!(expected, "{what}: {err:?}");
    }
    assert_eq!(
        s.site_prices("a", 0, i64::MAX).await.unwrap(),
        [price(0, 900, 10.0)],
        "nothing changed"
    );
}
