//! Applying the live power plan to the site's miners: which miners hash at which power target
//! and which sleep, and what the report to the control plane says. Pure; the executor (`dr`)
//! runs the fleet operations.
//!
//! The power model's ASIC groups are filled by the agent's miner list in order: the first
//! `units` miners are the first group, and so on; within a group the first `units_hashing`
//! hash. A model whose groups do not add up to the agent's miners is not applied at all (a
//! plan for other machines would be a wrong plan); it is reported as failed.

use std::net::SocketAddr;

use wattmesh_miner::fleet::{FleetReport, PowerReport};
use wattmesh_proto::plan::{PlanDirective, PlanOutcome, PlanReport};

use super::gpu::GpuOutcome;

/// Most problem lines a report carries per cause; the rest are counted.
const MAX_PROBLEMS: usize = 5;

/// Which miners do what under a plan.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Assignment {
    /// Miners to hash, by power target (W): one entry per group with units hashing.
    pub hash: Vec<(f64, Vec<SocketAddr>)>,
    pub sleep: Vec<SocketAddr>,
}

impl Assignment {
    /// Every miner to hash, in order.
    pub fn hashing(&self) -> Vec<SocketAddr> {
        self.hash
            .iter()
            .flat_map(|(_, m)| m.iter().copied())
            .collect()
    }
}

/// Splits `miners` by `plan`; an error says why the plan does not fit this site's miners.
pub(crate) fn assign(miners: &[SocketAddr], plan: &PlanDirective) -> Result<Assignment, String> {
    let units: u64 = plan.asic_groups.iter().map(|g| u64::from(g.units)).sum();
    if units != miners.len() as u64 {
        return Err(format!(
            "the site's power model has {units} miners in its ASIC groups, but this agent drives {}",
            miners.len()
        ));
    }
    let mut rest = miners;
    let mut out = Assignment {
        hash: Vec::new(),
        sleep: Vec::new(),
    };
    for g in &plan.asic_groups {
        if g.units_hashing > g.units {
            return Err(format!(
                "group {}: {} of {} units to hash",
                g.name, g.units_hashing, g.units
            ));
        }
        let (group, after) = rest.split_at(g.units as usize);
        rest = after;
        let (hash, sleep) = group.split_at(g.units_hashing as usize);
        if !hash.is_empty() {
            if !(g.watts_per_unit.is_finite() && g.watts_per_unit > 0.0) {
                return Err(format!(
                    "group {}: a power target of {} W per unit",
                    g.name, g.watts_per_unit
                ));
            }
            out.hash.push((g.watts_per_unit, hash.to_vec()));
        }
        out.sleep.extend_from_slice(sleep);
    }
    Ok(out)
}

/// What was done for a plan, to be reported. Miners already in the state the plan asks for
/// are not commanded again (a plan repeated every interval must not churn LuxOS sessions).
#[derive(Debug, Default)]
pub(crate) struct Applied {
    pub slept: Option<FleetReport>,
    pub woke: Option<FleetReport>,
    /// One per power target.
    pub powered: Vec<PowerReport>,
    /// Asleep by their telemetry before anything was commanded.
    pub already_asleep: usize,
    /// Hashing by their telemetry before anything was commanded (given a new target).
    pub already_awake: Vec<SocketAddr>,
    /// Hashing, at the target last confirmed for them: left alone.
    pub kept_miners: Vec<SocketAddr>,
    /// An operation that could not start, or the plan not fitting the miners.
    pub refused: Option<String>,
    /// The GPU caps set on this host.
    pub gpu: GpuOutcome,
    /// Why the plan stopped before it was all applied (a DR event came on).
    pub interrupted: Option<String>,
}

impl Applied {
    /// The miners now hashing at their plan's target, as their own telemetry confirmed: given
    /// the target while hashing and drawing it; given it while asleep, then woken and
    /// hashing (the ramp to the target is the miner's own, over minutes); or left alone.
    pub fn hashing_at_target(&self) -> Vec<SocketAddr> {
        let woken: Vec<SocketAddr> = self.woke.as_ref().map_or_else(Vec::new, |r| {
            r.miners
                .iter()
                .filter(|m| m.confirmed_at.is_some() && m.error.is_none())
                .map(|m| m.addr)
                .collect()
        });
        let mut out = self.kept_miners.clone();
        for r in &self.powered {
            for m in r.miners.iter().filter(|m| m.error.is_none()) {
                let drawing = m.confirmed_at.is_some() && self.already_awake.contains(&m.addr);
                let woken_to_it =
                    m.asleep && m.acknowledged_at.is_some() && woken.contains(&m.addr);
                if drawing || woken_to_it {
                    out.push(m.addr);
                }
            }
        }
        out
    }
}

/// The report of applying `plan`.
pub(crate) fn report(
    plan: &PlanDirective,
    applied: &Applied,
    meter_kw: Option<f64>,
    at_ms: i64,
) -> PlanReport {
    let mut problems = Vec::new();
    let mut note = |lines: Vec<String>| {
        let more = lines.len().saturating_sub(MAX_PROBLEMS);
        problems.extend(lines.into_iter().take(MAX_PROBLEMS));
        if more > 0 {
            problems.push(format!("… and {more} more like it"));
        }
    };
    let asleep = applied.already_asleep
        + applied.slept.as_ref().map_or(0, |r| {
            note(
                r.failed()
                    .filter_map(|m| Some(m.error.as_ref()?.to_string()))
                    .collect(),
            );
            r.miners
                .iter()
                .filter(|m| m.confirmed_at.is_some() && m.error.is_none())
                .count()
        });
    if let Some(r) = &applied.woke {
        note(
            r.failed()
                .filter_map(|m| Some(m.error.as_ref()?.to_string()))
                .collect(),
        );
    }
    for r in &applied.powered {
        note(
            r.failed()
                .filter_map(|m| Some(m.error.as_ref()?.to_string()))
                .collect(),
        );
        let clamped: Vec<String> = r
            .miners
            .iter()
            .filter(|m| m.clamped)
            .map(|m| {
                format!(
                    "miner {}: no profile at or below the target; its lowest ({} W) draws more",
                    m.addr,
                    m.profile_w
                        .map_or_else(|| "?".into(), |w| format!("{w:.0}"))
                )
            })
            .collect();
        note(clamped);
    }
    let hashing = applied.hashing_at_target().len();
    note(applied.gpu.problems.clone());
    if let Some(why) = &applied.interrupted {
        problems.insert(0, why.clone());
    }
    if let Some(why) = &applied.refused {
        problems.insert(0, why.clone());
    }
    let total: usize = plan.asic_groups.iter().map(|g| g.units as usize).sum();
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    let unconfirmed = total.saturating_sub(asleep + hashing);
    let outcome = if applied.refused.is_some() {
        PlanOutcome::Failed
    } else if unconfirmed == 0 && problems.is_empty() {
        PlanOutcome::Applied
    } else {
        PlanOutcome::Partial
    };
    PlanReport {
        outcome,
        at_ms,
        miners_hashing: count(hashing),
        miners_asleep: count(asleep),
        miners_unconfirmed: count(unconfirmed),
        meter_kw,
        problems,
        gpu_caps: applied.gpu.caps.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wattmesh_proto::plan::{AsicTarget, GpuTarget};

    fn miners(n: u16) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], 4000 + i)))
            .collect()
    }

    fn group(name: &str, units: u32, units_hashing: u32, watts_per_unit: f64) -> AsicTarget {
        AsicTarget {
            name: name.into(),
            units,
            units_hashing,
            watts_per_unit,
        }
    }

    fn plan(asic_groups: Vec<AsicTarget>) -> PlanDirective {
        PlanDirective {
            plan_id: "plan-1".into(),
            starts_at_ms: 0,
            ends_at_ms: 900_000,
            asic_groups,
            gpu_groups: vec![],
            expected_meter_kw: 10.0,
        }
    }

    #[test]
    fn groups_take_the_miners_in_order_and_their_first_units_hash() {
        let m = miners(5);
        let a = assign(
            &m,
            &plan(vec![group("a", 3, 2, 3000.0), group("b", 2, 1, 2500.0)]),
        )
        .unwrap();
        assert_eq!(
            a.hash,
            vec![(3000.0, vec![m[0], m[1]]), (2500.0, vec![m[3]])]
        );
        assert_eq!(a.sleep, vec![m[2], m[4]]);
        assert_eq!(a.hashing(), vec![m[0], m[1], m[3]]);
    }

    #[test]
    fn plans_that_do_not_fit_the_miners_are_refused() {
        let m = miners(4);
        let cases = [
            (plan(vec![group("a", 3, 3, 3000.0)]), "has 3 miners"),
            (plan(vec![group("a", 5, 5, 3000.0)]), "has 5 miners"),
            (plan(vec![group("a", 4, 5, 3000.0)]), "5 of 4 units"),
            (plan(vec![group("a", 4, 2, f64::NAN)]), "power target"),
            (plan(vec![group("a", 4, 2, 0.0)]), "power target"),
            (plan(vec![group("a", 4, 2, -5.0)]), "power target"),
        ];
        for (p, want) in cases {
            let err = assign(&m, &p).unwrap_err();
            assert!(err.contains(want), "{err:?} should say {want:?}");
        }
        // None hashing: no target needed.
        let a = assign(&m, &plan(vec![group("a", 4, 0, 0.0)])).unwrap();
        assert!(a.hash.is_empty());
        assert_eq!(a.sleep, m);
    }

    #[test]
    fn a_refused_plan_is_reported_failed_with_its_reason_first() {
        let mut p = plan(vec![group("a", 4, 4, 3000.0)]);
        p.gpu_groups = vec![GpuTarget {
            name: "h100".into(),
            nodes: 2,
            nodes_on: 1.0,
            kw: 1.5,
            node_max_kw: 1.5,
        }];
        let applied = Applied {
            refused: Some("does not fit".into()),
            gpu: GpuOutcome {
                caps: vec![],
                problems: vec!["GPU power caps not applied: no NVML on this host".into()],
            },
            ..Applied::default()
        };
        let r = report(&p, &applied, Some(12.5), 77);
        assert_eq!(r.outcome, PlanOutcome::Failed);
        assert_eq!(r.problems[0], "does not fit");
        assert!(r.problems[1].contains("GPU power caps not applied"));
        assert_eq!(
            (r.miners_hashing, r.miners_asleep, r.miners_unconfirmed),
            (0, 0, 4)
        );
        assert_eq!((r.meter_kw, r.at_ms), (Some(12.5), 77));
    }

    #[test]
    fn nothing_done_is_never_reported_applied() {
        let r = report(
            &plan(vec![group("a", 4, 2, 3000.0)]),
            &Applied::default(),
            None,
            1,
        );
        assert_eq!(r.outcome, PlanOutcome::Partial);
        assert_eq!(r.miners_unconfirmed, 4);
    }
}
