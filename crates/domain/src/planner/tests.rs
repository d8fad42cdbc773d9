//! Worked examples with hand-checked numbers, the checks on bad input, and properties of the
//! planner and its baselines over random sites and price series.

use proptest::prelude::*;

use super::*;
use crate::market::{IntervalLength, PriceSeries};
use crate::mining::{ASIC_MODELS, asic_model};

const HP: f64 = 40.0;

fn asic(model: &str, units: u32) -> AsicGroupSpec {
    AsicGroupSpec {
        name: None,
        model: model.into(),
        units,
        ramp_up_s: None,
        hosting_usd_per_mwh: None,
    }
}

fn gpu(name: &str, nodes: u32, idle_kw: f64, max_kw: f64, tokens_per_s: f64) -> GpuGroupSpec {
    GpuGroupSpec {
        name: name.into(),
        nodes,
        idle_kw,
        max_kw,
        tokens_per_s,
    }
}

fn spec(
    interconnect_kw: f64,
    asic_groups: Vec<AsicGroupSpec>,
    gpu_groups: Vec<GpuGroupSpec>,
) -> SiteSpec {
    SiteSpec {
        name: "test-1".into(),
        interconnect_kw,
        pue: 1.0,
        utc_offset_hours: 0,
        asic_groups,
        gpu_groups,
        inference: InferencePrices {
            interactive_usd_per_mtok: 0.4,
            batch_usd_per_mtok: 0.2,
        },
        demand: DemandSpec::default(),
        bitcoin: None,
        coincident_peak: None,
        dr_events: vec![],
        curve_segments: DEFAULT_CURVE_SEGMENTS,
        baselines: BaselineSpec::default(),
    }
}

fn at(usd_per_mwh: f64) -> IntervalInputs {
    IntervalInputs {
        usd_per_mwh,
        hashprice_usd_per_ph_day: HP,
        interactive_tokens: 0.0,
        batch_tokens: 0.0,
        dr: None,
        peak_probability: 0.0,
    }
}

fn timeline(intervals: Vec<IntervalInputs>) -> Timeline {
    Timeline::new(0, IntervalLength::FifteenMinutes, intervals).unwrap()
}

fn plan_all(site: &SiteSpec, intervals: Vec<IntervalInputs>) -> SitePlan {
    let t = timeline(intervals);
    optimum(&site.check().unwrap(), &t, &SiteState::default()).unwrap()
}

#[track_caller]
fn close(got: f64, want: f64, tolerance: f64) {
    assert!(
        (got - want).abs() <= tolerance,
        "got {got}, want {want} ± {tolerance}"
    );
}

// === worked examples ===

/// $5,000/MWh is far above any miner's break-even: everything sleeps, and the site pays only
/// for sleep draw (100 × 15 W = 1.5 kW; 1.5 kW × 0.25 h × $5,000/MWh = $1.875).
#[test]
fn a_price_spike_curtails_everything() {
    let p = plan_all(
        &spec(1_000.0, vec![asic("Antminer S21", 100)], vec![]),
        vec![at(5_000.0)],
    );
    let i = &p.intervals[0];
    close(i.asic_groups[0].units_hashing, 0.0, 1e-6);
    close(i.grid_kw, 1.5, 1e-6);
    close(i.energy_cost_usd, 1.875, 1e-6);
    close(i.mining_revenue_usd, 0.0, 1e-9);
    close(i.margin_usd, -1.875, 1e-6);
    close(i.curtailed_kw, 402.5 - 1.5, 1e-6);
}

/// At $10/MWh every S21 runs at its highest profile, 4,025 W: 200 TH/s × 1.15^0.75 =
/// 222.102 TH/s each, 22.2102 PH/s in all, × $40/PH/day × 0.25 h / 24 h = $9.2543; energy
/// 402.5 kW × 0.25 h × $10/MWh = $1.00625.
#[test]
fn a_cheap_night_mines_at_max_power() {
    let p = plan_all(
        &spec(1_000.0, vec![asic("Antminer S21", 100)], vec![]),
        vec![at(10.0)],
    );
    let i = &p.intervals[0];
    let g = &i.asic_groups[0];
    close(g.units_hashing, 100.0, 1e-6);
    close(g.watts_per_hashing_unit, 4_025.0, 1e-3);
    close(g.hashrate_ths, 22_210.2, 0.1);
    close(i.mining_revenue_usd, 9.2543, 1e-3);
    close(i.energy_cost_usd, 1.00625, 1e-6);
    close(i.margin_usd, 9.2543 - 1.00625, 1e-3);
}

/// At $100/MWh and $40/PH/day: an S19 XP at its most efficient point (1,505 W, 83.24 TH/s,
/// 17.90 J/TH over sleep) breaks even at $93.1 — it sleeps. An S21 XP pays down to
/// 148 $/MWh; its marginal hashrate per watt falls to the price's 0.06 TH/s/W at ≈ 2,677 W.
/// On the 4-segment curve (breakpoints every 592.3 W from 1,822.5 W) the segment holding
/// 2,677 W gains only 0.0599 TH/s/W, so it stops at that segment's lower end: 2,414.8 W, 66.25 %
/// of nominal.
#[test]
fn between_break_evens_the_worst_miners_sleep_and_the_best_underclock() {
    let site = spec(
        10_000.0,
        vec![asic("Antminer S19 XP", 100), asic("Antminer S21 XP", 100)],
        vec![],
    );
    let checked = site.check().unwrap();
    close(
        checked.asic_groups()[0].break_even_usd_per_mwh(HP),
        93.1,
        0.1,
    );
    close(
        checked.asic_groups()[1].break_even_usd_per_mwh(HP),
        148.0,
        0.2,
    );
    let p = plan_all(&site, vec![at(100.0)]);
    let i = &p.intervals[0];
    close(i.asic_groups[0].units_hashing, 0.0, 1e-6);
    close(i.asic_groups[1].units_hashing, 100.0, 1e-6);
    close(
        i.asic_groups[1].watts_per_hashing_unit,
        0.6625 * 3_645.0,
        1e-3,
    );
}

/// A GPU node serves 10,000 tok/s × 900 s = 9 Mtok an interval on 10 kW. Interactive demand of
/// five nodes' worth takes 50 kW of the 100 kW interconnect, the miners the other 50. Twenty
/// nodes' worth cannot fit: the GPUs take all but the miners' 1.5 kW of sleep draw (98.5 kW:
/// 88.65 Mtok) and the remaining 91.35 Mtok move to other regions.
#[test]
fn interactive_demand_is_served_before_mining() {
    let site = spec(
        100.0,
        vec![asic("Antminer S21", 100)],
        vec![gpu("g", 10, 2.0, 10.0, 10_000.0)],
    );
    let cases = [
        (45e6, 45e6, 0.0, 50.0, 50.0),
        (180e6, 88.65e6, 91.35e6, 98.5, 1.5),
    ];
    for (demand, served, moved, gpu_kw, asic_kw) in cases {
        let p = plan_all(
            &site,
            vec![IntervalInputs {
                interactive_tokens: demand,
                ..at(30.0)
            }],
        );
        let i = &p.intervals[0];
        close(i.interactive_tokens, served, 1.0);
        close(i.interactive_moved_tokens, moved, 1.0);
        close(i.gpu_kw, gpu_kw, 1e-4);
        close(i.asic_kw, asic_kw, 1e-4);
        close(i.grid_kw, 100.0, 1e-4);
    }
}

/// A DR call of 60 kW: interactive keeps its 50 kW, the miners get the other 10, and the
/// payment is booked.
#[test]
fn a_dr_cap_sheds_mining_first_and_pays() {
    let site = spec(
        100.0,
        vec![asic("Antminer S21", 100)],
        vec![gpu("g", 10, 2.0, 10.0, 10_000.0)],
    );
    let x = IntervalInputs {
        interactive_tokens: 45e6,
        dr: Some(DrCall {
            cap_kw: 60.0,
            payment_usd: 500.0,
        }),
        ..at(30.0)
    };
    let p = plan_all(&site, vec![x]);
    let i = &p.intervals[0];
    close(i.grid_kw, 60.0, 1e-4);
    close(i.gpu_kw, 50.0, 1e-4);
    close(i.interactive_tokens, 45e6, 1.0);
    close(i.dr_payment_usd, 500.0, 1e-9);
    assert_eq!(i.dr_cap_kw, Some(60.0));
}

/// At −$20/MWh a load is paid to draw: miners at their highest profile (10 × 4,025 W) and
/// idle GPU nodes switched on (2 × 2 kW) — 44.25 kW, earning 44.25 × 0.25 / 1000 × 20 =
/// $0.22125.
#[test]
fn a_wind_night_pays_every_load() {
    let site = spec(
        1_000.0,
        vec![asic("Antminer S21", 10)],
        vec![gpu("g", 2, 2.0, 10.0, 10_000.0)],
    );
    let p = plan_all(&site, vec![at(-20.0)]);
    let i = &p.intervals[0];
    close(i.gpu_groups[0].nodes_on, 2.0, 1e-6);
    close(i.grid_kw, 44.25, 1e-4);
    close(i.energy_cost_usd, -0.22125, 1e-6);
}

/// 4CP at $100/kW: a sure peak interval costs $100 / 4 peaks = $25 per kW, far more than a
/// quarter hour of mining earns: the miners sleep and pay 25 × 1.5 kW = $37.5. With no chance
/// of a peak they mine.
#[test]
fn a_likely_coincident_peak_curtails() {
    let mut site = spec(1_000.0, vec![asic("Antminer S21", 100)], vec![]);
    site.coincident_peak = Some(CoincidentPeakSpec {
        peaks: 4,
        interval_minutes: 15,
        usd_per_kw: 100.0,
        windows: vec![],
    });
    let p = plan_all(
        &site,
        vec![
            IntervalInputs {
                peak_probability: 1.0,
                ..at(20.0)
            },
            at(20.0),
        ],
    );
    close(p.intervals[0].asic_kw, 1.5, 1e-6);
    close(p.intervals[0].peak_charge_usd, 37.5, 1e-6);
    close(p.intervals[1].asic_groups[0].units_hashing, 100.0, 1e-6);
    close(p.intervals[1].peak_charge_usd, 0.0, 1e-9);
}

/// At $72/MWh and $30/PH/day an S19 XP's best break-even is $69.8: our own S19s sleep, the
/// hosted ones (paid $75.8/MWh) run at their highest profile: 100 × 3,461.5 W = 346.15 kW,
/// earning 75.8 × 346.15 × 0.25 / 1000 = $6.5596.
#[test]
fn a_hosting_contract_runs_above_break_even() {
    let mut hosted = asic("Antminer S19 XP", 100);
    hosted.name = Some("hosted".into());
    hosted.hosting_usd_per_mwh = Some(75.8);
    let site = spec(10_000.0, vec![asic("Antminer S19 XP", 100), hosted], vec![]);
    let p = plan_all(
        &site,
        vec![IntervalInputs {
            hashprice_usd_per_ph_day: 30.0,
            ..at(72.0)
        }],
    );
    let i = &p.intervals[0];
    close(i.asic_groups[0].units_hashing, 0.0, 1e-6);
    close(i.asic_groups[1].kw, 346.15, 1e-3);
    close(i.hosting_revenue_usd, 6.5596, 1e-3);
    close(i.mining_revenue_usd, 0.0, 1e-9);
}

/// Batch work earns $0.2/Mtok: 9 Mtok on 2.5 kWh is $720/MWh. At $4,000 it waits; at $10 the
/// next interval serves it.
#[test]
fn batch_work_waits_out_a_spike() {
    let site = spec(1_000.0, vec![], vec![gpu("g", 10, 2.0, 10.0, 10_000.0)]);
    let p = plan_all(
        &site,
        vec![
            IntervalInputs {
                batch_tokens: 9e6,
                ..at(4_000.0)
            },
            at(10.0),
        ],
    );
    close(p.intervals[0].batch_tokens, 0.0, 1.0);
    close(p.intervals[0].batch_backlog_tokens, 9e6, 1.0);
    close(p.intervals[0].gpu_groups[0].nodes_on, 0.0, 1e-6);
    close(p.intervals[1].batch_tokens, 9e6, 1.0);
    close(p.totals.batch_backlog_tokens, 0.0, 1.0);
}

/// A fleet restoring over 30 minutes rises by half of 100 × (3,500 − 15) W each quarter hour:
/// 1.5 → 175.75 → 350 kW, then its highest profile, 402.5 kW.
#[test]
fn ramp_limits_stage_a_restore() {
    let mut group = asic("Antminer S21", 100);
    group.ramp_up_s = Some(1_800.0);
    let site = spec(1_000.0, vec![group], vec![]).check().unwrap();
    let state = SiteState {
        asic_kw: Some(vec![1.5]),
        batch_backlog_tokens: 0.0,
    };
    let p = optimum(&site, &timeline(vec![at(10.0); 3]), &state).unwrap();
    let kw: Vec<f64> = p.intervals.iter().map(|i| i.asic_kw).collect();
    close(kw[0], 175.75, 1e-4);
    close(kw[1], 350.0, 1e-4);
    close(kw[2], 402.5, 1e-4);
    assert_eq!(p.end_state.asic_kw.as_deref().map(<[f64]>::len), Some(1));
    // The baselines restore at the same pace.
    let b = baselines::always_mine(&site, &timeline(vec![at(10.0); 3]), &state).unwrap();
    let kw: Vec<f64> = b.intervals.iter().map(|i| i.asic_kw).collect();
    close(kw[0], 175.75, 1e-4);
    close(kw[1], 350.0, 1e-4);
    close(kw[2], 350.0, 1e-4);
}

/// The baselines on a mixed fleet at $100/MWh and $40/PH/day. Strike price: the S19 XPs'
/// nominal break-even is 40,000 / (24 × 21.5) = $77.5 — they sleep; the S21 XPs' is $123.5 —
/// they run. Always-mine under a 500 kW interconnect: the S21 XPs (most efficient) get their
/// 363 kW above sleep first, the S19 XPs the remaining 134 kW: 134 / 2.995 = 44.74 units.
#[test]
fn baselines_shed_the_least_efficient_first() {
    let site = spec(
        500.0,
        vec![asic("Antminer S19 XP", 100), asic("Antminer S21 XP", 100)],
        vec![],
    )
    .check()
    .unwrap();
    let t = timeline(vec![at(100.0)]);
    let s = SiteState::default();
    let strike = baselines::strike_price(&site, &t, &s).unwrap();
    close(strike.intervals[0].asic_groups[0].units_hashing, 0.0, 1e-9);
    close(
        strike.intervals[0].asic_groups[1].units_hashing,
        100.0,
        1e-9,
    );
    close(
        strike.intervals[0].asic_groups[1].watts_per_hashing_unit,
        3_645.0,
        1e-9,
    );
    let always = baselines::always_mine(&site, &t, &s).unwrap();
    close(
        always.intervals[0].asic_groups[1].units_hashing,
        100.0,
        1e-9,
    );
    close(
        always.intervals[0].asic_groups[0].units_hashing,
        134.0 / 2.995,
        1e-6,
    );
    close(always.intervals[0].grid_kw, 500.0, 1e-6);
    // The planner does better than both: it underclocks instead.
    let best = optimum(&site, &t, &s).unwrap();
    assert!(best.totals.margin_usd > strike.totals.margin_usd);
    assert!(strike.totals.margin_usd > always.totals.margin_usd);
}

/// A static split of 50 % on a 100 kW site: GPUs keep 50 kW even when idle, the miners get the
/// other 50 whatever the price; interactive demand above the share still comes first.
#[test]
fn a_static_split_keeps_its_shares() {
    let mut s = spec(
        100.0,
        vec![asic("Antminer S21", 100)],
        vec![gpu("g", 10, 2.0, 10.0, 10_000.0)],
    );
    s.baselines.static_gpu_share = Some(0.5);
    let site = s.check().unwrap();
    let t = timeline(vec![
        at(30.0),
        IntervalInputs {
            interactive_tokens: 63e6,
            ..at(30.0)
        },
    ]);
    let p = baselines::static_split(&site, &t, &SiteState::default()).unwrap();
    close(p.intervals[0].gpu_kw, 0.0, 1e-9);
    close(p.intervals[0].asic_kw, 50.0, 1e-9);
    close(p.intervals[1].gpu_kw, 70.0, 1e-6);
    close(p.intervals[1].asic_kw, 30.0, 1e-6);
}

#[test]
fn rolling_over_a_full_horizon_is_the_optimum() {
    let site = spec(
        300.0,
        vec![asic("Antminer S21", 50), asic("Antminer S19 XP", 50)],
        vec![gpu("g", 4, 2.0, 10.0, 10_000.0)],
    )
    .check()
    .unwrap();
    let prices = [20.0, 80.0, 400.0, -5.0, 60.0, 95.0, 30.0, 2_000.0];
    let t = timeline(
        prices
            .iter()
            .map(|&p| IntervalInputs {
                interactive_tokens: 10e6,
                batch_tokens: 5e6,
                ..at(p)
            })
            .collect(),
    );
    let s = SiteState::default();
    let best = optimum(&site, &t, &s).unwrap();
    let rolled = plan_rolling(&site, &t, &s, 8, 8).unwrap();
    close(rolled.totals.margin_usd, best.totals.margin_usd, 1e-6);
    let short = plan_rolling(&site, &t, &s, 3, 1).unwrap();
    assert_eq!(short.intervals.len(), 8);
    assert!(short.totals.margin_usd <= best.totals.margin_usd + 1e-6);
    let first = plan(&site, &t, &s, 3).unwrap();
    assert_eq!(first.intervals.len(), 3);
}

// === bad input ===

#[test]
fn bad_sites_name_the_field() {
    let good = || {
        spec(
            100.0,
            vec![asic("Antminer S21", 10)],
            vec![gpu("g", 1, 1.0, 2.0, 100.0)],
        )
    };
    type Edit = fn(&mut SiteSpec);
    let cases: &[(Edit, &str)] = &[
        (|s| s.interconnect_kw = 0.0, "interconnect_kw"),
        (|s| s.interconnect_kw = f64::NAN, "interconnect_kw"),
        (|s| s.pue = 0.95, "pue"),
        (|s| s.name = " ".into(), "name"),
        (
            |s| {
                s.asic_groups.clear();
                s.gpu_groups.clear();
            },
            "asic_groups, gpu_groups",
        ),
        (
            |s| s.asic_groups[0].model = "Antminer S9".into(),
            "asic_groups[0].model",
        ),
        (|s| s.asic_groups[0].units = 0, "asic_groups[0].units"),
        (
            |s| s.asic_groups[0].ramp_up_s = Some(0.0),
            "asic_groups[0].ramp_up_s",
        ),
        (
            |s| s.asic_groups[0].hosting_usd_per_mwh = Some(-1.0),
            "asic_groups[0].hosting_usd_per_mwh",
        ),
        (|s| s.gpu_groups[0].idle_kw = 3.0, "gpu_groups[0].idle_kw"),
        (
            |s| s.gpu_groups[0].tokens_per_s = 0.0,
            "gpu_groups[0].tokens_per_s",
        ),
        (|s| s.gpu_groups[0].name = "Antminer S21".into(), "groups"),
        (|s| s.curve_segments = 0, "curve_segments"),
        (
            |s| s.inference.batch_usd_per_mtok = f64::INFINITY,
            "inference.batch_usd_per_mtok",
        ),
        (
            |s| s.demand.hourly_profile = Some(vec![1.0; 23]),
            "demand.hourly_profile",
        ),
        (
            |s| s.baselines.static_gpu_share = Some(1.5),
            "baselines.static_gpu_share",
        ),
        (
            |s| {
                s.coincident_peak = Some(CoincidentPeakSpec {
                    peaks: 4,
                    interval_minutes: 7,
                    usd_per_kw: 100.0,
                    windows: vec![],
                })
            },
            "coincident_peak.interval_minutes",
        ),
        (
            |s| {
                s.coincident_peak = Some(CoincidentPeakSpec {
                    peaks: 4,
                    interval_minutes: 15,
                    usd_per_kw: 100.0,
                    windows: vec![PeakWindow {
                        months: vec![13],
                        hours: vec![17],
                        probability: 0.2,
                    }],
                })
            },
            "coincident_peak.windows[0].months",
        ),
        (
            |s| {
                s.coincident_peak = Some(CoincidentPeakSpec {
                    peaks: 4,
                    interval_minutes: 15,
                    usd_per_kw: 100.0,
                    windows: vec![PeakWindow {
                        months: vec![6, 7, 8, 9],
                        hours: vec![16, 17],
                        probability: 0.1,
                    }],
                })
            },
            "coincident_peak.windows",
        ),
        (
            |s| {
                s.dr_events = vec![DrEventSpec {
                    start: "tomorrow".into(),
                    minutes: 30,
                    cap_kw: 10.0,
                    payment_usd: 0.0,
                }]
            },
            "dr_events[0].start",
        ),
        (
            |s| {
                let e = DrEventSpec {
                    start: "2024-08-20T20:00:00Z".into(),
                    minutes: 30,
                    cap_kw: 10.0,
                    payment_usd: 0.0,
                };
                let mut later = e.clone();
                later.start = "2024-08-20T20:15:00Z".into();
                s.dr_events = vec![e, later];
            },
            "dr_events[1].start",
        ),
    ];
    assert!(good().check().is_ok());
    for (edit, field) in cases {
        let mut s = good();
        edit(&mut s);
        match s.check() {
            Err(PlanError::InvalidSite { field: f, .. }) => assert_eq!(f, *field),
            other => panic!("{field}: {other:?}"),
        }
    }
}

#[test]
fn bad_inputs_and_impossible_plans_are_errors() {
    let site = spec(100.0, vec![asic("Antminer S21", 100)], vec![])
        .check()
        .unwrap();
    let s = SiteState::default();
    let bad_inputs: &[(IntervalInputs, &str)] = &[
        (at(f64::NAN), "usd_per_mwh"),
        (at(5_001.0), "usd_per_mwh"),
        (
            IntervalInputs {
                interactive_tokens: -1.0,
                ..at(1.0)
            },
            "interactive_tokens",
        ),
        (
            IntervalInputs {
                hashprice_usd_per_ph_day: f64::INFINITY,
                ..at(1.0)
            },
            "hashprice_usd_per_ph_day",
        ),
        (
            IntervalInputs {
                peak_probability: 1.5,
                ..at(1.0)
            },
            "peak_probability",
        ),
        (
            IntervalInputs {
                dr: Some(DrCall {
                    cap_kw: 0.0,
                    payment_usd: 1.0,
                }),
                ..at(1.0)
            },
            "dr.cap_kw",
        ),
    ];
    for (x, field) in bad_inputs {
        match Timeline::new(0, IntervalLength::FiveMinutes, vec![at(1.0), *x]) {
            Err(PlanError::InvalidInput {
                index: 1, field: f, ..
            }) => assert_eq!(f, *field),
            other => panic!("{field}: {other:?}"),
        }
    }
    assert_eq!(
        Timeline::new(0, IntervalLength::FiveMinutes, vec![]),
        Err(PlanError::EmptyTimeline)
    );
    let t = timeline(vec![at(10.0); 4]);
    assert_eq!(plan(&site, &t, &s, 0), Err(PlanError::ZeroHorizon));
    assert_eq!(
        plan_rolling(&site, &t, &s, 4, 0),
        Err(PlanError::BadStep {
            step: 0,
            horizon: 4
        })
    );
    assert_eq!(
        plan_rolling(&site, &t, &s, 2, 3),
        Err(PlanError::BadStep {
            step: 3,
            horizon: 2
        })
    );
    // A DR cap below the sleeping fleet's 1.5 kW cannot be met: an error, not a plan.
    let capped = timeline(vec![
        at(10.0),
        IntervalInputs {
            dr: Some(DrCall {
                cap_kw: 1.0,
                payment_usd: 100.0,
            }),
            ..at(10.0)
        },
    ]);
    for result in [
        optimum(&site, &capped, &s),
        plan_rolling(&site, &capped, &s, 2, 1),
        baselines::always_mine(&site, &capped, &s),
        baselines::strike_price(&site, &capped, &s),
        baselines::static_split(&site, &capped, &s),
    ] {
        assert!(
            matches!(result, Err(PlanError::BelowFloor { index: 1, .. })),
            "{result:?}"
        );
    }
    let states = [
        SiteState {
            asic_kw: Some(vec![]),
            batch_backlog_tokens: 0.0,
        },
        SiteState {
            asic_kw: Some(vec![1e6]),
            batch_backlog_tokens: 0.0,
        },
        SiteState {
            asic_kw: None,
            batch_backlog_tokens: f64::NAN,
        },
    ];
    for state in states {
        assert!(
            matches!(
                optimum(&site, &t, &state),
                Err(PlanError::InvalidState { .. })
            ),
            "{state:?}"
        );
    }
    let mut cp = spec(100.0, vec![asic("Antminer S21", 100)], vec![]);
    cp.coincident_peak = Some(CoincidentPeakSpec {
        peaks: 4,
        interval_minutes: 5,
        usd_per_kw: 100.0,
        windows: vec![],
    });
    assert_eq!(
        optimum(&cp.check().unwrap(), &t, &s),
        Err(PlanError::PeakInterval {
            peak_minutes: 5,
            interval_minutes: 15
        })
    );
}

// === the site file ===

const SITE_TOML: &str = r#"
name = "georgia-1"
interconnect_kw = 2000
pue = 1.05
utc_offset_hours = -5

[[asic_groups]]
model = "Antminer S21"
units = 300

[[asic_groups]]
name = "hosted"
model = "Antminer S19 XP"
units = 100
hosting_usd_per_mwh = 75.8

[[gpu_groups]]
name = "h100"
nodes = 4
idle_kw = 2.0
max_kw = 10.2
tokens_per_s = 40000

[inference]
interactive_usd_per_mtok = 0.4
batch_usd_per_mtok = 0.2

[demand]
interactive_tokens_per_s = 50000
batch_tokens_per_s = 20000
hourly_profile = [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 1, 1, 1, 1, 1]

[bitcoin]
btc_usd = 68500
difficulty = 144.4e12
fees_btc_per_block = 0.02

[coincident_peak]
peaks = 4
interval_minutes = 15
usd_per_kw = 100
windows = [{ months = [6, 7, 8, 9], hours = [16, 17], probability = 0.004 }]

[[dr_events]]
start = "2024-08-20T17:00:00-05:00"
minutes = 30
cap_kw = 500
payment_usd = 1000

[baselines]
strike_usd_per_mwh = 90
"#;

#[test]
fn a_site_file_builds_a_timeline() {
    let spec: SiteSpec = toml::from_str(SITE_TOML).unwrap();
    let site = spec.check().unwrap();
    // 2024-08-20T16:00:00-05:00, 12 quarter hours.
    let start = 1_724_187_600;
    let prices = PriceSeries::fixed(start, IntervalLength::FifteenMinutes, 30.0, 12).unwrap();
    let t = site.timeline(&prices, None).unwrap();
    let x = t.intervals();
    // 16:00 and 17:00 local in August are likely peaks; 18:00 is not.
    assert_eq!(x[0].peak_probability, 0.004);
    assert_eq!(x[7].peak_probability, 0.004);
    assert_eq!(x[8].peak_probability, 0.0);
    // The DR event covers 17:00–17:30: intervals 4 and 5, half the payment each.
    let dr: Vec<Option<DrCall>> = x.iter().map(|i| i.dr).collect();
    assert_eq!(dr[3], None);
    assert_eq!(
        dr[4],
        Some(DrCall {
            cap_kw: 500.0,
            payment_usd: 500.0
        })
    );
    assert_eq!(dr[5], dr[4]);
    assert_eq!(dr[6], None);
    // 50,000 tok/s × 900 s, doubled at 17:00 local.
    close(x[0].interactive_tokens, 45e6, 1e-6);
    close(x[4].interactive_tokens, 90e6, 1e-6);
    close(x[0].batch_tokens, 18e6, 1e-6);
    close(x[0].hashprice_usd_per_ph_day, 30.0, 1.0);
    let b = backtest(&site, &t, &SiteState::default(), 4, 1).unwrap();
    for p in [
        &b.planner,
        &b.optimum,
        &b.always_mine,
        &b.strike_price,
        &b.static_split,
    ] {
        assert!(p.intervals[4].grid_kw.max(p.intervals[5].grid_kw) <= 500.0 + 1e-6);
        close(p.intervals[4].dr_payment_usd, 500.0, 1e-9);
    }
    // Always-mine fills the cap; the planner, facing a likely peak, sheds more.
    close(b.always_mine.intervals[4].grid_kw, 500.0, 1e-6);
    assert!(b.planner.intervals[4].grid_kw < 100.0);
    assert!(b.optimum.totals.margin_usd + 1e-6 >= b.strike_price.totals.margin_usd);
    let json = serde_json::to_value(&b).unwrap();
    assert!(json["optimum"]["totals"]["margin_usd"].is_number());
    assert!(toml::from_str::<SiteSpec>("name = \"x\"\ninterconnect_kw = 1\nsurprise = 2").is_err());
}

#[test]
fn a_mining_site_without_a_bitcoin_market_is_an_error() {
    let site = spec(100.0, vec![asic("Antminer S21", 1)], vec![])
        .check()
        .unwrap();
    let prices = PriceSeries::fixed(0, IntervalLength::FiveMinutes, 30.0, 2).unwrap();
    assert!(matches!(
        site.timeline(&prices, None),
        Err(PlanError::InvalidSite { .. })
    ));
}

// === properties ===

/// Random sites: 1–3 ASIC groups of FACTS.md's models, 0–2 GPU groups with inference worth
/// more per kWh than mining (FACTS.md's economics), optionally coincident peaks.
fn arb_site() -> impl Strategy<Value = SiteSpec> {
    let asics = prop::collection::vec(
        (
            0..ASIC_MODELS.len(),
            1u32..300,
            prop::option::weighted(0.2, 40.0..120.0f64),
        ),
        1..=3,
    );
    let gpus = prop::collection::vec(
        (1u32..12, 0.5..3.0f64, 3.0..10.0f64, 2_000.0..40_000.0f64),
        0..=2,
    );
    (
        asics,
        gpus,
        200.0..2_000.0f64,
        1.0..1.4f64,
        0.05..1.0f64,
        0.02..0.5f64,
        prop::option::of(50.0..150.0f64),
    )
        .prop_map(|(asics, gpus, interconnect, pue, interactive, batch, cp)| {
            let mut s = spec(
                interconnect,
                asics
                    .into_iter()
                    .enumerate()
                    .map(|(i, (m, units, hosting))| AsicGroupSpec {
                        name: Some(format!("a{i}")),
                        model: ASIC_MODELS[m].name.into(),
                        units,
                        ramp_up_s: None,
                        hosting_usd_per_mwh: hosting,
                    })
                    .collect(),
                gpus.into_iter()
                    .enumerate()
                    .map(|(i, (nodes, idle, max, tps))| {
                        gpu(&format!("g{i}"), nodes, idle, idle + max, tps)
                    })
                    .collect(),
            );
            s.pue = pue;
            s.inference = InferencePrices {
                interactive_usd_per_mtok: interactive,
                batch_usd_per_mtok: batch,
            };
            s.coincident_peak = cp.map(|usd_per_kw| CoincidentPeakSpec {
                peaks: 4,
                interval_minutes: 15,
                usd_per_kw,
                windows: vec![],
            });
            s
        })
}

/// A price: mostly ordinary, sometimes negative, sometimes a spike up to the cap.
fn arb_price() -> impl Strategy<Value = f64> {
    prop_oneof![
        6 => 0.0..120.0f64,
        1 => -60.0..0.0f64,
        1 => 120.0..5_000.0f64,
    ]
}

/// Random intervals for a site whose sleeping fleet draws `floor_kw` at the meter: demand up
/// to a few GPU nodes' worth, DR caps above the floor, peak odds.
fn arb_intervals(
    floor_kw: f64,
    len: std::ops::Range<usize>,
) -> impl Strategy<Value = Vec<IntervalInputs>> {
    prop::collection::vec(
        (
            arb_price(),
            20.0..60.0f64,
            0.0..400e6f64,
            0.0..200e6f64,
            prop::option::weighted(0.15, (0.0..1_000.0f64, 0.0..500.0f64)),
            prop::option::weighted(0.2, 0.0..1.0f64),
        )
            .prop_map(
                move |(price, hp, interactive, batch, dr, peak)| IntervalInputs {
                    usd_per_mwh: price,
                    hashprice_usd_per_ph_day: hp,
                    interactive_tokens: interactive,
                    batch_tokens: batch,
                    dr: dr.map(|(above, payment)| DrCall {
                        cap_kw: floor_kw + above,
                        payment_usd: payment,
                    }),
                    peak_probability: peak.unwrap_or(0.0),
                },
            ),
        len,
    )
}

fn arb_case(len: std::ops::Range<usize>) -> impl Strategy<Value = (Site, Timeline)> {
    arb_site().prop_flat_map(move |s| {
        let site = s.check().unwrap();
        let floor = site.floor_it_kw() * site.pue() * 1.001;
        arb_intervals(floor, len.clone()).prop_map(move |xs| (site.clone(), timeline(xs)))
    })
}

/// Checks the rules every policy obeys; `planner` adds the planner's own.
fn check_rules(
    site: &Site,
    t: &Timeline,
    p: &SitePlan,
    planner: bool,
) -> Result<(), TestCaseError> {
    let floors = lp::asic_floors(site, t, t.len(), &SiteState::default());
    for (i, x) in p.intervals.iter().zip(t.intervals()) {
        let k = i.index;
        let limit = lp::limit_kw(site, x);
        prop_assert!(
            i.grid_kw <= limit * (1.0 + 1e-7) + 1e-6,
            "{k}: {} kW above {limit}",
            i.grid_kw
        );
        prop_assert!(i.grid_kw <= site.interconnect_kw() * (1.0 + 1e-7) + 1e-6);
        // The SLO: as much interactive demand as fits with the miners asleep.
        let target = lp::interactive_target(site, t, x, floors[k].iter().sum()) * 1e6;
        prop_assert!(
            i.interactive_tokens >= target * (1.0 - 1e-6) - 1.0,
            "{k}: served {} of a target {target}",
            i.interactive_tokens
        );
        prop_assert!(i.interactive_tokens <= x.interactive_tokens * (1.0 + 1e-9) + 1.0);
        if planner {
            for (g, a) in site.asic_groups().iter().zip(&i.asic_groups) {
                if g.hosting_usd_per_mwh().is_none() && a.units_hashing > 1e-6 {
                    let be = g.break_even_usd_per_mwh(x.hashprice_usd_per_ph_day);
                    prop_assert!(
                        x.usd_per_mwh <= be + 1e-6,
                        "{k}: {} hashes at {} $/MWh, above its break-even {be}",
                        g.name(),
                        x.usd_per_mwh
                    );
                }
            }
        }
    }
    Ok(())
}

/// Margins compare up to the solver's tolerance, relative to the money moved.
fn slack(p: &SitePlan) -> f64 {
    let t = &p.totals;
    1e-6 * (t.mining_revenue_usd.abs()
        + t.hosting_revenue_usd.abs()
        + t.inference_revenue_usd.abs()
        + t.energy_cost_usd.abs()
        + t.peak_charge_usd.abs()
        + t.dr_payment_usd.abs())
        + 1e-6
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn every_policy_keeps_the_rules_and_the_optimum_wins((site, t) in arb_case(1..16)) {
        let s = SiteState::default();
        let best = optimum(&site, &t, &s).unwrap();
        let rolled = plan_rolling(&site, &t, &s, 4, 1).unwrap();
        check_rules(&site, &t, &best, true)?;
        check_rules(&site, &t, &rolled, true)?;
        prop_assert!(rolled.totals.margin_usd <= best.totals.margin_usd + slack(&best));
        for (name, b) in [
            ("always_mine", baselines::always_mine(&site, &t, &s).unwrap()),
            ("strike_price", baselines::strike_price(&site, &t, &s).unwrap()),
            ("static_split", baselines::static_split(&site, &t, &s).unwrap()),
        ] {
            check_rules(&site, &t, &b, false)?;
            prop_assert!(
                b.totals.margin_usd <= best.totals.margin_usd + slack(&best),
                "{name} {} above the optimum {}", b.totals.margin_usd, best.totals.margin_usd
            );
            prop_assert!(
                b.totals.margin_usd <= rolled.totals.margin_usd + slack(&rolled),
                "{name} {} above the planner {}", b.totals.margin_usd, rolled.totals.margin_usd
            );
        }
    }

    #[test]
    fn ramps_hold_from_any_state(
        (site, t) in arb_case(2..10),
        ramp_s in prop::collection::vec(300.0..3_600.0f64, 3),
        start in prop::collection::vec(0.0..1.0f64, 3),
    ) {
        let mut spec = site.spec().clone();
        for (g, r) in spec.asic_groups.iter_mut().zip(&ramp_s) {
            g.ramp_up_s = Some(*r);
        }
        let site = spec.check().unwrap();
        let state = SiteState {
            asic_kw: Some(
                site.asic_groups().iter().zip(&start).map(|(g, f)| g.max_kw() * f).collect(),
            ),
            batch_backlog_tokens: 0.0,
        };
        let plans = [
            optimum(&site, &t, &state).unwrap(),
            plan_rolling(&site, &t, &state, 3, 2).unwrap(),
            baselines::always_mine(&site, &t, &state).unwrap(),
            baselines::strike_price(&site, &t, &state).unwrap(),
        ];
        for p in &plans {
            let mut prev = state.asic_kw.clone().unwrap();
            for i in &p.intervals {
                let groups = site.asic_groups().iter().zip(&i.asic_groups);
                for ((g, a), before) in groups.zip(&mut prev) {
                    let up = g.ramp_up_kw(t.interval());
                    let down = g.ramp_down_kw(t.interval());
                    // A group can always sleep, whatever it drew before.
                    let from = before.max(g.sleep_kw());
                    prop_assert!(
                        a.kw - from <= up * (1.0 + 1e-6) + 1e-6,
                        "{}: up {} > {up}", i.index, a.kw - from
                    );
                    prop_assert!(*before - a.kw <= down * (1.0 + 1e-6) + 1e-6);
                    *before = a.kw;
                }
            }
            prop_assert!(p.totals.margin_usd.is_finite());
        }
    }

    /// Longer runs, restores staged by binding ramp limits, short horizons: the rolling planner
    /// still stays under the optimum and ahead of every baseline.
    #[test]
    fn the_rolling_planner_beats_the_baselines(
        (site, t) in arb_case(16..40),
        horizon in 2usize..10,
        step in 1usize..4,
        ramp_s in 300.0..3_600.0f64,
    ) {
        let mut spec = site.spec().clone();
        for g in &mut spec.asic_groups {
            g.ramp_up_s = Some(ramp_s);
        }
        let site = spec.check().unwrap();
        let s = SiteState::default();
        let best = optimum(&site, &t, &s).unwrap();
        let rolled = plan_rolling(&site, &t, &s, horizon, step.min(horizon)).unwrap();
        // Binding ramps may make the planner hash ahead of a cheap interval, so the
        // break-even rule is not checked here.
        check_rules(&site, &t, &rolled, false)?;
        prop_assert!(rolled.totals.margin_usd <= best.totals.margin_usd + slack(&best));
        for (name, b) in [
            ("always_mine", baselines::always_mine(&site, &t, &s).unwrap()),
            ("strike_price", baselines::strike_price(&site, &t, &s).unwrap()),
            ("static_split", baselines::static_split(&site, &t, &s).unwrap()),
        ] {
            prop_assert!(
                b.totals.margin_usd <= rolled.totals.margin_usd + slack(&rolled),
                "{name} {} above the planner {}", b.totals.margin_usd, rolled.totals.margin_usd
            );
        }
    }

    #[test]
    fn the_checked_curve_matches_the_model(m in 0..ASIC_MODELS.len(), f in 0.0..1.0f64) {
        let model = &ASIC_MODELS[m];
        let site = spec(1.0, vec![asic(model.name, 1)], vec![]).check().unwrap();
        let g = &site.asic_groups()[0];
        let w = model.min_w + f * (model.max_w - model.min_w);
        // The piecewise-linear curve lies under the concave one, within 0.3 %.
        let pwl = g.hashrate_ths(w, 1.0);
        let exact = model.hashrate_ths(w);
        prop_assert!(pwl <= exact * (1.0 + 1e-12));
        prop_assert!(pwl >= exact * 0.997, "{pwl} vs {exact}");
        prop_assert!(asic_model(model.name).is_some());
    }
}

/// A site of 3 ASIC groups and 2 GPU groups over 96 intervals — the size the control plane
/// solves every interval — plans (the solve time is for benchmarks, not asserted here).
#[test]
fn a_day_of_a_mixed_site_plans() {
    let site = spec(
        5_000.0,
        vec![
            asic("Antminer S19 XP", 300),
            asic("Antminer S21", 400),
            asic("Antminer S21 XP", 300),
        ],
        vec![
            gpu("h100", 8, 2.0, 10.2, 40_000.0),
            gpu("l40s", 4, 0.5, 3.0, 8_000.0),
        ],
    )
    .check()
    .unwrap();
    let prices = crate::market::SyntheticPrices::with_seed(4)
        .generate(1_718_000_000, IntervalLength::FifteenMinutes, 96)
        .unwrap();
    let t = Timeline::new(
        prices.start_unix_s(),
        prices.interval(),
        prices
            .prices()
            .iter()
            .enumerate()
            .map(|(k, &p)| IntervalInputs {
                interactive_tokens: 100e6 * (1.0 + (k as f64 / 15.0).sin()),
                batch_tokens: 50e6,
                ..at(p)
            })
            .collect(),
    )
    .unwrap();
    let p = plan(&site, &t, &SiteState::default(), 96).unwrap();
    assert_eq!(p.intervals.len(), 96);
    assert!(
        p.totals.margin_usd
            > baselines::always_mine(&site, &t, &SiteState::default())
                .unwrap()
                .totals
                .margin_usd
    );
}

// === live: the plan for the interval at hand, as whole miners ===

mod live_plan {
    use super::*;
    use crate::market::NetworkSpec;
    use crate::planner::live::{LiveInputs, plan_now};

    /// A market with hashprice well above a cheap tariff's cost of hashing.
    fn rich() -> NetworkSpec {
        NetworkSpec {
            btc_usd: 100_000.0,
            difficulty: 1.0e14,
            subsidy_btc: 3.125,
            fees_btc_per_block: 0.0,
        }
    }

    fn inputs(usd_per_mwh: f64) -> LiveInputs {
        LiveInputs {
            // 10:07:30 UTC on 2026-12-03: the 15-minute interval from 10:00.
            now_unix_s: 1_796_292_450,
            interval: IntervalLength::FifteenMinutes,
            horizon: 8,
            tariff_usd_per_mwh: usd_per_mwh,
            prices: vec![],
            bitcoin: Some(rich()),
            dr_events: vec![],
            asic_kw_now: None,
            demand: None,
        }
    }

    fn site() -> SiteSpec {
        spec(1_000.0, vec![asic(ASIC_MODELS[0].name, 50)], vec![])
    }

    #[test]
    fn a_cheap_tariff_hashes_every_miner_within_the_interval_at_hand() {
        let live = plan_now(&site(), &inputs(20.0)).unwrap();
        assert_eq!(live.starts_at_unix_s, 1_796_292_000);
        assert_eq!(live.ends_at_unix_s - live.starts_at_unix_s, 900);
        assert_eq!(live.asic.len(), 1);
        assert_eq!(live.asic[0].units, 50);
        assert_eq!(live.asic[0].units_hashing, 50);
        assert!(live.asic[0].watts_per_unit > 0.0);
        assert!(live.expected_meter_kw <= 1_000.0 + 1e-6);
    }

    #[test]
    fn a_tariff_above_break_even_puts_every_miner_to_sleep() {
        let live = plan_now(&site(), &inputs(4_000.0)).unwrap();
        assert_eq!(live.asic[0].units_hashing, 0);
        assert_eq!(live.asic[0].watts_per_unit, 0.0);
        let model = asic_model(ASIC_MODELS[0].name).unwrap();
        close(live.expected_meter_kw, 50.0 * model.sleep_w / 1_000.0, 1e-9);
    }

    #[test]
    fn whole_miners_never_draw_more_than_a_dr_cap_allows() {
        let model = asic_model(ASIC_MODELS[0].name).unwrap();
        // A cap that fits 20.5 units at their lowest profile: 20 hash, none above the cap.
        let cap_kw = (20.5 * model.min_w + 29.5 * model.sleep_w) / 1_000.0;
        let mut i = inputs(20.0);
        i.dr_events = vec![DrEventSpec {
            start: "2026-12-03T10:00:00Z".into(),
            minutes: 15,
            cap_kw,
            payment_usd: 0.0,
        }];
        let live = plan_now(&site(), &i).unwrap();
        assert!(live.asic[0].units_hashing <= 20, "{:?}", live.asic);
        assert!(live.expected_meter_kw <= cap_kw + 1e-6);
        assert_eq!(live.interval.dr_cap_kw, Some(cap_kw));
    }

    #[test]
    fn imported_prices_rule_where_they_reach_and_the_tariff_after() {
        use crate::market::{PricePoint, horizon_prices};
        // A spike imported for the interval at hand: every miner sleeps despite a cheap
        // tariff, and the plan says which price it used.
        let mut i = inputs(20.0);
        i.prices = vec![PricePoint {
            start_unix_s: 1_796_292_000,
            interval: IntervalLength::FifteenMinutes,
            usd_per_mwh: 4_000.0,
        }];
        let live = plan_now(&site(), &i).unwrap();
        assert_eq!(live.asic[0].units_hashing, 0);
        assert_eq!(live.interval.usd_per_mwh, 4_000.0);
        assert_eq!(live.price_coverage.from_series_s, 900);
        assert_eq!(live.price_coverage.from_tariff_s, 7 * 900);
        // The same spike an interval later leaves the interval at hand to the tariff.
        i.prices[0].start_unix_s += 900;
        let live = plan_now(&site(), &i).unwrap();
        assert_eq!(live.asic[0].units_hashing, 50);
        assert_eq!(live.interval.usd_per_mwh, 20.0);
        let (series, _) = horizon_prices(
            &i.prices,
            20.0,
            1_796_292_000,
            IntervalLength::FifteenMinutes,
            2,
        )
        .unwrap();
        assert_eq!(series.prices(), &[20.0, 4_000.0]);
    }

    #[test]
    fn the_demand_the_gateways_saw_replaces_the_forecast_and_gpus_serve_it_first() {
        use crate::planner::demand::{ObservedDemand, RegionUsage};
        use crate::planner::model::GpuGroupSpec;
        let mut s = site();
        s.gpu_groups = vec![GpuGroupSpec {
            name: "gpu".into(),
            nodes: 10,
            idle_kw: 1.0,
            max_kw: 5.0,
            tokens_per_s: 1_000.0,
        }];
        // The forecast says no demand: the GPUs idle.
        let idle = plan_now(&s, &inputs(20.0)).unwrap();
        assert!(idle.interval.interactive_demand_tokens.abs() < 1e-9);
        // The region served 3,000 interactive tokens a second at $4/M; this site is half of it.
        let mut i = inputs(20.0);
        i.demand = Some(ObservedDemand {
            region: RegionUsage {
                window_s: 3_600.0,
                interactive_tokens: 3_000 * 3_600,
                interactive_revenue_usd: 4.0 * 3_000.0 * 3_600.0 / 1e6,
                batch_tokens: 0,
                batch_revenue_usd: 0.0,
            },
            share: 0.5,
        });
        let busy = plan_now(&s, &i).unwrap();
        close(
            busy.interval.interactive_demand_tokens,
            1_500.0 * 900.0,
            1e-6,
        );
        close(busy.interval.interactive_tokens, 1_500.0 * 900.0, 1e-3);
        assert!(
            busy.gpu[0].kw > idle.gpu[0].kw,
            "{:?} vs {:?}",
            busy.gpu,
            idle.gpu
        );
        assert!(busy.interval.inference_revenue_usd > 0.0);
    }

    #[test]
    fn bad_live_inputs_are_errors_not_plans() {
        let mut zero = inputs(20.0);
        zero.horizon = 0;
        assert_eq!(plan_now(&site(), &zero), Err(PlanError::ZeroHorizon));
        for price in [f64::NAN, f64::INFINITY, 1.0e9] {
            assert!(matches!(
                plan_now(&site(), &inputs(price)),
                Err(PlanError::InvalidInput {
                    field: "usd_per_mwh",
                    ..
                })
            ));
        }
        let mut no_market = inputs(20.0);
        no_market.bitcoin = None;
        assert!(matches!(
            plan_now(&site(), &no_market),
            Err(PlanError::InvalidSite { .. })
        ));
        let mut drawn = inputs(20.0);
        drawn.asic_kw_now = Some(f64::NAN);
        assert!(plan_now(&site(), &drawn).is_err());
    }
}
